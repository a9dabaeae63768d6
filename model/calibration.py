"""Calibration (temperature scaling) and threshold selection.

Temperature scaling: Guo et al., "On Calibration of Modern Neural Networks", ICML 2017. For
multi-label and binary models one temperature per label is fitted on that label's validation
logits (``sigmoid(z / T)``); for multi-class one shared temperature (``softmax(z / T)``).
The fit minimises log loss over ``log T`` with ``scipy.optimize.minimize_scalar`` (bounded).

Thresholds are chosen on calibrated validation probabilities from scikit-learn's
``precision_recall_curve``: the lowest threshold whose precision reaches the target with the most recall
(ties broken by the higher precision); where the target is unreachable, the max-F1 threshold; raised,
where a label has a ``max_flag_rate``, until at most that share of its validation negatives is flagged.
The returned ``ThresholdInfo.method`` says which rule decided.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax
from sklearn.metrics import precision_recall_curve

from model.artifact import ThresholdInfo
from model.schema import ProblemType

logger = logging.getLogger(__name__)

_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def _bce(z: np.ndarray, y: np.ndarray) -> float:
    # numerically stable binary cross-entropy with logits, mean over rows
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperatures(logits: np.ndarray, targets: np.ndarray, problem_type: ProblemType) -> list[float]:
    """Fit temperatures on validation logits.

    Args:
        logits: float array (n, L).
        targets: multi_label/binary: 0/1 array (n, L); multi_class: int class ids (n,) or one-hot (n, L).
        problem_type: the schema's problem type.

    Returns:
        L positive temperatures (multi_class: the shared one repeated L times). A label whose
        targets hold a single class keeps T = 1 (nothing to fit).

    Raises:
        ValueError: shapes disagree or the arrays are empty.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (n, L) array, got shape {logits.shape}")
    n, num_labels = logits.shape
    if problem_type is ProblemType.MULTI_CLASS:
        y = np.asarray(targets)
        y = y.argmax(axis=1) if y.ndim == 2 else y.astype(int)
        if y.shape != (n,):
            raise ValueError(f"targets shape {y.shape} does not match logits {logits.shape}")

        def nll(log_t: float) -> float:
            return float(-np.mean(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(n), y]))

        res = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded")
        return [float(np.exp(res.x))] * num_labels

    y = np.asarray(targets, dtype=np.float64)
    if y.shape != logits.shape:
        raise ValueError(f"targets shape {y.shape} does not match logits {logits.shape}")
    temps = []
    for j in range(num_labels):
        z, t = logits[:, j], y[:, j]
        if t.min() == t.max():
            temps.append(1.0)
            continue
        res = minimize_scalar(
            lambda lt, z=z, t=t: _bce(z / np.exp(lt), t), bounds=_LOG_T_BOUNDS, method="bounded"
        )
        temps.append(float(np.exp(res.x)))
    return temps


def calibrated_probabilities(
    logits: np.ndarray, temperatures: list[float], problem_type: ProblemType
) -> np.ndarray:
    """Apply temperature scaling: (n, L) logits -> (n, L) probabilities in [0, 1] (float64)."""
    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperatures, dtype=np.float64)[None, :]
    if problem_type is ProblemType.MULTI_CLASS:
        return softmax(z, axis=1)
    return expit(z)


def flag_rate_floor(negative_probs: np.ndarray, max_flag_rate: float) -> float:
    """The lowest threshold at which at most ``max_flag_rate`` of the negatives are flagged
    (``p >= threshold``): just above the ``(k + 1)``-th highest negative, ``k = floor(rate * n)``.

    Args:
        negative_probs: (n,) probabilities of the negative rows.
        max_flag_rate: in [0, 1).

    Returns:
        a threshold in [0, 1]; 0.0 when there are no negatives or ``k >= n``.

    Raises:
        ValueError: ``max_flag_rate`` outside [0, 1).
    """
    if not 0.0 <= max_flag_rate < 1.0:
        raise ValueError(f"max_flag_rate must be in [0, 1), got {max_flag_rate}")
    neg = np.sort(np.asarray(negative_probs, dtype=np.float64))
    k = int(np.floor(max_flag_rate * len(neg) + 1e-9))
    if k >= len(neg):
        return 0.0
    return float(min(np.nextafter(neg[len(neg) - 1 - k], np.inf), 1.0))


