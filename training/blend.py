"""Fit the TF-IDF blend (``model/blend.py``) on the validation split, label by label, only where it helps.

Per label: a logistic regression on (transformer logit, TF-IDF logit) -> label, 5-fold cross-fitted on
the validation split (repeated over 5 fold assignments) to estimate its average precision on rows it
was not fitted on; the label is blended when that estimate beats the transformer's own validation AP
by more than ``min_gain`` AND, on every style-stripped view of the validation rows
(``training/views.py``), the blend's recall is not more than ``view_recall_tolerance`` below the
transformer's. Recall on a view is read at thresholds set on the unchanged rows, both scorers at the
same precisions (the target and the lower levels of ``VIEW_PRECISIONS``, capped at the precision the
transformer reaches), and averaged over them. The second rule is "learn the ad, not the site": a
blend can raise validation AP by sharpening one site's style, which moves the threshold up and cuts
the recall of short listings (docs/generalisation.md §6 shows it on the demo config). Both rules are
averages because the decision is otherwise a coin toss on a hundred positives (docs/identity.md).
The stacker is then refitted on the whole validation split. The test split and extra evaluation sets
are never used. Multi-class models are not blended (their softmax couples the labels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import RepeatedStratifiedKFold

from model.blend import StackWeights, TfidfBlend
from model.calibration import select_threshold
from training.baseline import TfidfBaseline

logger = logging.getLogger(__name__)

MIN_POSITIVES = 10  # fewer validation positives than this: too few to decide, not blended
# the view rule reads each view's recall at these precisions below the target, and at the target
VIEW_PRECISIONS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class BlendReport:
    """Per label: the transformer's validation AP, the cross-fitted blend's, and whether it is used."""

    model_ap: dict[str, float | None]
    blend_ap: dict[str, float | None]
    used: dict[str, bool]
    view_recall: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """MLflow metrics ``blend.<label>.{model_ap,crossfit_ap,used}``."""
        out: dict[str, float] = {}
        for n, used in self.used.items():
            out[f"blend.{n}.used"] = float(used)
            if self.model_ap[n] is not None:
                out[f"blend.{n}.model_ap"] = float(self.model_ap[n])  # type: ignore[arg-type]
            if self.blend_ap[n] is not None:
                out[f"blend.{n}.crossfit_ap"] = float(self.blend_ap[n])  # type: ignore[arg-type]
            for v, (model_r, blend_r) in self.view_recall.get(n, {}).items():
                out[f"blend.{n}.view.{v}.recall_model"] = model_r
                out[f"blend.{n}.view.{v}.recall_blend"] = blend_r
        return out


def blend_from_baseline(baseline: TfidfBaseline, labels: Sequence[str]) -> TfidfBlend:
    """A ``TfidfBlend`` with no label blended yet, over a fitted multi-label ``TfidfBaseline``
    (its FeatureUnion's vectorisers, one logistic regression per label)."""
    features, clf = baseline.pipeline_.steps[0][1], baseline.pipeline_.steps[-1][1]
    vectorizers = [v for _, v in features.transformer_list]
    coef = np.vstack([e.coef_.ravel() for e in clf.estimators_])
    intercept = np.asarray([float(e.intercept_.ravel()[0]) for e in clf.estimators_])
    return TfidfBlend(vectorizers, coef, intercept, labels, {})


def fit_stack(x: np.ndarray, y: np.ndarray) -> StackWeights:
    """One label's stacker: a logistic regression (scikit-learn) on (n, 2) [transformer logit, TF-IDF
    logit] against (n,) 0/1 targets (stacked generalisation, Wolpert 1992)."""
    lr = LogisticRegression().fit(x, np.asarray(y).astype(int))
    return StackWeights(float(lr.coef_[0, 0]), float(lr.coef_[0, 1]), float(lr.intercept_[0]))


def fit_blend(
    blend: TfidfBlend,
    model_logits: np.ndarray,
    texts: Sequence[str],
    targets: np.ndarray,
    *,
    folds: int = 5,
    repeats: int = 5,
    min_gain: float = 0.0,
    seed: int = 0,
    views: dict[str, tuple[np.ndarray, Sequence[str]]] | None = None,
    target_precision: float | dict[str, float] = 0.9,
    view_recall_tolerance: float = 0.02,
) -> tuple[TfidfBlend, BlendReport]:
    """Choose and fit the per-label stackers on validation rows.

    Args:
        blend: from ``blend_from_baseline`` (its TF-IDF model fitted on the training split only).
        model_logits: (n, L) transformer logits of the validation texts.
        texts: the n validation texts (raw; normalised as in training).
        targets: (n, L) 0/1.
        folds: cross-fitting folds for the decision.
        repeats: cross-fitting repetitions, each with its own fold assignment; the blend's AP is the
            mean over them, so a near tie is not settled by which rows share a fold.
        min_gain: blend a label only when its cross-fitted AP exceeds the transformer's by more.
        seed: fold shuffling.
        views: view name -> ((n, L) transformer logits of the view texts, the n view texts), rows
            aligned with ``texts``/``targets``.
        target_precision: the thresholds' precision target (one value or per label), as in training.
        view_recall_tolerance: most recall a view may lose to the blend (absolute).

    Returns:
        The blend with ``weights`` set for the chosen labels, and the report.
    """
    tfidf = blend.tfidf_logits(texts)
    view_tfidf = {v: blend.tfidf_logits(vt) for v, (_, vt) in (views or {}).items()}
    view_recall: dict[str, dict[str, tuple[float, float]]] = {}
    weights: dict[str, StackWeights] = {}
    model_ap: dict[str, float | None] = {}
    blend_ap: dict[str, float | None] = {}
    used: dict[str, bool] = {}
    for j, name in enumerate(blend.labels):
        y = np.asarray(targets[:, j]).astype(int)
        x = np.stack([model_logits[:, j], tfidf[:, j]], axis=1)
        model_ap[name] = blend_ap[name] = None
        used[name] = False
        if min(y.sum(), len(y) - y.sum()) < max(MIN_POSITIVES, folds):
            continue
        model_ap[name] = float(average_precision_score(y, x[:, 0]))
        crossfit = np.zeros((repeats, len(y)))
        splits = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed).split(x, y)
        for k, (fit_idx, held_idx) in enumerate(splits):
            lr = LogisticRegression().fit(x[fit_idx], y[fit_idx])
            crossfit[k // folds, held_idx] = lr.decision_function(x[held_idx])
        blend_ap[name] = float(np.mean([average_precision_score(y, c) for c in crossfit]))
        if blend_ap[name] <= model_ap[name] + min_gain:  # type: ignore[operator]
            logger.info(
                "TF-IDF blend %s: validation AP %.4f -> %.4f cross-fitted: not blended",
                name,
                model_ap[name],
                blend_ap[name],
            )
            continue
        w = fit_stack(x, y)
        target = target_precision[name] if isinstance(target_precision, dict) else target_precision
        p_model = expit(x[:, 0])
        p_blend = expit(w.model * x[:, 0] + w.tfidf * x[:, 1] + w.bias)
        model_thr = select_threshold(p_model, y, target)
        # both at one precision: the target, or the precision the transformer does reach where the
        # target is out of its reach (its max-F1 threshold); recalls at two precisions do not compare.
        # The recall is averaged over precisions up to that one: at a single threshold a hundred
        # positives move it by a few rows either way.
        reached = target if model_thr.precision is None else min(target, model_thr.precision)
        levels = sorted({lv for lv in VIEW_PRECISIONS if lv < reached} | {reached})
        pairs = [
            (select_threshold(p_model, y, lv).threshold, select_threshold(p_blend, y, lv).threshold)
            for lv in levels
        ]
        pos = y == 1
        worst = 0.0
        for v, (vz, _) in (views or {}).items():
            vm = expit(vz[pos, j])
            vb = expit(w.model * vz[pos, j] + w.tfidf * view_tfidf[v][pos, j] + w.bias)
            r_model = float(np.mean([np.mean(vm >= tm) for tm, _ in pairs]))
            r_blend = float(np.mean([np.mean(vb >= tb) for _, tb in pairs]))
            view_recall.setdefault(name, {})[v] = (r_model, r_blend)
            worst = max(worst, r_model - r_blend)
        used[name] = worst <= view_recall_tolerance
        if used[name]:
            weights[name] = w
        logger.info(
            "TF-IDF blend %s: validation AP %.4f -> %.4f cross-fitted; view recall (transformer -> blend) %s: %s",
            name,
            model_ap[name],
            blend_ap[name],
            {v: (round(a, 3), round(b, 3)) for v, (a, b) in view_recall.get(name, {}).items()},
            "blended" if used[name] else f"not blended (a view loses {worst:.3f} recall)",
        )
    chosen = blend.with_weights(weights)
    return chosen, BlendReport(model_ap, blend_ap, used, view_recall)
