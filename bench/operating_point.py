"""Usage: .venv/bin/python bench/operating_point.py ARTIFACT_DIR [SHARED_DATASETS_DIR]
(final evaluation only: reads the test split and cross-site-v1; choose nothing on what it prints).

Where to put the adult_services threshold so that a benign population is rarely flagged. Every row
is a rule that picks the threshold on *validation* scores alone:

- ``pooled``: at most 0.5% of all of the label's validation negatives flagged (what
  ``calibration.max_flag_rate_per_label`` does in training: ``model.calibration.flag_rate_floor``);
- ``craigslist``: at most 0.5% of the validation Craigslist rows (the population the target names);
- ``... @ 90% / 95%``: the same, but the exact one-sided Clopper-Pearson upper bound of the flagged
  share (``scipy.stats.binomtest(...).proportion_ci``; Clopper and Pearson 1934) must stay at or below
  0.5%, a cap that holds on new rows of the same population with that confidence.

Each row then prints, once, the test Craigslist share flagged and cross-site-v1 adult recall at it.
The model's own threshold (from its training config) is the first row.

Last, the ceiling of any threshold on cross-site-v1 at this model's ranking (a diagnosis, never a
rule: nothing is chosen on it): the highest adult recall with at most ``MAX_BENIGN`` of its benign
titles flagged, and how many benign titles a threshold flags at ``RECALL`` (docs/adaptation.md's
targets). Where neither reaches the other's target, no threshold or calibration can: the ranking
itself has to change.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from model.calibration import flag_rate_floor
from model.predictor import Predictor

CAP = 0.005
MAX_BENIGN, RECALL = 2, 0.85
LABEL = "adult_services"
NEGATIVE_SOURCE = "craigslist_headings"


def read(path: Path) -> pd.DataFrame:
    d = pd.read_json(path, lines=True, dtype=False)
    d["y"] = d["labels"].map(lambda ls: int(LABEL in ls))
    return d


def confident_floor(negative_scores: np.ndarray, confidence: float) -> float:
    """The lowest threshold whose flagged count k among the n negatives keeps the one-sided
    Clopper-Pearson upper bound of k / n at ``confidence`` <= CAP (1.0 where even k = 0 does not)."""
    n = len(negative_scores)

    def upper(k: int) -> float:
        return binomtest(k, n, alternative="less").proportion_ci(confidence_level=confidence).high

    k = 0
    if upper(0) > CAP:
        return 1.0
    while k + 1 < n and upper(k + 1) <= CAP:
        k += 1
    return flag_rate_floor(negative_scores, k / n)


def main() -> None:
    artifact = sys.argv[1]
    data = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/datasets")
    p = Predictor.load(artifact)
    a = list(p.labels).index(LABEL)
    v = read(data / "risky-ads-v1" / "validation.jsonl")
    te = read(data / "risky-ads-v1" / "test.jsonl")
    x = read(data / "cross-site-v1" / "therapeutic_titles.jsonl")
    te = te[te.source == NEGATIVE_SOURCE]
    pv, pt, px = (p.predict_proba(d.text.tolist())[:, a] for d in (v, te, x))
    neg = (v.y == 0).to_numpy()
    cl = neg & (v.source == NEGATIVE_SOURCE).to_numpy()
    rows = [("model's own", p.meta.threshold_vector()[a])]
    for name, mask in (("pooled", neg), ("craigslist", cl)):
        rows.append((name, flag_rate_floor(pv[mask], CAP)))
        rows += [(f"{name} @ {c:.0%}", confident_floor(pv[mask], c)) for c in (0.9, 0.95)]
    print(
        f"validation: {neg.sum()} negatives, {cl.sum()} Craigslist; test Craigslist {len(te)}; cap {CAP:.1%}"
    )
    print(
        f"{'rule':<18} {'threshold':>9} {'val CL':>7} {'val recall':>10} {'test CL':>7} {'x-site recall':>13}"
    )
    for name, t in rows:
        print(
            f"{name:<18} {t:9.4f} {np.mean(pv[cl] >= t):7.4f} {np.mean(pv[v.y == 1] >= t):10.4f} "
            f"{np.mean(pt >= t):7.4f} {np.mean(px[x.y == 1] >= t):13.3f}"
        )
    pos, ben = px[(x.y == 1).to_numpy()], np.sort(px[(x.y == 0).to_numpy()])[::-1]
    above = ben[MAX_BENIGN] if len(ben) > MAX_BENIGN else -np.inf  # flag only scores above it
    at_recall = np.quantile(pos, 1 - RECALL, method="inverted_cdf")
    print(
        f"cross-site-v1, any threshold at this ranking ({len(pos)} adult, {len(ben)} benign titles): "
        f"recall with <= {MAX_BENIGN} benign flagged {np.mean(pos > above):.3f}; "
        f"benign flagged at recall {RECALL} {int(np.sum(ben >= at_recall))}"
    )


if __name__ == "__main__":
    main()
