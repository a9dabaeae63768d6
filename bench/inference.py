"""Inference benchmark: adrisk runtimes against the Hugging Face pipeline users would run instead.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/inference.py --model DIR \
        --data ../shared/datasets/risky-ads-v1/test.jsonl [--limit N] [--threads T] [--json OUT]

One run, one fresh process per variant (``subprocess``, so no variant inherits another's thread
pools, allocator state or warm caches). Variants:

- ``hf-pipeline``: ``transformers.pipeline("text-classification")`` over the same weights, batch
  size 32, inputs in file order, ``truncation=True`` at the model's ``max_length``, ``top_k=None``,
  ``function_to_apply="sigmoid"`` (raw text: the pipeline does not apply adrisk's normalisation),
  at torch's DEFAULT intra-op threads (what a user who just calls ``pipeline`` gets; the ratio
  column is against this one).
- ``hf-pipeline-b1``: the same at the pipeline's own default batch size (1: no padding). The
  "x HF pipeline (default threads)" column is against the faster of these two.
- ``hf-pipeline-matched``: the same at adrisk's thread count (``--threads``), for a like-for-like
  per-thread comparison.
- ``score-default`` / ``score-w1`` / ``score-w2``: the ``adrisk score`` command itself on a JSONL of
  the texts, at its default settings / ``--workers 1`` / ``--workers 2`` (texts/s over the job's own
  clock, which excludes the model load but includes reading and writing files; the end-to-end
  wall time, process start included, is listed below the table).
- ``torch``: the adrisk predictor in torch fp32 (normalised text, length-sorted dynamic padding).
- ``onnx-fp32`` / ``onnx-int8`` / ``onnx-int8-static`` / ``onnx-int8-token`` / ``onnx-int8-mixed``: the
  adrisk predictor on the artifact's ONNX Runtime variants (see ``model.runtimes``; run ``adrisk
  export-onnx`` first): dynamic int8 per row; static int8, per-token int8 and per-token int8 with
  sensitive groups fp32, batched.
  ``onnx-int8-batched`` runs the dynamic int8 graph batched (``per_row`` off), to show what per-row
  scoring buys: its batch drift. ``student-onnx-fp32`` /
  ``student-onnx-int8`` on its distilled student's (``distill.enabled`` in the training config; FLOPs
  counted with the student's layers). Missing variants are skipped with a note.

Each worker loads its model, warms up on 8 texts, then times one pass over all texts (wall clock,
tokenisation included; load time excluded and reported separately). Accuracy: per-label average
precision on the same texts, minus that of the adrisk torch fp32 predictor. Batch drift (adrisk
predictor variants): the largest |probability change| of a text scored alone vs in that pass, over
48 texts spread over the set (``training.variant_gate.batch_invariance``, the gate's rule: <= 1e-3).

Compute estimate (stated assumptions, printed with the table):
- FLOPs of one sequence of padded width T in a BERT encoder with L layers, hidden h, FFN width i:
  ``T * 2 * L * (4h^2 + 2hi)`` for the weight matmuls (2 FLOPs per multiply-add per non-embedding
  weight) plus ``L * 4 * T^2 * h`` for attention scores and the weighted sum (QK^T and AV). The
  pooler and classifier (a few h^2 per sequence) and element-wise ops are ignored. Summed over the
  padded batches each variant actually ran (tokens actually processed, padding included).
- Peak fp32 FLOP/s = cores x clock x FLOPs/cycle/core, with FLOPs/cycle from /proc/cpuinfo flags:
  AVX-512F -> 64 (two 512-bit FMA pipes x 16 lanes x 2: Intel server cores, AMD Zen 5; Zen 4 runs
  AVX-512 on 256-bit pipes and would be 32), AVX2+FMA -> 32, else 16. Clock: the ``cpu MHz`` of
  /proc/cpuinfo (base clock under KVM; boost would raise the real peak). The int8 variant's
  multiply-adds are counted as the same FLOPs and compared with the fp32 peak (VNNI int8 peak is
  ~4x higher), so its percentage is "fp32-equivalent".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = (
    "hf-pipeline",
    "hf-pipeline-b1",
    "hf-pipeline-matched",
    "torch",
    "onnx-fp32",
    "onnx-int8",
    "onnx-int8-batched",
    "onnx-int8-static",
    "onnx-int8-token",
    "onnx-int8-mixed",
    "student-onnx-fp32",
    "student-onnx-int8",
    "score-default",
    "score-w1",
    "score-w2",
)
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in ("score-w1", "score-w2"))
HF_BATCH_SIZE = 32
WARMUP_TEXTS = 8


# --------------------------------------------------------------------------------------------------
# machine and model arithmetic


def cpu_info() -> dict:
    """Model name, usable cores, clock (MHz) and fp32 FLOPs/cycle/core from /proc/cpuinfo (Linux)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model, mhz, flags = platform.processor() or "unknown", 0.0, set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and model in ("unknown", "", "x86_64"):
            model = val
        elif key == "cpu MHz" and not mhz:
            mhz = float(val)
        elif key == "flags" and not flags:
            flags = set(val.split())
    if "avx512f" in flags:
        isa, per_cycle = "AVX-512", 64
    elif "avx2" in flags and "fma" in flags:
        isa, per_cycle = "AVX2+FMA", 32
    else:
        isa, per_cycle = "SSE", 16
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {
        "model": model,
        "cores": cores,
        "mhz": mhz,
        "isa": isa,
        "flops_per_cycle": per_cycle,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "peak_flops": cores * mhz * 1e6 * per_cycle,
    }


