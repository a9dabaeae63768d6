"""Texts/s of ``adrisk score`` (one process) against ``adrisk score --engine spark`` on local[1] and
local[2], on the same rows, in one run; the JVM + session start (only the first session launches the
JVM) and the model load are reported apart, not in the rates.

    .venv/bin/python bench/spark_score.py [--model DIR_OR_URI] [--rows 600]

The model defaults to the demo model (the directory under /work/runs/demo0/outputs holding
adrisk.json) when it exists, else a tiny random model (a first look only). Each engine scores the
same JSONL slice of risky-ads-v1 test into its own output; the outputs are checked to agree (row ids,
errors, scores within 1e-6). Spark workers are warmed first (each loads the model once; that is the
"model load" column), so the rate is scoring, not loading.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

DATA = REPO.parent / "shared" / "datasets" / "risky-ads-v1" / "test.jsonl"
DEMO = Path("/work/runs/demo0/outputs")


def default_model(tmp: Path) -> tuple[str, str]:
    """(model, description): the demo model when it exists, else a tiny random one."""
    found = sorted(DEMO.rglob("adrisk.json")) if DEMO.is_dir() else []
    if found:
        return str(found[0].parent), f"demo model {found[0].parent}"
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_artifact

    return str(build_tiny_artifact(tmp / "tiny")), "tiny random model (no demo model found)"


def write_slice(src: Path, dst: Path, rows: int) -> int:
    n = 0
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            r = json.loads(line)
            out.write(json.dumps({"id": r.get("id", n), "text": r["text"]}) + "\n")
            n += 1
            if n == rows:
                break
    return n


def spark_run(model: str, src: Path, dst: Path, master: str, rows: int) -> dict:
    """One Spark engine run on a fresh session: JVM start, model ship + worker load, scoring rate."""
    from batch.spark import get_spark, prepare_scorer, run_spark_score

    t0 = time.perf_counter()
    spark = get_spark(master)
    jvm_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        scorer, _, _ = prepare_scorer(model, spark, progress=False)
        slots = scorer.task_slots()
        scorer.partitions = slots  # one warm-up task per slot, run at once: every worker loads the model
        scorer.score(["warm-up text"] * (8 * slots))
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_spark_score(model, src, dst, spark=spark, chunk_size=max(rows, 1), progress=False)
        score_s = time.perf_counter() - t0
    finally:
        spark.stop()
    return {"engine": f"spark {master}", "jvm_s": jvm_s, "load_s": load_s, "score_s": score_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory or URI (default: demo model, else tiny)")
    ap.add_argument("--data", default=str(DATA), help="JSONL with a text field (default: risky-ads-v1 test)")
    ap.add_argument("--rows", type=int, default=600, help="rows scored by each engine (default 600)")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd

    from batch.score import run_score
    from model.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp_dir:
        tmp = Path(tmp_dir)
        model, what = (args.model, args.model) if args.model else default_model(tmp)
        src = tmp / "in.jsonl"
        rows = write_slice(Path(args.data), src, args.rows)
        print(
            f"model: {what}\nrows: {rows} of {args.data}\nCPUs: {os.cpu_count()}, load average "
            f"{os.getloadavg()[0]:.1f} at start"
        )

        results = []
        t0 = time.perf_counter()
        predictor = Predictor.load(model)  # default threads: what `adrisk score` uses
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_score(model, src, tmp / "local.jsonl", predictor=predictor, progress=False, workers=1)
        results.append(
            {
                "engine": "adrisk score (1 process)",
                "jvm_s": float("nan"),
                "load_s": load_s,
                "score_s": time.perf_counter() - t0,
            }
        )
        for master in ("local[1]", "local[2]"):
            results.append(spark_run(model, src, tmp / f"spark-{master[6]}.jsonl", master, rows))

        ref = pd.read_json(tmp / "local.jsonl", lines=True, dtype=False)
        cols = [c for c in ref.columns if c.startswith("score_")]
        agree = []
        for name in ("spark-1.jsonl", "spark-2.jsonl"):
            out = pd.read_json(tmp / name, lines=True, dtype=False)
            same_rows = out["id"].tolist() == ref["id"].tolist()
            agree.append(
                f"{name}: same ids {same_rows}, max |score diff| "
                f"{np.nanmax(np.abs(out[cols].to_numpy(float) - ref[cols].to_numpy(float))):.2e}"
            )

        base = next(r for r in results if r["engine"] == "spark local[1]")["score_s"]
        print(
            f"\n{'engine':<26} {'texts/s':>8} {'vs local[1]':>11} {'JVM+session s':>13} {'model load s':>12}"
        )
        for r in results:
            rate = rows / r["score_s"]
            print(
                f"{r['engine']:<26} {rate:8.1f} {base / r['score_s']:10.2f}x {r['jvm_s']:13.1f} {r['load_s']:12.1f}"
            )
        print("\n" + "\n".join(agree))
        print(f"load average {os.getloadavg()[0]:.1f} at end (the machine is shared: rates are noisy)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
