"""Two trained model directories side by side: are they the same model? For checking that a change
to the code keeps the default path's results (same config, same seed, before and after).

    .venv/bin/python bench/compare_runs.py BEFORE/model AFTER/model

Prints, for the weights (every tensor of ``model.safetensors``), the TF-IDF blend's arrays (if any),
the temperatures, thresholds, headline metrics and ONNX runtime default recorded in ``adrisk.json``:
the largest absolute difference, and ``SAME`` when every one is zero.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(
        (float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a), default=0.0
    )


def _numbers(meta: dict, key: str) -> dict[str, np.ndarray]:
    value = meta.get(key) or {}
    if isinstance(value, list):
        return {str(i): np.asarray(v) for i, v in enumerate(value)}
    return {k: np.asarray(v) for k, v in value.items() if isinstance(v, int | float)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    from safetensors.numpy import load_file

    rows: list[tuple[str, float]] = [
        (
            "weights",
            _max_diff(
                load_file(args.before / "model.safetensors"), load_file(args.after / "model.safetensors")
            ),
        )
    ]
    if (args.before / "blend.npz").exists() or (args.after / "blend.npz").exists():
        try:
            with np.load(args.before / "blend.npz") as a, np.load(args.after / "blend.npz") as b:
                rows.append(("blend arrays", _max_diff(dict(a), dict(b))))
        except FileNotFoundError:
            rows.append(("blend arrays", float("inf")))
    ma, mb = (json.loads((d / "adrisk.json").read_text()) for d in (args.before, args.after))
    for key in ("temperatures", "thresholds", "metrics"):
        rows.append((key, _max_diff(_numbers(ma, key), _numbers(mb, key))))
    da, db = ((m.get("runtimes") or {}).get("default", "torch") for m in (ma, mb))
    rows.append((f"runtime default ({da} / {db})", 0.0 if da == db else float("inf")))
    width = max(len(name) for name, _ in rows)
    for name, diff in rows:
        print(f"{name:<{width}}  max |before - after| = {diff:.3g}")
    print("SAME" if all(d == 0 for _, d in rows) else "DIFFERENT")


if __name__ == "__main__":
    main()