def encoder_config(model: str, runtime: str) -> dict:
    """The ``config.json`` of the network a runtime runs: the artifact's, or its distilled student's."""
    from model.runtimes import STUDENT_DIR

    base = Path(model) / STUDENT_DIR if runtime.startswith("student") else Path(model)
    return json.loads((base / "config.json").read_text())


def encoder_flops(config: dict, batch_widths: list[tuple[int, int]]) -> float:
    """Forward FLOPs of padded batches [(rows, width T)] for a BERT-like encoder config (see module doc)."""
    h, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    inter = int(config.get("intermediate_size", 4 * h))
    per_token = 2 * layers * (4 * h * h + 2 * h * inter)
    return float(sum(b * t * (per_token + layers * 4 * t * h) for b, t in batch_widths))


# --------------------------------------------------------------------------------------------------
# worker: one variant in its own process


def _worker(variant: str, model: str, texts_file: str, out_file: str, threads: int | None) -> None:
    import logging

    logging.disable(logging.WARNING)
    import torch

    from model.artifact import load_meta

    texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
    meta = load_meta(model)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    if variant.startswith("score-"):
        _score_worker(variant, model, texts, meta, out_file)
        return
    drift = None
    if variant.startswith("hf-pipeline"):
        from transformers import AutoTokenizer, pipeline

        tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
        clf = pipeline(
            "text-classification",
            model=model,
            tokenizer=tok,
            device=-1,
            top_k=None,
            function_to_apply="sigmoid",
        )
        hf_batch = 1 if variant == "hf-pipeline-b1" else HF_BATCH_SIZE
        kw = {"batch_size": hf_batch, "truncation": True, "max_length": meta.max_length}
        load_s = time.perf_counter() - t0
        clf(texts[:WARMUP_TEXTS], **kw)
        t1 = time.perf_counter()
        out = clf(texts, **kw)
        wall = time.perf_counter() - t1
        index = {n: j for j, n in enumerate(meta.labels)}
        probs = np.zeros((len(texts), len(meta.labels)))
        for i, row in enumerate(out):
            for d in row:
                probs[i, index[d["label"]]] = d["score"]
        lengths = [len(x) for x in tok(texts, truncation=True, max_length=meta.max_length)["input_ids"]]
        widths = [
            (len(lengths[s : s + hf_batch]), max(lengths[s : s + hf_batch]))
            for s in range(0, len(lengths), hf_batch)
        ]
        settings = f"batch {hf_batch}, file order, pad to longest in batch"
    else:
        from training.variant_gate import batch_invariance

        p = _load_predictor(model, variant, threads)
        load_s = time.perf_counter() - t0
        p.predict_proba(texts[:WARMUP_TEXTS])
        t1 = time.perf_counter()
        probs = p.predict_proba(texts)
        wall = time.perf_counter() - t1
        drift = batch_invariance(p, texts, probs)
        lengths = p.encoder.encode(texts).lengths()
        widths = _predictor_widths(p, lengths)
        settings = f"batch {p.batch_size}, max_tokens {p.max_tokens}, length-sorted"
        if getattr(p.runtime, "per_row", False):
            settings += ", run per row"
    cfg = encoder_config(model, variant)
    Path(out_file).write_text(
        json.dumps(
            {
                "variant": variant,
                "n": len(texts),
                "wall_s": wall,
                "load_s": load_s,
                "texts_per_s": len(texts) / wall,
                "tokens": int(np.sum(lengths)),
                "padded_tokens": int(sum(b * t for b, t in widths)),
                "flops": encoder_flops(cfg, widths),
                "probs": np.asarray(probs, dtype=float).tolist(),
                "settings": settings,
                "threads": threads,
                "batch_drift": drift,
                "loadavg_end": os.getloadavg()[0],
            }
        )
    )


