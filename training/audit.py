"""The shortcut audit: does a label follow the ad, or the site it came from?

Printed and logged by every training run and by ``adrisk evaluate`` (metric prefix ``audit.``, the
table as the artifact ``audit_table.txt``). Three parts, per label:

1. **one-feature models** (Geirhos et al. 2020, "Shortcut learning in deep neural networks", call
   such a feature a shortcut): the AP on the evaluated split of a model that sees only the row's
   ``source``, and one that sees only its text length (10 quantile bins). Each is a lookup table of
   positive rates fitted on the training split (unseen source or empty bin: the overall rate).
2. **source-confounded**: a label whose source-only AP reaches ``SOURCE_CONFOUNDED_AP`` (0.95). For a
   user this means the data cannot separate the label from where the ads were posted: a high AP
   may measure the site, and the model may miss the same kind of ad written elsewhere.
3. **style-stripped views** (``training/views.py``): the model's AP, recall at its own threshold
   and share of negatives flagged on views of the evaluated rows (positives and negatives both
   transformed). A drop from the unchanged text says the model leans on style.

Metric keys: ``audit.<label>.source_only_ap``, ``audit.<label>.length_only_ap``,
``audit.<label>.source_confounded`` (0/1), ``audit.view.<view>.<label>.{ap,recall,flagged_negatives}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score

from training.views import VIEWS, apply_view

SOURCE_CONFOUNDED_AP = 0.95
LENGTH_BINS = 10
AUDIT_VIEWS = tuple(VIEWS)

CONFOUNDED_MEANING = (
    "source-confounded: the source column alone predicts {labels} (AP >= {floor:.2f}), so this data cannot "
    "tell the label from the site the ads came from. A high AP for it may measure the site, not the ad; "
    "expect misses on ads of that kind written elsewhere. Read its rows in the style-stripped view table and test "
    "on your own platform's ads before relying on it."
)


def _ap(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(average_precision_score(y, score))


def one_feature_scores(train_feature: Sequence, train_y: np.ndarray, eval_feature: Sequence) -> np.ndarray:
    """Scores of a one-feature lookup model: the positive rate of each feature value on train.

    Args:
        train_feature / eval_feature: (n,) / (m,) hashable values (a source name, a length bin).
        train_y: (n,) 0/1.

    Returns:
        (m,) float64: the train positive rate of each eval row's value; values unseen in train get
        the overall train rate.

    Raises:
        ValueError: ``train_feature`` and ``train_y`` differ in length, or train is empty.
    """
    y = np.asarray(train_y, dtype=np.float64)
    if len(train_feature) != len(y):
        raise ValueError(f"train_feature has {len(train_feature)} rows, train_y {len(y)}")
    if len(y) == 0:
        raise ValueError("empty training data")
    sums: dict = {}
    counts: dict = {}
    for v, t in zip(train_feature, y.tolist(), strict=True):
        sums[v] = sums.get(v, 0.0) + t
        counts[v] = counts.get(v, 0) + 1
    overall = float(y.mean())
    return np.array([sums[v] / counts[v] if v in counts else overall for v in eval_feature], dtype=np.float64)


def length_bins(
    train_lengths: Sequence[int], eval_lengths: Sequence[int], n_bins: int = LENGTH_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Quantile bins of text length (edges from train): (train bin ids, eval bin ids), int64."""
    tr = np.asarray(train_lengths, dtype=np.float64)
    edges = np.unique(np.quantile(tr, np.linspace(0, 1, n_bins + 1)[1:-1])) if tr.size else np.array([])
    return np.digitize(tr, edges), np.digitize(np.asarray(eval_lengths, dtype=np.float64), edges)


def source_only_ap(
    train_sources: Sequence[str], train_y: np.ndarray, eval_sources: Sequence[str], eval_y: np.ndarray
) -> float:
    """AP on the eval rows of the source-only lookup model (NaN when eval has one class)."""
    return _ap(eval_y, one_feature_scores(list(train_sources), train_y, list(eval_sources)))


def length_only_ap(
    train_texts: Sequence[str], train_y: np.ndarray, eval_texts: Sequence[str], eval_y: np.ndarray
) -> float:
    """AP on the eval rows of the length-only lookup model (10 quantile bins of character length)."""
    tb, eb = length_bins([len(t) for t in train_texts], [len(t) for t in eval_texts])
    return _ap(eval_y, one_feature_scores(tb.tolist(), train_y, eb.tolist()))


def view_metrics(
    score: Callable[[list[str]], np.ndarray],
    texts: Sequence[str],
    targets: np.ndarray,
    labels: Sequence[str],
    thresholds: Sequence[float],
    views: Sequence[str] = AUDIT_VIEWS,
    base_probs: np.ndarray | None = None,
) -> dict[str, float]:
    """The model on style-stripped views of ``texts``.

    Args:
        score: texts -> (n, L) probabilities (the model's calibrated scores).
        targets: (n, L) 0/1. thresholds: (L,) the model's own decision thresholds.
        base_probs: (n, L) scores of the unchanged texts; when given, rows whose view equals the
            text are not scored again (most Craigslist, SMS and job rows are their own ``title``).

    Returns:
        ``view.<view>.<label>.ap`` / ``.recall`` (positives at or above the threshold) /
        ``.flagged_negatives`` (share of negatives at or above it); undefined ones are omitted.
    """
    y = np.asarray(targets)
    out: dict[str, float] = {}
    for v in views:
        vt = apply_view(v, list(texts))
        if base_probs is None:
            p = np.asarray(score(vt))
        else:
            p = np.array(base_probs, dtype=np.float64, copy=True)
            changed = [i for i, (a, b) in enumerate(zip(vt, texts, strict=True)) if a != b]
            if changed:
                p[changed] = np.asarray(score([vt[i] for i in changed]))
        for j, name in enumerate(labels):
            pos, neg = y[:, j] == 1, y[:, j] == 0
            ap = _ap(y[:, j], p[:, j])
            if not math.isnan(ap):
                out[f"view.{v}.{name}.ap"] = ap
            if pos.any():
                out[f"view.{v}.{name}.recall"] = float((p[pos, j] >= thresholds[j]).mean())
            if neg.any():
                out[f"view.{v}.{name}.flagged_negatives"] = float((p[neg, j] >= thresholds[j]).mean())
    return out


