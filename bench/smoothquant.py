"""Does SmoothQuant make static int8 pass the ONNX gate? Plain static int8 against SmoothQuant + static
int8, gated as ``adrisk export-onnx`` gates its variants.

Usage::

    HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python bench/smoothquant.py --model COPY_OF_A_MODEL \
        --data ../shared/datasets/risky-ads-v1/validation.jsonl [--alpha 0.5 0.75] [--kinds all|ln]

The model directory must already have ``onnx/model.fp32.onnx`` (``adrisk export-onnx``); the
bench writes its trial graphs beside it (``onnx/bench-*.onnx``), so point it at a copy. One process:
the torch fp32 reference and ``training.variant_gate.VariantGate`` on the labelled texts (the
export's gate: AP interval, decisions at threshold, batch drift), then for plain static int8
(``quantize_int8_static``) and for each alpha, ``smooth_activations`` on the fp32 graph (its max abs
logit change against fp32 on every 50th text is printed: it should be round-off), the same static
quantiser on the smoothed graph, and the gate. Calibration: the export's ``CALIBRATION_TEXTS`` texts
spread over the gate texts. ``--kinds ln`` smooths only the LayerNorm-fed inputs (q/k/v and FFN in,
the paper's placement); ``all`` (default) also the attention output's and FFN output's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KINDS = {
    "all": ("attention.qkv", "attention.out", "ffn.in", "ffn.out"),
    "ln": ("attention.qkv", "ffn.in"),
}
SHOWN = ("passed", "texts_per_s", "ap_delta", "ap_delta_interval", "decision_passed", "decision_max_abs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a copy of an adrisk model with onnx/model.fp32.onnx")
    ap.add_argument("--data", required=True, help="labelled JSONL (text, labels): the gate texts")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--kinds", choices=sorted(KINDS), default="all")
    ap.add_argument("--json", help="also write the gate's results here")
    args = ap.parse_args()

    from model.predictor import Predictor
    from model.runtimes import FP32_FILE, ONNX_DIR, default_num_threads
    from training.onnx_export import _Variants, quantize_int8_static, smooth_activations
    from training.variant_gate import VariantGate, read_labelled_jsonl

    directory = Path(args.model)
    onnx_dir, threads = directory / ONNX_DIR, default_num_threads()
    ref = Predictor.load(directory, runtime="torch", num_threads=threads)
    texts, targets = read_labelled_jsonl(args.data, ref.meta.labels)
    gate = VariantGate(ref, texts, targets)
    print(f"torch fp32: {gate.ref_texts_per_s:.1f} texts/s on {len(texts)} gate texts", flush=True)
    v = _Variants(directory, gate, ref, threads)
    calibration = v.calibration_ids()
    sample = texts[::50]
    fp32_logits = v.predictor({"file": FP32_FILE, "precision": "trial"}, verify=False).logits(sample)

    results = {}
    for alpha in [0.0, *args.alpha]:
        name = "static" if alpha == 0 else f"smooth-{args.kinds}-{alpha:g}"
        src = onnx_dir / FP32_FILE
        if alpha:
            t0 = time.perf_counter()
            src = onnx_dir / f"bench-{name}.fp32.onnx"
            smooth_activations(onnx_dir / FP32_FILE, src, calibration, alpha=alpha, kinds=KINDS[args.kinds])
            logits = v.predictor({"file": src.name, "precision": "trial"}, verify=False).logits(sample)
            print(
                f"{name}: smoothed in {time.perf_counter() - t0:.1f} s, fp32 max abs logit change "
                f"{np.abs(logits - fp32_logits).max():.2g}",
                flush=True,
            )
        dst = onnx_dir / f"bench-{name}.int8.onnx"
        quantize_int8_static(src, dst, calibration)
        info = gate.evaluate(name, v.predictor({"file": dst.name, "precision": "int8-static"}, verify=False))
        results[name] = info
        print(name, json.dumps({k: info[k] for k in SHOWN}), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"torch_texts_per_s": gate.ref_texts_per_s, **results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