def _load_predictor(model: str, variant: str, threads: int):
    """The adrisk predictor of a runtime variant; ``onnx-int8-batched``: the dynamic int8 graph run
    batched instead of per row."""
    from model.predictor import Predictor
    from model.runtimes import INT8_VARIANT, OnnxRuntime

    if variant != "onnx-int8-batched":
        return Predictor.load(model, runtime=variant, num_threads=threads)
    p = Predictor.load(model, runtime="torch", num_threads=threads)
    info = p.meta.runtimes.variants[INT8_VARIANT].model_copy(update={"per_row": False, "name": variant})
    return Predictor(p.encoder, OnnxRuntime(model, info, num_threads=threads), p.meta, blend=p.blend)


def _predictor_widths(p, lengths: np.ndarray) -> list[tuple[int, int]]:
    """[(rows, padded width)] of the forward passes a predictor runs on texts of these token lengths:
    its length-sorted batches, or one row each at its own length for a per-row (int8) runtime."""
    from model.encoding import length_sorted_batches

    if getattr(p.runtime, "per_row", False):
        return [(1, int(n)) for n in lengths]
    return [
        (len(b), int(lengths[b].max())) for b in length_sorted_batches(lengths, p.batch_size, p.max_tokens)
    ]


def _score_worker(variant: str, model: str, texts: list[str], meta, out_file: str) -> None:
    """Run the ``adrisk score`` command on ``texts`` and read its scores and timing back."""
    import re

    import pandas as pd

    from model.predictor import Predictor

    adrisk = str(Path(sys.executable).with_name("adrisk"))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        pd.DataFrame({"id": range(len(texts)), "text": texts}).to_json(src, orient="records", lines=True)
        cmd = [adrisk, "score", "--model", model, "--input", str(src), "--output", str(dst), "--no-progress"]
        if variant != "score-default":
            cmd += ["--workers", variant.removeprefix("score-w")]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # its own defaults
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        e2e = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"adrisk score failed: {proc.stderr.strip().splitlines()[-1:]}")
        m = re.search(r"scored (\d+) rows .* in ([\d.]+)s", proc.stderr)
        wall = float(m.group(2))
        out = pd.read_json(dst, lines=True)
    probs = out[[f"score_{n}" for n in meta.labels]].to_numpy(dtype=float)
    p = Predictor.load(model)  # padded-token count for the FLOP estimate (same batching as the job)
    lengths = p.encoder.encode(texts).lengths()
    widths = _predictor_widths(p, lengths)
    cfg = encoder_config(model, p.runtime.name)
    Path(out_file).write_text(
        json.dumps(
            {
                "variant": variant,
                "n": len(texts),
                "wall_s": wall,
                "load_s": e2e - wall,
                "texts_per_s": len(texts) / wall,
                "tokens": int(np.sum(lengths)),
                "padded_tokens": int(sum(b * t for b, t in widths)),
                "flops": encoder_flops(cfg, widths),
                "probs": probs.tolist(),
                "settings": f"`{' '.join(['adrisk', *cmd[1:2], '...', *cmd[8:]])}` end-to-end {e2e:.1f} s "
                f"(process start + model load + job)",
                "threads": None,
                "loadavg_end": os.getloadavg()[0],
            }
        )
    )


