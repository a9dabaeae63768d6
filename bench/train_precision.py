"""Does bf16 autocast in training change accuracy? fp32 and ``train.bf16`` fine-tunes, same rows and seed.

Usage::

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/train_precision.py [--rows 800] [--config configs/demo.yaml]

Each precision trains in a fresh process (``training.loop.fit``, the config's settings, ``data.limit``
rows per split, one epoch), then scores the test split in fp32 (``predict_logits``; the artifact's
runtimes are fp32 or int8 either way). Prints per-label test average precision of both, the bf16
minus fp32 difference, and the wall seconds of each fit. A small run: the AP differences are the
run-to-run effect of bf16 rounding on one seed, not a confidence interval.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def run_one(config: str, rows: int, bf16: bool) -> dict:
    """Fine-tune once; per-label test AP (fp32 inference) and fit seconds."""
    from model.encoding import TextEncoder
    from training.base_model import build_model, load_tokenizer, resolve_base_model
    from training.config import load_config
    from training.data import load_data
    from training.loop import FitData, fit, predict_logits
    from training.variant_gate import per_label_ap

    cfg = load_config(
        REPO / config, [f"data.limit={rows}", "train.epochs=1", f"train.bf16={str(bf16).lower()}"]
    )
    if not Path(cfg.data.path).is_absolute():
        cfg.data.path = str((REPO / cfg.data.path).resolve())
    schema = cfg.label_schema
    bundle = load_data(cfg.data, schema, cfg.seed)
    base = resolve_base_model(cfg.base_model)
    tok = load_tokenizer(base)
    enc = TextEncoder(tok, cfg.train.max_length)
    ids = {s.name: enc.encode(s.texts).input_ids for s in bundle.splits()}
    model = build_model(base, cfg.base_model, schema, len(tok))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        data = FitData(
            enc, ids["train"], bundle.train.targets, ids["validation"], bundle.validation.targets, schema
        )
        fit(model, data, cfg.train, cfg.seed, Path(d), "precision-bench")
        secs = time.perf_counter() - t0
    logits = predict_logits(model, enc, ids["test"], cfg.train.eval_batch_size)
    return {
        "ap": per_label_ap(logits, bundle.test.targets, list(schema.labels)),
        "fit_s": secs,
        "rows": [len(ids["train"]), len(ids["test"])],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--rows", type=int, default=800)
    ap.add_argument("--only", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.only:
        print("RESULT " + json.dumps(run_one(a.config, a.rows, a.only == "bf16")), flush=True)
        return
    res, load0 = {}, os.getloadavg()[0]
    for prec in ("fp32", "bf16"):
        proc = subprocess.run(
            [sys.executable, __file__, "--only", prec, "--config", a.config, "--rows", str(a.rows)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{prec} failed:\n{proc.stderr[-3000:]}")
        res[prec] = json.loads(line[7:])
    f, b = res["fp32"], res["bf16"]
    print(
        f"config {a.config}, data.limit {a.rows} (train {f['rows'][0]} rows, test {f['rows'][1]}), one epoch; "
        f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(f"{'label':<26}{'AP fp32':>9}{'AP bf16':>9}{'bf16-fp32':>11}")
    for n in f["ap"]:
        d = None if f["ap"][n] is None or b["ap"][n] is None else b["ap"][n] - f["ap"][n]
        print(f"{n:<26}{f['ap'][n]:>9.4f}{b['ap'][n]:>9.4f}{d:>+11.4f}")
    print(
        f"fit seconds: fp32 {f['fit_s']:.1f}, bf16 {b['fit_s']:.1f} (ratio fp32/bf16 {f['fit_s'] / b['fit_s']:.2f}x)"
    )


if __name__ == "__main__":
    main()
