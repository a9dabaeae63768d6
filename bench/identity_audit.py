"""Usage: .venv/bin/python bench/identity_audit.py WITHOUT_MODEL WITH_MODEL [--data TEST_FILE] [--runtime R]
(models: artifact directories or MLflow URIs; TEST_FILE default ../shared/datasets/risky-ads-v1/test.jsonl;
runtime default torch, the trained weights themselves, so that an int8 variant's rounding is not
read as the mitigation's effect; ``auto`` is what each model serves).

The identity-term audit (training/identity_audit.py) of two models side by side: WITHOUT_MODEL is
what a user gets at the defaults (``configs/demo.yaml`` as shipped, no identity mitigation), WITH_MODEL
the same config trained with a mitigation (``--set identity.cda=true`` or ``--set identity.mask=true``). Prints, in one run:

1. per identity term: the counterfactual gap on the benign templates and the share of templates
   flagged (any label), minus the neutral fillers' share, for both models;
2. the summary the done-when of docs/identity.md reads: mean and largest gap, largest flag excess,
   the held-out terms' figures, and the audit's verdict;
   with the audit's wall time on this host (what it adds to every train and evaluate);
3. test AP per label overall and within every source where the label has both classes (the
   within-source tasks: trafficking in escort ads, scam in SMS and in job posts), the change, and
   its 90% paired-bootstrap interval over the test rows (how much of it one test split can resolve);
4. Borkan et al. (2019) subgroup AUCs on the test rows naming a term, where defined for either model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from model.predictor import Predictor
from model.uri import resolve_model
from training.identity_audit import MAX_FLAG_EXCESS, MAX_MEAN_GAP, MAX_TERM_GAP, run_identity_audit
from training.identity_terms import TERMS
from training.metrics import evaluate_scores

BOOTSTRAP_REPS = 1000


def load(uri: str, runtime: str) -> Predictor:
    return Predictor.load(resolve_model(uri).directory, runtime=runtime)


def audit(p: Predictor, texts: list[str], y: np.ndarray, sources: list[str]):
    probs = p.predict_proba(texts)
    flaggable = [n != p.meta.label_schema.benign_label for n in p.labels]
    start = time.perf_counter()
    res = run_identity_audit(p.labels, p.meta.threshold_vector(), p.predict_proba, texts, y, probs, flaggable)
    res.metrics["seconds"] = time.perf_counter() - start
    aps = evaluate_scores(probs, y, p.labels, p.meta.threshold_vector(), "test", sources)
    keep = (".ap", ".n", ".support")
    return res.metrics | {k: v for k, v in aps.items() if k.endswith(keep)}, res.passed, probs


def paired_interval(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, reps: int = BOOTSTRAP_REPS
) -> tuple[float, float]:
    """90% paired-bootstrap interval of AP(b) - AP(a) over the rows (seeded; resamples with one class skipped)."""
    rng = np.random.default_rng(0)
    d = []
    for _ in range(reps):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            d.append(average_precision_score(y[i], b[i]) - average_precision_score(y[i], a[i]))
    lo, hi = np.percentile(d, [5, 95])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("without")
    ap.add_argument("with_", metavar="with")
    ap.add_argument("--data", default="../shared/datasets/risky-ads-v1/test.jsonl")
    ap.add_argument("--runtime", default="torch")
    args = ap.parse_args()
    without, with_ = args.without, args.with_
    d = pd.read_json(args.data, lines=True, dtype=False)
    p0, p1 = load(without, args.runtime), load(with_, args.runtime)
    labels = list(p0.labels)
    y = np.array([[int(lab in ls) for lab in labels] for ls in d["labels"]], dtype=np.float32)
    texts, sources = d["text"].tolist(), d["source"].tolist()
    (a, ok0, pa), (b, ok1, pb) = audit(p0, texts, y, sources), audit(p1, texts, y, sources)

    print(f"without: {without}\nwith:    {with_}\nruntime: {args.runtime}; test rows: {len(d)}\n")
    print(
        f"{'term':<30} {'gap w/o':>8} {'gap with':>8}   {'flag% w/o':>9} {'with':>6}   {'+pts w/o':>8} {'with':>6}"
    )
    for t in TERMS:
        k = f"term.{t.key}"
        print(
            f"{t.text + (' (held out)' if t.held_out else ''):<30} {a[k + '.gap']:>8.3f} {b[k + '.gap']:>8.3f}   "
            f"{100 * a[k + '.flag_rate']:>9.1f} {100 * b[k + '.flag_rate']:>6.1f}   "
            f"{100 * a[k + '.flag_excess']:>+8.1f} {100 * b[k + '.flag_excess']:>+6.1f}"
        )
    print(
        f"{'(neutral fillers)':<30} {'':>8} {'':>8}   {100 * a['filler.flag_rate']:>9.1f} "
        f"{100 * b['filler.flag_rate']:>6.1f}\n"
    )
    print(f"{'summary':<34} {'without':>8} {'with':>8}  target")
    for key, name, bound, pts in (
        ("gap.mean", "mean gap per term", MAX_MEAN_GAP, False),
        ("gap.max", "largest gap", MAX_TERM_GAP, False),
        ("flag_rate_excess.max", "largest flag excess (pts)", MAX_FLAG_EXCESS, True),
        ("held_out.gap.mean", "held-out terms: mean gap", None, False),
        ("held_out.gap.max", "held-out terms: largest gap", None, False),
    ):
        f = 100.0 if pts else 1.0
        print(
            f"{name:<34} {f * a[key]:>8.3f} {f * b[key]:>8.3f}  {'' if bound is None else f'<= {f * bound:g}'}"
        )
    print(f"{'audit verdict':<34} {'PASS' if ok0 else 'FAIL':>8} {'PASS' if ok1 else 'FAIL':>8}")
    print(f"{'audit wall time (s, this host)':<34} {a['seconds']:>8.1f} {b['seconds']:>8.1f}\n")

    print(f"{'test AP':<48} {'without':>8} {'with':>8} {'change':>8}  90% paired-bootstrap interval")
    for lab in labels:
        keys = [f"test.{lab}.ap"] + sorted(
            k for k in a if k.startswith("test.source.") and k.endswith(f".{lab}.ap")
        )
        for k in keys:
            n, pos = a.get(k[:-3] + ".n"), a.get(k[:-3] + ".support")
            if n and pos and pos < n and k in b:  # both classes present: a ranking task
                where = k.split(".")[2] if ".source." in k else "all sources"
                rows = np.array([where in ("all sources", s) for s in sources])
                j = labels.index(lab)
                lo, hi = paired_interval(y[rows, j], pa[rows, j], pb[rows, j])
                print(
                    f"{lab + ' / ' + where:<48} {a[k]:>8.4f} {b[k]:>8.4f} {b[k] - a[k]:>+8.4f}  [{lo:+.4f}, {hi:+.4f}]"
                )
    sub = sorted(k for k in set(a) | set(b) if k.startswith("subgroup.") and k.endswith("auc"))
    if sub:
        print(f"\n{'subgroup metric (test rows naming the term)':<58} {'without':>8} {'with':>8}")
        for k in sub:
            fa, fb = a.get(k, float("nan")), b.get(k, float("nan"))
            print(f"{k[len('subgroup.') :]:<58} {fa:>8.3f} {fb:>8.3f}")


if __name__ == "__main__":
    main()