# --------------------------------------------------------------------------------------------------
# driver


def _run_variant(
    variant: str, model: str, texts_file: str, threads: int | None, timeout: float
) -> dict | None:
    """One variant in a fresh process; ``threads`` None: the library's own default (no OMP_NUM_THREADS)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_worker",
        variant,
        "--model",
        model,
        "--_texts",
        texts_file,
        "--_out",
        out,
        "--_threads",
        str(threads or 0),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
            print(f"note: {variant} failed: {tail[0]}", file=sys.stderr)
            return None
        return json.loads(Path(out).read_text())
    except subprocess.TimeoutExpired:
        print(f"note: {variant} ran past {timeout:.0f} s and was stopped", file=sys.stderr)
        return None
    finally:
        Path(out).unlink(missing_ok=True)


def _faster_pipeline(results: dict[str, dict]) -> str | None:
    """The faster of ``hf-pipeline`` (batch 32) and ``hf-pipeline-b1`` (batch 1) that ran."""
    ran = [v for v in ("hf-pipeline", "hf-pipeline-b1") if v in results]
    return max(ran, key=lambda v: results[v]["texts_per_s"]) if ran else None


def _table(results: dict[str, dict], targets: np.ndarray, meta, cpu: dict) -> list[str]:
    """The markdown table: one row per variant (adds ``ap``, ``ap_delta``, ``gflop_per_s`` to each result)."""
    from training.variant_gate import ap_deltas, per_label_ap

    labels = list(meta.labels)
    ref = np.asarray(results["torch"]["probs"])
    hf_name = _faster_pipeline(results)
    hf = results[hf_name]["texts_per_s"] if hf_name else None  # the faster pipeline at its default threads
    hfm = results.get("hf-pipeline-matched", {}).get("texts_per_s")
    recorded = meta.runtimes.variants
    default = meta.runtimes.default
    short = {n: n.split("_")[0][:8] for n in labels}
    header = (
        ["variant", "threads", "texts/s", "x HF pipeline (default threads)", "x HF pipeline (matched)"]
        + [f"dAP {short[n]}" for n in labels]
        + ["batch drift", "export gate", "tokens (padded)", "GFLOP/s", "% fp32 peak"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for v, r in results.items():
        probs = np.asarray(r["probs"])
        r["ap"], r["ap_delta"] = per_label_ap(probs, targets, labels), ap_deltas(probs, ref, targets, labels)
        gflops = r["flops"] / r["wall_s"] / 1e9
        r["gflop_per_s"] = gflops
        gate = recorded[v].passed if v in recorded else None
        cells = [
            f"{v} (default)" if v == default else v,
            "own default" if r["threads"] is None else str(r["threads"]),
            f"{r['texts_per_s']:.1f}",
            f"{r['texts_per_s'] / hf:.2f}" if hf else "-",
            f"{r['texts_per_s'] / hfm:.2f}" if hfm else "-",
        ]
        cells += ["-" if r["ap_delta"][n] is None else f"{r['ap_delta'][n]:+.4f}" for n in labels]
        cells += [
            "-" if r.get("batch_drift") is None else f"{r['batch_drift']:.1e}",
            "-" if gate is None else ("passed" if gate else "failed"),
            f"{r['tokens']:,} ({r['padded_tokens']:,})",
            f"{gflops:.1f}",
            f"{100 * r['flops'] / r['wall_s'] / cpu['peak_flops']:.1f}%" if cpu["peak_flops"] else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a local adrisk model directory")
    ap.add_argument("--data", help="labelled JSONL (text, labels), e.g. risky-ads-v1/test.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="score a seeded random sample of N rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=None, help="intra-op threads for every variant (default: cores)"
    )
    ap.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated subset of {VARIANTS}"
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds per variant")
    ap.add_argument("--json", help="also write the results (without scores) here")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_texts", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    ap.add_argument("--_threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model.runtimes import default_num_threads

    threads = args.threads or default_num_threads()
    if args._worker:
        _worker(args._worker, args.model, args._texts, args._out, args._threads or None)
        return 0
    if not args.data:
        ap.error("--data is required")

    from model.artifact import load_meta
    from training.variant_gate import read_labelled_jsonl

    meta = load_meta(args.model)
    labels = list(meta.labels)
    texts, targets = read_labelled_jsonl(args.data, labels)
    if args.limit and args.limit < len(texts):
        idx = np.sort(np.random.default_rng(args.seed).permutation(len(texts))[: args.limit])
        texts, targets = [texts[i] for i in idx], targets[idx]
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    recorded = set(meta.runtimes.variants)
    cpu = cpu_info()
    load_start = os.getloadavg()[0]

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = str(Path(tmp) / "texts.json")
        Path(texts_file).write_text(json.dumps(texts), encoding="utf-8")
        for v in wanted:
            if v.startswith(("onnx", "student")) and v.replace("-batched", "") not in recorded:
                print(
                    f"note: {v} is not in {args.model} (run `adrisk export-onnx`); skipped", file=sys.stderr
                )
                continue
            print(f"running {v} on {len(texts)} texts ...", file=sys.stderr, flush=True)
            # the pipeline and the score command at their own defaults; every other variant at `threads`
            own_default = v in ("hf-pipeline", "hf-pipeline-b1") or v.startswith("score-")
            r = _run_variant(v, args.model, texts_file, None if own_default else threads, args.timeout)
            if r:
                results[v] = r
    if "torch" not in results:
        print("the torch variant is the accuracy reference and did not run", file=sys.stderr)
        return 1

    lines = _table(results, targets, meta, cpu)

    print(
        f"\n{len(texts)} texts from {args.data} (seed {args.seed}), model {args.model} "
        f"(max_length {meta.max_length}), one process each; adrisk variants and hf-pipeline-matched at {threads} "
        f"intra-op threads, hf-pipeline and score-* at their own defaults"
    )
    print(
        f"CPU: {cpu['model']}, {cpu['cores']} cores @ {cpu['mhz']:.0f} MHz, {cpu['isa']}"
        f"{' + VNNI' if cpu['vnni'] else ''}; assumed fp32 peak {cpu['cores']} x {cpu['mhz'] / 1000:.2f} GHz x "
        f"{cpu['flops_per_cycle']} FLOPs/cycle = {cpu['peak_flops'] / 1e9:.0f} GFLOP/s"
    )
    print(
        f"load average at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f} (other processes share these cores)"
    )
    print(
        "dAP = per-label average precision minus adrisk torch fp32's on the same texts; batch drift = max "
        "|p alone - p in the pass| over 48 texts (gate: <= 1e-3); export gate = the variant's gate decision "
        "recorded in adrisk.json (validation texts); tokens = real tokens (padded tokens computed)\n"
    )
    print("\n".join(lines))
    for v, r in results.items():
        print(f"- {v}: {r['settings']}; model load {r['load_s']:.1f} s")
    hf = _faster_pipeline(results)
    if hf and "score-default" in results:
        ratio = results["score-default"]["texts_per_s"] / results[hf]["texts_per_s"]
        print(f"score-default / {hf} (the faster HF pipeline at its defaults): {ratio:.2f}x")
    if args.json:
        slim = {v: {k: x for k, x in r.items() if k != "probs"} for v, r in results.items()}
        Path(args.json).write_text(
            json.dumps({"cpu": cpu, "n": len(texts), "threads": threads, "results": slim}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
