"""The accuracy gate that admits a runtime variant (an ONNX graph of the model) beside torch fp32.

A variant *passes* when, on labelled texts (the validation split), scored by it and by the fp32 torch
predictor:

- **AP**: every label's average precision is within ``tolerance`` (0.005) of torch's, and so is the
  paired-bootstrap interval of that delta at ``confidence`` (0.9): an equivalence test (two one-sided
  tests at 5% each, Schuirmann 1987), so a variant that agrees by luck on these texts does not pass
  (``ap_delta_interval``; the percentile bootstrap of Efron & Tibshirani 1993).
- **Decisions**: per label, its precision and recall at the artifact's thresholds are within
  ``decision_tolerance`` (0.02, or ``DECISION_MIN_TEXTS`` texts' worth where few are flagged) of
  torch's (``decision_deltas``). AP is rank-only; a variant on another probability scale could pass
  it and still flag a different share of ads.
- **Batch invariance**: a text's probability does not depend on which texts share its batch by more
  than ``BATCH_INVARIANCE_TOLERANCE`` (``batch_invariance``). A score must be a property of the ad:
  the server, ``adrisk score`` and the Spark job batch the same ad with different company.

``VariantGate`` scores the reference once and then ``evaluate``s each variant's predictor; the export
(``training.onnx_export``) builds the variants and records what the gate measured. Every variant, a
distilled student's included, serves with the model's TF-IDF blend, temperatures and thresholds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.artifact import ArtifactMeta

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.005
# A text's probability may not depend on which other texts share its batch by more than this (fp32
# differs by padding round-off only; a batch-wide activation scale moves it by far more).
BATCH_INVARIANCE_TOLERANCE = 1e-3
BATCH_INVARIANCE_TEXTS = 48
# Per label, precision and recall at the threshold within this (absolute) of the reference's; where the
# metric's denominator is small, a change of up to DECISION_MIN_TEXTS texts is allowed instead (one flip
# among 40 flagged ads moves precision by 0.025).
DECISION_TOLERANCE = 0.02
DECISION_MIN_TEXTS = 2
DECISION_METRICS = ("precision", "recall", "flagged")
# The AP equivalence test: confidence of the paired-bootstrap interval, and its resamples.
GATE_CONFIDENCE = 0.9
GATE_RESAMPLES = 1000


# --------------------------------------------------------------------------------------------------
# the statistics


def per_label_ap(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """Average precision per label (``sklearn.metrics.average_precision_score``); None where the
    label has no positives or no negatives among the targets (AP undefined or trivial).

    Args:
        probs: (n, L) scores. targets: (n, L) 0/1. labels: L names.
    """
    from sklearn.metrics import average_precision_score

    out: dict[str, float | None] = {}
    for j, name in enumerate(labels):
        y = np.asarray(targets[:, j]).astype(int)
        out[name] = float(average_precision_score(y, probs[:, j])) if 0 < y.sum() < len(y) else None
    return out


def ap_deltas(
    probs: np.ndarray, ref_probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]
) -> dict[str, float | None]:
    """Per-label AP(probs) - AP(ref_probs) on the same (n, L) targets; None where AP is undefined."""
    return _deltas(per_label_ap(probs, targets, labels), per_label_ap(ref_probs, targets, labels))


def _deltas(a: dict[str, float | None], r: dict[str, float | None]) -> dict[str, float | None]:
    """Per key a - r; None where either is None."""
    out: dict[str, float | None] = {}
    for n, x in a.items():
        y = r.get(n)
        out[n] = None if x is None or y is None else x - y
    return out


def bootstrap_ap(
    probs: np.ndarray, targets: np.ndarray, *, n_resamples: int = GATE_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Per-label average precision on ``n_resamples`` seeded resamples of the texts (with
    replacement; the same draws for every call with the same ``n`` and ``seed``, so two scorers'
    arrays are paired resample by resample).

    Args:
        probs: (n, L) scores. targets: (n, L) 0/1. n_resamples: at least 10.

    Returns:
        (n_resamples, L) float array; NaN where a resample lacks positives or negatives of a label.

    Raises:
        ValueError: ``n_resamples`` < 10, or ``probs`` and ``targets`` shapes that disagree.
    """
    from sklearn.metrics import average_precision_score

    probs, targets = np.asarray(probs), np.asarray(targets)
    if n_resamples < 10:
        raise ValueError(f"n_resamples must be >= 10, not {n_resamples}")
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(f"shapes disagree: {probs.shape}, {targets.shape}")
    n, n_labels = targets.shape
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    out = np.full((n_resamples, n_labels), np.nan)
    for j in range(n_labels):
        y = targets[:, j].astype(int)
        for r, idx in enumerate(draws):
            yb = y[idx]
            if 0 < yb.sum() < n:
                out[r, j] = average_precision_score(yb, probs[idx, j])
    return out


