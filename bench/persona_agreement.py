"""Persona linking against risky-ads-v1's ``group`` column (ads sharing a phone or identical text).

Prints pairwise link precision/recall of ``persona_id`` beside "identical normalised text only"
(``model.normalize``), on the escort ads (source ``backpage_escort_ca_2018``) of one split.

    .venv/bin/python bench/persona_agreement.py [--split test] [--data ../shared/datasets/risky-ads-v1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.normalize import normalize_text  # noqa: E402
from signals.linking import LinkConfig, link_frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pair_counts(pred, true) -> tuple[float, float, int, int]:
    """Pairwise precision and recall of clustering ``pred`` against ``true`` (label per item).

    Pairs are counted from the contingency table (sum of C(n, 2)), so this is O(n), not O(n^2).
    Returns (precision, recall, predicted pairs, true pairs); an empty side gives 1.0."""
    df = pd.DataFrame({"p": pred, "t": true})
    c2 = lambda s: int((s * (s - 1) // 2).sum())  # noqa: E731
    both = c2(df.groupby(["p", "t"]).size())
    pp, tp = c2(df.groupby("p").size()), c2(df.groupby("t").size())
    return (both / pp if pp else 1.0), (both / tp if tp else 1.0), pp, tp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("ADRISK_DATA_DIR") or ROOT.parent / "shared" / "datasets" / "risky-ads-v1"
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--split", default="test")
    ap.add_argument("--source", default="backpage_escort_ca_2018")
    ap.add_argument("--hub-cap", type=int, default=LinkConfig.hub_cap)
    ap.add_argument("--max-persona", type=int, default=LinkConfig.max_persona)
    args = ap.parse_args(argv)
    df = pd.read_json(Path(args.data) / f"{args.split}.jsonl", lines=True, dtype=False)
    df = df[df["source"] == args.source].reset_index(drop=True)
    t0 = time.perf_counter()
    res = link_frame(df, LinkConfig(hub_cap=args.hub_cap, max_persona=args.max_persona))
    secs = time.perf_counter() - t0
    closure = link_frame(df, LinkConfig(hub_cap=args.hub_cap, max_persona=len(df) + 2))
    ident = pd.Series([normalize_text(t) for t in df["text"]]).factorize()[0]
    print(f"{args.split}: {len(df)} ads of {args.source}; true linked pairs from `group`")
    print(f"{'method':<34} {'precision':>9} {'recall':>7} {'pred pairs':>10} {'true pairs':>10}")
    for name, pred in (
        (f"persona_id (max persona {args.max_persona})", res.persona_id),
        ("connected components (no bound)", closure.persona_id),
        ("identical normalised text only", ident),
    ):
        p, r, pp, tp = pair_counts(pred, df["group"].to_numpy())
        print(f"{name:<34} {p:>9.4f} {r:>7.4f} {pp:>10} {tp:>10}")
    print(
        f"linking took {secs:.2f}s; hub contacts cut: {res.report['hub_contacts_cut']}; persona components "
        f"split: {res.report['personas_split']}; largest persona {int(np.bincount(res.persona_id).max())} "
        f"ads (no bound: {int(np.bincount(closure.persona_id).max())})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
