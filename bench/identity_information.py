"""How much within-source ranking do the identity terms themselves carry in the labels?

Usage::

    .venv/bin/python bench/identity_information.py [--data-dir ../shared/datasets/risky-ads-v1]

``identity.mask`` deletes the listed identity terms from every text. Where a label's positives name
those terms more often than its negatives, the mask takes that evidence away, and no training
recipe gets it back: it is what "flag the offer, never the person" costs on that data. This prints,
in one run:

1. per within-source task (trafficking in escort ads, scam in job posts and in SMS): the label's
   prevalence among the rows that name a listed term and among those that do not, train and test
   splits, and the AP of "names a term" alone on the test rows;
   then per listed term named by at least 30 of a task's train rows, its rows and the label's
   prevalence among them (which words carry the evidence);
2. the project's TF-IDF baseline (``training.baseline.TfidfBaseline``, its default config, trained
   on the whole train split) without and with the mask: test AP per task, the change and its 90%
   paired-bootstrap interval (``bench.identity_audit.paired_interval``).

A linear bag of n-grams sees an identity word as one more feature, so (2) bounds what the words
carry for a model that reads them as words; a fine-tuned encoder's change with the mask, seed for
seed, is in docs/identity.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.identity_audit import paired_interval  # noqa: E402
from model.schema import LabelSchema  # noqa: E402
from training.baseline import TfidfBaseline  # noqa: E402
from training.config import BaselineConfig, IdentityConfig  # noqa: E402
from training.counterfactual import identity_mask  # noqa: E402
from training.identity_terms import mentions, mitigation_terms  # noqa: E402

MIN_TERM_ROWS = 30  # the per-term table's floor: fewer train rows name a term, it is not printed

LABELS = ("adult_services", "trafficking_indicators", "scam")


def within_source_tasks(frame: pd.DataFrame, y: np.ndarray) -> list[tuple[str, str]]:
    """(label, source) pairs where the source's rows hold both classes of the label."""
    tasks = []
    for j, lab in enumerate(LABELS):
        for src in sorted(frame["source"].unique()):
            rows = (frame["source"] == src).to_numpy()
            if 0 < y[rows, j].sum() < rows.sum():
                tasks.append((lab, src))
    return tasks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/datasets/risky-ads-v1"))
    args = ap.parse_args(argv)
    split = {
        s: pd.read_json(Path(args.data_dir) / f"{s}.jsonl", lines=True, dtype=False)
        for s in ("train", "test")
    }
    y = {s: np.array([[int(lab in ls) for lab in LABELS] for ls in f["labels"]]) for s, f in split.items()}
    mask = identity_mask(IdentityConfig(mask=True))
    assert mask is not None
    names = {s: np.array([bool(mask.pattern.search(t)) for t in f["text"]]) for s, f in split.items()}
    tasks = within_source_tasks(split["test"], y["test"])

    print(f"listed identity terms: {len(mask.forms)} surface forms (terms {mask.terms_version})\n")
    print(
        "| label / source | split | rows | naming a term | prevalence: naming / not | AP of 'names a term' |"
    )
    print("|---|---|---:|---:|---|---:|")
    for lab, src in tasks:
        j = LABELS.index(lab)
        for s in ("train", "test"):
            rows = (split[s]["source"] == src).to_numpy()
            yy, nn = y[s][rows, j], names[s][rows]
            ap_names = average_precision_score(yy, nn) if s == "test" else float("nan")
            print(
                f"| {lab} / {src} | {s} | {rows.sum()} | {nn.mean():.3f} | "
                f"{yy[nn].mean() if nn.any() else float('nan'):.3f} / {yy[~nn].mean():.3f} | "
                f"{'' if s == 'train' else f'{ap_names:.3f} (base rate {yy.mean():.3f})'} |"
            )

    print("\n| label / source (train) | term | rows naming it | prevalence among them | base rate |")
    print("|---|---|---:|---:|---:|")
    for lab, src in tasks:
        j = LABELS.index(lab)
        rows = (split["train"]["source"] == src).to_numpy()
        texts_src, yy = split["train"]["text"][rows].tolist(), y["train"][rows, j]
        named = [(t.text, np.array(mentions(texts_src, t))) for t in mitigation_terms()]
        for slot, hit in sorted(named, key=lambda x: -x[1].sum()):
            if hit.sum() >= MIN_TERM_ROWS:
                print(f"| {lab} / {src} | {slot} | {hit.sum()} | {yy[hit].mean():.3f} | {yy.mean():.3f} |")

    schema = LabelSchema(labels=LABELS)
    texts = {s: f["text"].tolist() for s, f in split.items()}
    probs = {}
    for arm, transform in (("without", lambda t: t), ("with the mask", mask.apply)):
        t0 = time.perf_counter()
        model = TfidfBaseline(schema, BaselineConfig(), seed=0).fit(transform(texts["train"]), y["train"])
        probs[arm] = model.predict_proba(transform(texts["test"]))
        print(f"\nTF-IDF baseline {arm}: trained and scored in {time.perf_counter() - t0:.1f} s", end="")
    print(
        "\n\n| test AP, TF-IDF baseline | without | with the mask | change | 90% paired-bootstrap interval |"
    )
    print("|---|---:|---:|---:|---|")
    for lab, src in tasks:
        j = LABELS.index(lab)
        rows = (split["test"]["source"] == src).to_numpy()
        yy, a, b = y["test"][rows, j], probs["without"][rows, j], probs["with the mask"][rows, j]
        ap_a, ap_b = average_precision_score(yy, a), average_precision_score(yy, b)
        lo, hi = paired_interval(yy, a, b)
        print(f"| {lab} / {src} | {ap_a:.4f} | {ap_b:.4f} | {ap_b - ap_a:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