def ap_delta_interval(
    probs: np.ndarray,
    ref_probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    *,
    confidence: float = GATE_CONFIDENCE,
    n_resamples: int = GATE_RESAMPLES,
    seed: int = 0,
    ref_boot: np.ndarray | None = None,
) -> dict[str, tuple[float, float] | None]:
    """Per-label paired percentile-bootstrap interval of AP(probs) - AP(ref_probs) (Efron &
    Tibshirani 1993): both scorers' APs on the same ``bootstrap_ap`` resamples, and the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of their differences.

    Args:
        probs, ref_probs: (n, L) scores of the variant and of the reference. targets: (n, L) 0/1.
        labels: L names. confidence: in (0, 1). n_resamples: at least 10.
        ref_boot: ``bootstrap_ap(ref_probs, targets, n_resamples=..., seed=...)`` when already
            computed (the gate compares several variants with one reference); else computed here.

    Returns:
        ``{label: (low, high)}``; None where the label has no positives or no negatives, or where
        fewer than half the resamples hold both classes (too few positives for an interval).

    Raises:
        ValueError: ``confidence`` outside (0, 1), ``n_resamples`` < 10, or shapes that disagree.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    probs, ref_probs = np.asarray(probs), np.asarray(ref_probs)
    if probs.shape != ref_probs.shape or probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"shapes disagree: {probs.shape}, {ref_probs.shape}, {len(labels)} labels")
    boot = bootstrap_ap(probs, targets, n_resamples=n_resamples, seed=seed)
    if ref_boot is None:
        ref_boot = bootstrap_ap(ref_probs, targets, n_resamples=n_resamples, seed=seed)
    out: dict[str, tuple[float, float] | None] = {}
    for j, name in enumerate(labels):
        deltas = (boot[:, j] - ref_boot[:, j])[~np.isnan(boot[:, j])]
        if len(deltas) < n_resamples / 2:
            out[name] = None
            continue
        lo, hi = np.quantile(deltas, [(1 - confidence) / 2, (1 + confidence) / 2])
        out[name] = (float(lo), float(hi))
    return out


def intervals_pass(intervals: dict[str, tuple[float, float] | None], tolerance: float) -> bool:
    """The equivalence rule: every defined interval lies inside ``[-tolerance, +tolerance]``."""
    return all(iv is None or (-tolerance <= iv[0] and iv[1] <= tolerance) for iv in intervals.values())


def decision_deltas(
    probs: np.ndarray,
    ref_probs: np.ndarray,
    targets: np.ndarray,
    thresholds: Sequence[float],
    labels: Sequence[str],
    tolerance: float = DECISION_TOLERANCE,
    *,
    ref_thresholds: Sequence[float] | None = None,
    target_precision: Sequence[float] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Per label, precision and recall at the label's threshold of ``probs`` minus those of ``ref_probs``,
    and the change each may make: ``max(tolerance, DECISION_MIN_TEXTS / denominator)`` (denominator: the
    reference's flagged count for precision, the positives for recall).

    Args:
        probs, ref_probs: (n, L) calibrated probabilities of a variant and of the reference.
        targets: (n, L) 0/1. thresholds: L thresholds (flag when probability >= threshold).
        labels: L names.
        ref_thresholds: the reference's thresholds where they differ (a variant with its own
            calibration); default ``thresholds``.
        target_precision: with ``ref_thresholds``, the L precision targets both sets of thresholds
            were chosen for. Two thresholds chosen separately for one target land at different
            precisions, so the comparison is then one-sided (``"one_sided": 1.0``): ``precision`` is
            the variant's precision minus ``min(target, reference precision)`` and ``recall`` the
            variant's minus the reference's; each may fall by at most its allowance, and neither is
            held against a gain. ``flagged`` is recorded, not gated.

    Returns:
        ``{label: {"precision": delta | None, "recall": delta | None, "flagged": relative change of
        the number flagged, and "<metric>_allowed": float for each}}``; a delta is None where the
        metric is undefined for either (no positives for recall; nothing flagged for precision), via
        ``sklearn.metrics.precision_score`` / ``recall_score`` with ``zero_division=nan``.
        ``decisions_pass`` reads it.
    """
    from sklearn.metrics import precision_score, recall_score

    ref_thr = list(thresholds if ref_thresholds is None else ref_thresholds)
    out: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(labels):
        y = np.asarray(targets[:, j]).astype(int)
        row: dict[str, float | None] = {}
        for metric, fn in (("precision", precision_score), ("recall", recall_score)):
            a, r = (
                float(fn(y, (p[:, j] >= t).astype(int), zero_division=np.nan))
                for p, t in ((probs, thresholds[j]), (ref_probs, ref_thr[j]))
            )
            if target_precision is not None and metric == "precision":
                r = min(float(target_precision[j]), r)  # the floor the variant's threshold must keep
            row[metric] = None if np.isnan(a) or np.isnan(r) else a - r
        if target_precision is not None:
            row["one_sided"] = 1.0
        flagged = int((ref_probs[:, j] >= ref_thr[j]).sum())
        # how many texts are flagged, relative to the reference (defined even where precision is not:
        # a variant that flags nothing, on a label without positives among the texts)
        row["flagged"] = (int((probs[:, j] >= thresholds[j]).sum()) - flagged) / max(flagged, 1)
        for metric, denominator in (("precision", flagged), ("recall", int(y.sum())), ("flagged", flagged)):
            row[f"{metric}_allowed"] = max(tolerance, DECISION_MIN_TEXTS / max(denominator, 1))
        out[name] = row
    return out