@dataclass
class AuditResult:
    """Audit numbers (keys without the ``audit.`` prefix), confounded labels, and the printed table."""

    metrics: dict[str, float]
    confounded: list[str]
    table: str = ""
    notes: list[str] = field(default_factory=list)

    def prefixed(self, prefix: str = "audit.") -> dict[str, float]:
        """Metrics with ``prefix`` (for MLflow)."""
        return {f"{prefix}{k}": v for k, v in self.metrics.items()}


def run_audit(
    labels: Sequence[str],
    train_texts: Sequence[str],
    train_y: np.ndarray,
    train_sources: Sequence[str] | None,
    eval_texts: Sequence[str],
    eval_y: np.ndarray,
    eval_sources: Sequence[str] | None,
    score: Callable[[list[str]], np.ndarray] | None = None,
    thresholds: Sequence[float] | None = None,
    views: Sequence[str] = AUDIT_VIEWS,
    eval_probs: np.ndarray | None = None,
) -> AuditResult:
    """The whole audit for one evaluated split (see module docstring).

    Args:
        train_*: the training split (one-feature models are fitted there); sources may be None
            (no source column: the source part is skipped).
        eval_*: the evaluated split (usually test). ``eval_y``/``train_y``: (n, L) 0/1.
        score, thresholds: the model (texts -> (n, L) probabilities) and its thresholds; without
            them only the one-feature part runs.
        eval_probs: the model's (n, L) probabilities on the unchanged eval texts, for the table's
            "unchanged" column (optional).

    Raises:
        ValueError: row counts that disagree.
    """
    ty, ey = np.asarray(train_y), np.asarray(eval_y)
    if len(train_texts) != len(ty) or len(eval_texts) != len(ey):
        raise ValueError("texts and targets differ in length")
    m: dict[str, float] = {}
    confounded: list[str] = []
    for j, name in enumerate(labels):
        if train_sources is not None and eval_sources is not None:
            ap = source_only_ap(train_sources, ty[:, j], eval_sources, ey[:, j])
            if not math.isnan(ap):
                m[f"{name}.source_only_ap"] = ap
                m[f"{name}.source_confounded"] = float(ap >= SOURCE_CONFOUNDED_AP)
                if ap >= SOURCE_CONFOUNDED_AP:
                    confounded.append(name)
        ap = length_only_ap(train_texts, ty[:, j], eval_texts, ey[:, j])
        if not math.isnan(ap):
            m[f"{name}.length_only_ap"] = ap
        if eval_probs is not None:
            ap = _ap(ey[:, j], np.asarray(eval_probs)[:, j])
            if not math.isnan(ap):
                m[f"view.unchanged.{name}.ap"] = ap
            if thresholds is not None:
                pos, neg = ey[:, j] == 1, ey[:, j] == 0
                if pos.any():
                    m[f"view.unchanged.{name}.recall"] = float(
                        (np.asarray(eval_probs)[pos, j] >= thresholds[j]).mean()
                    )
                if neg.any():
                    m[f"view.unchanged.{name}.flagged_negatives"] = float(
                        (np.asarray(eval_probs)[neg, j] >= thresholds[j]).mean()
                    )
    if score is not None and thresholds is not None:
        m |= view_metrics(score, eval_texts, ey, labels, thresholds, views, base_probs=eval_probs)
    notes = (
        [CONFOUNDED_MEANING.format(labels=", ".join(confounded), floor=SOURCE_CONFOUNDED_AP)]
        if confounded
        else []
    )
    res = AuditResult(m, confounded, notes=notes)
    res.table = format_audit_table(
        res, labels, (["unchanged"] if eval_probs is not None else []) + list(views if score else [])
    )
    return res


def _fmt(v: float | None) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.3f}"


def format_audit_table(res: AuditResult, labels: Sequence[str], views: Sequence[str]) -> str:
    """Plain-text table: a row per label (one-feature APs, confounded flag), then a row per
    (view, label) with AP / recall at threshold / negatives flagged; then the notes."""
    m = res.metrics
    lines = [
        "shortcut audit: one-feature models (AP on the evaluated split)",
        f"{'label':<24} {'source':>6} {'length':>6}  flag",
    ]
    for name in labels:
        flag = "SOURCE-CONFOUNDED" if name in res.confounded else ""
        lines.append(
            f"{name:<24} {_fmt(m.get(f'{name}.source_only_ap')):>6} {_fmt(m.get(f'{name}.length_only_ap')):>6}  {flag}"
        )
    if views:
        lines += [
            "",
            "the model on style-stripped views (threshold: the model's own)",
            f"{'view':<10} {'label':<24} {'AP':>6} {'recall':>6} {'neg flagged':>11}",
        ]
        for v in views:
            for name in labels:
                k = f"view.{v}.{name}"
                if any(key.startswith(k + ".") for key in m):
                    lines.append(
                        f"{v:<10} {name:<24} {_fmt(m.get(k + '.ap')):>6} {_fmt(m.get(k + '.recall')):>6} "
                        f"{_fmt(m.get(k + '.flagged_negatives')):>11}"
                    )
    lines += [""] + res.notes if res.notes else []
    return "\n".join(lines)
