"""What monitoring one window of 10,000 ads costs: ``adrisk monitor`` end to end (a fresh process, as a
scheduler runs it) with the time of each part from its verdict, beside ``adrisk score`` of the same
file (what scoring the window alone costs at its defaults).

The window: 10,000 rows drawn (seeded) from the training split, written to a temporary JSONL file;
the reference is found through the model's run (its validation data).

    .venv/bin/python bench/monitor_cost.py --model models:/risky-ads@champion
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

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _adrisk(args: list[str]) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "adrisk", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 10, 11):
        sys.exit(f"adrisk {args[0]} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return proc.returncode, seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models:/risky-ads@champion")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "risky-ads-v1"))
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--reference", help="reference file (default: found through the model's run)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        window = Path(tmp) / "window.jsonl"
        train = pd.read_json(Path(args.data) / "train.jsonl", lines=True)
        train.sample(args.rows, random_state=args.seed)[["id", "text", "source"]].to_json(
            window, orient="records", lines=True, force_ascii=False
        )
        verdict = Path(tmp) / "verdict.json"
        ref = ["--reference", args.reference] if args.reference else []
        rc, monitor_s = _adrisk(
            [
                "monitor",
                "--model",
                args.model,
                "--current",
                str(window),
                "--verdict",
                str(verdict),
                "--mlflow",
                "off",
                *ref,
            ]
        )
        _, score_s = _adrisk(
            [
                "score",
                "--model",
                args.model,
                "--input",
                str(window),
                "--output",
                str(Path(tmp) / "scored.parquet"),
                "--no-progress",
            ]
        )
        v = json.loads(verdict.read_text())
    print(
        f"one window of {args.rows} ads vs a reference of {v['reference']['rows']} ads, {cpus} CPUs, model {args.model}"
    )
    print("\n| part | seconds |\n|---|---:|")
    for part, s in v["timings"].items():
        print(f"| {part} | {s:.1f} |")
    rest = monitor_s - sum(v["timings"].values())
    print(f"| process start, imports, reading, writing | {rest:.1f} |")
    print("\n| command | wall seconds |\n|---|---:|")
    print(f"| adrisk monitor (verdict {v['status']}, exit {rc}) | {monitor_s:.1f} |")
    print(f"| adrisk score of the same file (scoring alone) | {score_s:.1f} |")
    print(
        f"\nmonitor / score: {monitor_s / score_s:.2f}x; under 2 minutes: {'yes' if monitor_s < 120 else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
