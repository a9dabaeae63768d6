"""Evaluation metrics with the CONTRACT names, per label and per ``source`` slice.

Per label: ``ap`` (average precision), ``roc_auc``, ``precision``, ``recall``, ``f1`` at the
model's threshold, ``recall_at_p90`` (best recall with precision >= 0.90), ``ece`` (expected
calibration error, 15 equal-width bins, Guo et al. 2017), ``brier``, plus ``support`` (positives)
and ``n`` (rows). Metric functions come from scikit-learn; ECE is computed here (sklearn has
``calibration_curve`` but no ECE). A metric that is undefined on a slice (one class only) is omitted
rather than reported as a misleading number.

Keys are flat: ``{prefix}{split}.{label}.{metric}`` and ``{prefix}{split}.source.{source}.{label}.{metric}``,
and ``{split}.macro.ap`` (mean AP over labels with both classes present).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

METRICS = ("ap", "roc_auc", "precision", "recall", "f1", "recall_at_p90", "ece", "brier")


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over equal-width probability bins of |mean(prob) - mean(target)| weighted by bin size.

    Args:
        probs: (n,) probabilities in [0, 1]. targets: (n,) 0/1.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


def recall_at_precision(probs: np.ndarray, targets: np.ndarray, min_precision: float = 0.9) -> float:
    """Highest recall over thresholds where precision >= ``min_precision`` (0.0 if none)."""
    precision, recall, _ = precision_recall_curve(targets, probs)
    ok = precision >= min_precision
    return float(recall[ok].max()) if ok.any() else 0.0


def label_metrics(probs: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """CONTRACT metrics for one label on one slice. probs, targets: (n,). Undefined ones are omitted."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets).astype(int)
    out: dict[str, float] = {"n": float(len(y)), "support": float(y.sum())}
    if len(y) == 0:
        return out
    both = 0 < y.sum() < len(y)
    pred = (p >= threshold).astype(int)
    if y.sum() > 0:
        prec, rec, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
        out.update(precision=float(prec), recall=float(rec), f1=float(f1))
        out["ap"] = float(average_precision_score(y, p))
        out["recall_at_p90"] = recall_at_precision(p, y, 0.9)
    if both:
        out["roc_auc"] = float(roc_auc_score(y, p))
    out["ece"] = expected_calibration_error(p, y)
    out["brier"] = float(brier_score_loss(y, p))
    return out


def evaluate_scores(
    probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    thresholds: Sequence[float],
    split: str,
    sources: Sequence[str] | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """All metrics of a split as a flat dict.

    Args:
        probs: (n, L) calibrated probabilities. targets: (n, L) 0/1.
        labels: L label names. thresholds: L thresholds.
        split: e.g. ``validation`` or ``test``.
        sources: optional (n,) slice names; adds ``{split}.source.{s}.{label}.{metric}`` keys.
        prefix: e.g. ``baseline.``.
    """
    probs = np.asarray(probs)
    targets = np.asarray(targets)
    if probs.shape != targets.shape or probs.shape[1] != len(labels):
        raise ValueError(f"probs {probs.shape}, targets {targets.shape} and {len(labels)} labels disagree")
    out: dict[str, float] = {}
    aps = []
    for j, name in enumerate(labels):
        for k, v in label_metrics(probs[:, j], targets[:, j], thresholds[j]).items():
            out[f"{prefix}{split}.{name}.{k}"] = v
        if f"{prefix}{split}.{name}.ap" in out and 0 < targets[:, j].sum() < len(targets):
            aps.append(out[f"{prefix}{split}.{name}.ap"])
    if aps:
        out[f"{prefix}{split}.macro.ap"] = float(np.mean(aps))
    if sources is not None:
        src = np.asarray(sources, dtype=object)
        for s in sorted(set(src.tolist())):
            m = src == s
            for j, name in enumerate(labels):
                for k, v in label_metrics(probs[m, j], targets[m, j], thresholds[j]).items():
                    out[f"{prefix}{split}.source.{s}.{name}.{k}"] = v
    return out


def format_table(
    metrics: dict[str, float],
    labels: Sequence[str],
    split: str = "test",
    baseline_prefix: str = "baseline.",
    columns: Sequence[str] = ("ap", "roc_auc", "f1", "recall_at_p90", "ece"),
) -> str:
    """A plain-text table: one row per label and per (source, label) slice with positives and negatives,
    transformer columns and, where present, the baseline's beside them (``b.ap`` ...)."""
    rows = []
    slices = [("all", f"{split}.")]
    sources = sorted({k.split(".")[2] for k in metrics if k.startswith(f"{split}.source.")})
    slices += [(s, f"{split}.source.{s}.") for s in sources]
    has_base = any(k.startswith(baseline_prefix) for k in metrics)
    header = (
        ["slice", "label", "n", "pos"] + list(columns) + ([f"b.{c}" for c in columns] if has_base else [])
    )
    for sname, key in slices:
        for lab in labels:
            n = metrics.get(f"{key}{lab}.n")
            pos = metrics.get(f"{key}{lab}.support")
            if n is None or pos is None or pos == 0 or pos == n:
                continue  # nothing to rank within this slice
            vals = [metrics.get(f"{key}{lab}.{c}") for c in columns]
            if has_base:
                vals += [metrics.get(f"{baseline_prefix}{key}{lab}.{c}") for c in columns]
            rows.append(
                [sname, lab, str(int(n)), str(int(pos))] + ["-" if v is None else f"{v:.3f}" for v in vals]
            )
    widths = [
        max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
