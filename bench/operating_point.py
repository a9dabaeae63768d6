"""Usage: .venv/bin/python bench/operating_point.py ARTIFACT_DIR (final evaluation only: reads cross-site-v1).

Validation-chosen operating point for adult_services: the lowest threshold at which at most 0.5% of
validation Craigslist rows are flagged; then (once) the test Craigslist share and cross-site recall at it."""

import sys

import numpy as np
import pandas as pd

from model.predictor import Predictor

p = Predictor.load(sys.argv[1], runtime="torch")
a = list(p.labels).index("adult_services")


def fr(path):
    d = pd.read_json(path, lines=True, dtype=False)
    d["y"] = d["labels"].map(lambda ls: int("adult_services" in ls))
    return d


v = fr("/work/shared/datasets/risky-ads-v1/validation.jsonl")
pv = p.predict_proba(v.text.tolist())[:, a]
cl = (v.source == "craigslist_headings").to_numpy()
t = float(np.quantile(pv[cl], 0.995, method="higher")) + 1e-9
print(f"model threshold {p.meta.threshold_vector()[a]:.4f}; validation-chosen threshold {t:.4f}")
print(f"validation: CL flagged {np.mean(pv[cl] >= t):.4f}, adult recall {np.mean(pv[v.y == 1] >= t):.4f}")
te = fr("/work/shared/datasets/risky-ads-v1/test.jsonl")
x = fr("/work/shared/datasets/cross-site-v1/therapeutic_titles.jsonl")
pt = p.predict_proba(te[te.source == "craigslist_headings"].text.tolist())[:, a]
px = p.predict_proba(x.text.tolist())[:, a]
print(
    f"test: CL flagged {np.mean(pt >= t):.4f}; cross-site adult recall {np.mean(px[x.y == 1] >= t):.4f}, benign flagged {np.mean(px[x.y == 0] >= t):.4f}"
)