def decisions_pass(decisions: dict[str, dict[str, float | None]]) -> bool:
    """True when every defined delta of ``decision_deltas`` is within its allowance (one-sided rows:
    precision and recall may not fall by more than it; a gain always passes)."""
    for row in decisions.values():
        for m in DECISION_METRICS:
            d, allowed = row.get(m), row[f"{m}_allowed"]
            if d is None or allowed is None:
                continue
            if row.get("one_sided"):
                if m != "flagged" and d < -allowed:
                    return False
            elif abs(d) > allowed:
                return False
    return True


def batch_invariance(predictor: Any, texts: Sequence[str], batched_probs: np.ndarray) -> float:
    """Largest |probability change| of a text scored alone vs inside the gate's batches.

    Args:
        predictor: a ``model.predictor.Predictor`` over the variant (anything with ``predict_proba``).
        texts: the gate texts; ``batched_probs`` (n, L) their probabilities from batched scoring.

    Returns:
        max |p_alone - p_batched| over up to ``BATCH_INVARIANCE_TEXTS`` texts spread over the set.
    """
    n = len(texts)
    if n == 0:
        return 0.0
    idx = np.unique(np.linspace(0, n - 1, num=min(n, BATCH_INVARIANCE_TEXTS)).round().astype(int))
    alone = np.vstack([predictor.predict_proba([texts[i]]) for i in idx])
    return float(np.abs(alone - batched_probs[idx]).max())