def select_threshold(
    probs: np.ndarray,
    targets: np.ndarray,
    target_precision: float = 0.9,
    max_flag_rate: float | None = None,
) -> ThresholdInfo:
    """Choose a decision threshold for one label.

    Args:
        probs: calibrated probabilities (n,).
        targets: 0/1 ground truth (n,).
        target_precision: precision the threshold must reach on this data, in (0, 1].
        max_flag_rate: if set, the threshold is raised where needed so that at most this share of
            the negatives is flagged (a review queue's capacity, a benign population's false-positive
            rate); in [0, 1). Where validation positives are all separable, the precision rule alone
            puts the threshold at the weakest positive, so one row moves it; the cap does not.

    Returns:
        ThresholdInfo. ``method`` is ``target_precision`` (lowest threshold reaching the target),
        ``max_f1`` (target unreachable), ``max_flag_rate`` (the cap raised it) or ``default`` (0.5: no
        positives or no negatives to choose on). ``flagged_negatives``: share of negatives flagged.

    Raises:
        ValueError: ``target_precision`` outside (0, 1] or ``max_flag_rate`` outside [0, 1).
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets).astype(int)
    if y.sum() == 0 or y.sum() == len(y):
        return ThresholdInfo(
            threshold=0.5, method="default", target_precision=target_precision, max_flag_rate=max_flag_rate
        )
    info = _precision_threshold(p, y, target_precision)
    if max_flag_rate is None:
        return info
    floor = flag_rate_floor(p[y == 0], max_flag_rate)
    t, method = (floor, "max_flag_rate") if floor > info.threshold else (info.threshold, info.method)
    flagged = p >= t
    tp = int((flagged & (y == 1)).sum())
    return ThresholdInfo(
        threshold=t,
        method=method,
        target_precision=target_precision,
        max_flag_rate=max_flag_rate,
        precision=tp / int(flagged.sum()) if flagged.any() else 1.0,
        recall=tp / int(y.sum()),
        flagged_negatives=float(flagged[y == 0].mean()),
    )


def _precision_threshold(p: np.ndarray, y: np.ndarray, target_precision: float) -> ThresholdInfo:
    """The target-precision rule (max-F1 where unreachable) of ``select_threshold``."""
    precision, recall, thr = precision_recall_curve(y, p)
    # precision/recall have one more entry than thr (the final (1, 0) point); align them.
    precision, recall = precision[:-1], recall[:-1]
    ok = np.flatnonzero(precision >= target_precision)
    if ok.size:
        # the most recall that reaches the target; among equal recall, the highest precision
        best_recall = recall[ok].max()
        tied = ok[recall[ok] >= best_recall - 1e-12]
        i = int(tied[np.argmax(precision[tied])])
        method = "target_precision"
    else:
        f1 = np.where(
            precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0
        )
        i = int(np.argmax(f1))
        method = "max_f1"
    t = float(np.clip(thr[i], 0.0, 1.0))
    return ThresholdInfo(
        threshold=t,
        method=method,
        target_precision=target_precision,
        precision=float(precision[i]),
        recall=float(recall[i]),
        flagged_negatives=float((p[y == 0] >= t).mean()),
    )


def select_thresholds(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: tuple[str, ...] | list[str],
    target_precision: float | dict[str, float] = 0.9,
    max_flag_rate: float | dict[str, float | None] | None = None,
) -> dict[str, ThresholdInfo]:
    """``select_threshold`` for each column of (n, L) ``probs``/``targets``; keys are label names.
    ``target_precision`` and ``max_flag_rate`` are one value for all labels or a value per label name
    (a label missing from the ``max_flag_rate`` dict has no cap)."""
    out = {}
    for j, name in enumerate(labels):
        target = target_precision[name] if isinstance(target_precision, dict) else target_precision
        cap = max_flag_rate.get(name) if isinstance(max_flag_rate, dict) else max_flag_rate
        info = select_threshold(probs[:, j], targets[:, j], target, cap)
        if info.method == "max_f1":
            logger.warning(
                "label %s: precision %.2f is unreachable on validation; using the max-F1 threshold %.3f "
                "(precision %.3f, recall %.3f)",
                name,
                target,
                info.threshold,
                info.precision,
                info.recall,
            )
        out[name] = info
    return out
