"""The explainer's evaluation harness: the deletion test of faithfulness (does deleting the words an
explanation ranks highest move the score more than deleting random words?). ``bench/explain.py`` runs it
on a model and data set; ``model.explain`` holds the explainer it evaluates."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from model.explain import Attribution, Explainer  # noqa: E402
from model.predictor import check_texts  # noqa: E402


def delete_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with each ``[start, end)`` span replaced by one space (so neighbours do not join)."""
    out, pos = [], 0
    for a, b in sorted((int(a), int(b)) for a, b in spans):
        if a < pos:
            a = pos
        out.append(text[pos:a])
        out.append(" ")
        pos = max(pos, b)
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class Faithfulness:
    """Deletion test of one label over ``n`` texts: mean calibrated-probability drop when deleting the
    top-k positively attributed units (``drop_top``) vs k random units (``drop_random``, mean of
    ``draws`` draws per text); ``margin = drop_top - drop_random``; ``wins`` = share of texts where
    the top-k drop beats the mean random drop; ``margin_logit`` the same margin in calibrated-logit units
    (probabilities saturate near 0 and 1, logits do not)."""

    label: str
    n: int
    k: int
    drop_top: float
    drop_random: float
    margin: float
    wins: float
    margin_logit: float = math.nan


def deletion_test(
    explainer: Explainer,
    texts: Sequence[str],
    label: str,
    k: int = 3,
    draws: int = 5,
    seed: int = 0,
    attributions: Sequence[Attribution] | None = None,
) -> Faithfulness:
    """Deletion test (cf. Samek et al. 2017 "Evaluating the visualization of what a DNN has learned";
    DeYoung et al. 2020 ERASER "comprehensiveness"): delete the k units with the largest attribution
    for ``label`` from the ORIGINAL text (by their character spans), re-score with the predictor, and
    compare the drop of the label's calibrated probability with deleting k random units.

    Only texts with more than k units inside the model window count.

    Raises:
        ValueError: unknown label, k < 1, draws < 1.
    """
    if k < 1 or draws < 1:
        raise ValueError("k and draws must be >= 1")
    j = explainer._label_indices([label])[0]
    texts = check_texts(texts)
    attrs = list(attributions) if attributions is not None else explainer.attribute(texts, [label])
    rng = np.random.default_rng(seed)
    base, top, rand = [], [], []
    for t, a in zip(texts, attrs, strict=True):
        if a.active.size <= k:
            continue
        order = a.active[np.argsort(-a.scores[a.active, j], kind="stable")[:k]]
        base.append(t)
        top.append(delete_spans(t, a.spans[order]))
        for _ in range(draws):
            pick = rng.choice(a.active, size=k, replace=False)
            rand.append(delete_spans(t, a.spans[pick]))
    if not base:
        return Faithfulness(label, 0, k, math.nan, math.nan, math.nan, math.nan)
    scored = explainer.predictor.score(base + top + rand)
    z, p = explainer._space(scored.logits)[:, j], scored.probabilities[:, j]
    m = len(base)
    p0, pt, pr = p[:m], p[m : 2 * m], p[2 * m :].reshape(m, draws).mean(axis=1)
    z0, zt, zr = z[:m], z[m : 2 * m], z[2 * m :].reshape(m, draws).mean(axis=1)
    drop_top, drop_rand = p0 - pt, p0 - pr
    return Faithfulness(
        label,
        m,
        k,
        float(drop_top.mean()),
        float(drop_rand.mean()),
        float((drop_top - drop_rand).mean()),
        float((drop_top > drop_rand).mean()),
        float(((z0 - zt) - (z0 - zr)).mean()),
    )
