"""Write style-stripped views of a training split as a JSONL file usable as ``data.extra_train_files``
(same fields, labels copied), so that view augmentation can be tried with an unchanged ``adrisk
train``. ``--cap source=N`` repeats the config's ``data.max_rows_per_source`` sample (same seed, same
rows) so that only rows the run trains on get views.

    .venv/bin/python bench/write_view_rows.py --data ../shared/datasets/risky-ads-v1 --views short \
        --cap craigslist_headings=3000 --out /work/runs/aug/views.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from training.views import augment_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--views", nargs="+", default=["short"])
    ap.add_argument("--cap", nargs="*", default=[], help="source=N, as data.max_rows_per_source")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    df = pd.read_json(Path(args.data) / "train.jsonl", lines=True, dtype=False)
    caps = {k: int(v) for k, v in (c.split("=", 1) for c in args.cap)}
    parts = [
        (p.sample(n=caps[s], random_state=args.seed).sort_index() if s in caps and len(p) > caps[s] else p)
        for s, p in df.groupby("source", sort=False)
    ]
    df = pd.concat(parts).sort_index().reset_index(drop=True)
    texts, rows = augment_rows(df["text"].tolist(), args.views, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for t, i in zip(texts, rows.tolist(), strict=True):
            r = df.iloc[i]
            f.write(
                json.dumps(
                    {
                        "id": f"{r['id']}-view",
                        "text": t,
                        "labels": list(r["labels"]),
                        "source": r["source"],
                        "group": r["group"],
                    }
                )
                + "\n"
            )
    print(f"{len(texts)} view rows from {len(df)} training rows -> {out}")


if __name__ == "__main__":
    main()