# --------------------------------------------------------------------------------------------------
# the gate


def timed_scores(predictor: Any, texts: list[str]) -> tuple[np.ndarray, float]:
    """(n, L) probabilities and texts/s (tokenisation included) of one full pass after a warm-up batch."""
    predictor.predict_proba(texts[: min(len(texts), 8)])  # warm-up: thread pools, allocator
    t0 = time.perf_counter()
    probs = predictor.predict_proba(texts)
    dt = time.perf_counter() - t0
    return probs, len(texts) / dt if dt > 0 else float("inf")


class VariantGate:
    """The gate's reference (torch fp32 on the gate texts) and the rule each variant is held to.

    Args:
        reference: the fp32 torch ``Predictor`` of the artifact.
        texts: the n labelled gate texts (a few thousand: AP needs positives of every label).
        targets: (n, L) 0/1 in the artifact's label order.
        tolerance: the per-label AP gate (absolute) for the point estimate and its interval.
        decision_tolerance: the per-label gate on precision and recall at the threshold (absolute;
            at least ``DECISION_MIN_TEXTS`` texts' worth).
        confidence: the AP interval's confidence in (0, 1); None tests the point estimate only.
        n_boot: bootstrap resamples of the interval (at least 10).

    Raises:
        ValueError: ``targets`` does not match ``texts`` and the labels, no label has both classes
            (the gate cannot be evaluated), ``confidence`` outside (0, 1) or ``n_boot`` < 10.
    """

    def __init__(
        self,
        reference: Any,
        texts: Sequence[str],
        targets: np.ndarray,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        decision_tolerance: float = DECISION_TOLERANCE,
        confidence: float | None = GATE_CONFIDENCE,
        n_boot: int = GATE_RESAMPLES,
    ):
        self.meta: ArtifactMeta = reference.meta
        self.labels = list(self.meta.labels)
        self.texts = list(texts)
        self.targets = np.asarray(targets)
        if confidence is not None and not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1) or None, not {confidence}")
        if n_boot < 10:
            raise ValueError(f"n_boot must be >= 10, not {n_boot}")
        if self.targets.shape != (len(self.texts), len(self.labels)):
            raise ValueError(
                f"targets shape {self.targets.shape}, expected ({len(self.texts)}, {len(self.labels)}) "
                f"for labels {self.labels}"
            )
        n = len(self.texts)
        if not any(0 < self.targets[:, j].sum() < n for j in range(len(self.labels))):
            raise ValueError(
                "no label has both positives and negatives among the texts; the AP gate needs them"
            )
        self.tolerance, self.decision_tolerance = tolerance, decision_tolerance
        self.confidence, self.n_boot = confidence, n_boot
        self.ref_probs, self.ref_texts_per_s = timed_scores(reference, self.texts)
        self.ref_ap = per_label_ap(self.ref_probs, self.targets, self.labels)
        # the reference's resampled APs, computed once for every variant's interval
        self.ref_boot = bootstrap_ap(self.ref_probs, self.targets, n_resamples=n_boot) if confidence else None
        logger.info("torch fp32: %.1f texts/s on %d gate texts", self.ref_texts_per_s, n)

    def evaluate(self, name: str, predictor: Any) -> dict[str, Any]:
        """Score the variant on the gate texts, time it, and decide whether it passes.

        Args:
            name: the variant's name (for the log).
            predictor: a ``Predictor`` over the variant, with the model's thresholds and blend.

        Returns:
            ``ap`` and ``ap_delta`` per label (variant minus torch fp32), ``ap_delta_interval``,
            ``decision_delta`` (``decision_deltas``), ``decision_max_abs``, ``decision_passed``,
            ``max_abs_prob_diff``, ``batch_invariance_max_abs``, ``passed`` (all three rules of the
            module doc) and ``texts_per_s`` (this pass, tokenisation included).
        """
        labels, targets = self.labels, self.targets
        probs, tps = timed_scores(predictor, self.texts)
        ap = per_label_ap(probs, targets, labels)
        delta = _deltas(ap, self.ref_ap)
        intervals = (
            ap_delta_interval(
                probs,
                self.ref_probs,
                targets,
                labels,
                confidence=self.confidence,
                n_resamples=self.n_boot,
                ref_boot=self.ref_boot,
            )
            if self.confidence
            else {}
        )
        drift = batch_invariance(predictor, self.texts, probs)
        decisions = decision_deltas(
            probs, self.ref_probs, targets, self.meta.threshold_vector(), labels, self.decision_tolerance
        )
        decision_max = max(
            (abs(d) for row in decisions.values() for m in DECISION_METRICS if (d := row[m]) is not None),
            default=0.0,
        )
        passed = (
            all(d is None or abs(d) <= self.tolerance for d in delta.values())
            and intervals_pass(intervals, self.tolerance)
            and decisions_pass(decisions)
            and drift <= BATCH_INVARIANCE_TOLERANCE
        )
        logger.info(
            "%s: %.1f texts/s, AP deltas %s (%g%% intervals %s), precision/recall at threshold within %.4f, "
            "batch drift %.2g, %s",
            name,
            tps,
            {n: None if d is None else round(d, 5) for n, d in delta.items()},
            100 * (self.confidence or 0),
            {n: None if iv is None else [round(iv[0], 4), round(iv[1], 4)] for n, iv in intervals.items()},
            decision_max,
            drift,
            "passed" if passed else "FAILED the gate",
        )
        return {
            "ap": ap,
            "ap_delta": delta,
            "ap_delta_interval": {
                n: None if iv is None else [round(iv[0], 5), round(iv[1], 5)] for n, iv in intervals.items()
            },
            "decision_delta": decisions,
            "decision_max_abs": decision_max,
            "decision_passed": decisions_pass(decisions),
            "max_abs_prob_diff": float(np.abs(probs - self.ref_probs).max()),
            "batch_invariance_max_abs": drift,
            "passed": passed,
            "texts_per_s": round(tps, 2),
        }

    def record(self) -> dict[str, Any]:
        """The gate's settings as ``adrisk.json`` records them under ``runtimes.gate``."""
        return {
            "metric": "ap",
            "tolerance": self.tolerance,
            "confidence": self.confidence,
            "resamples": self.n_boot if self.confidence else 0,
            "reference": "torch fp32",
            "n_texts": len(self.texts),
            "batch_invariance_tolerance": BATCH_INVARIANCE_TOLERANCE,
            "decision_tolerance": self.decision_tolerance,
        }


def read_labelled_jsonl(
    path: str | os.PathLike[str],
    labels: Sequence[str],
    *,
    text_column: str = "text",
    labels_column: str = "labels",
) -> tuple[list[str], np.ndarray]:
    """Read the gate's labelled texts: a JSONL file of ``{text_column: str, labels_column: [label
    names] | label name}`` rows.

    Returns:
        texts (n,) and targets (n, L) uint8 in ``labels`` order. Label names not in ``labels`` are
        ignored (e.g. a benign class of another schema).

    Raises:
        ValueError: a row is not JSON or lacks the columns (the message names the line, not the text).
    """
    index = {n: j for j, n in enumerate(labels)}
    texts, rows = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, names = row[text_column], row[labels_column]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{lineno}: not a JSON object with {text_column!r} and {labels_column!r} "
                    f"({type(e).__name__})"
                ) from None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: {text_column!r} is not a string")
            if isinstance(names, str):
                names = [names]
            y = np.zeros(len(labels), dtype=np.uint8)
            for n in names or []:
                if n in index:
                    y[index[n]] = 1
            texts.append(text)
            rows.append(y)
    return texts, (np.vstack(rows) if rows else np.zeros((0, len(labels)), dtype=np.uint8))
