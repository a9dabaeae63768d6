"""Extra evaluation sets (``eval_sets`` in the training config): labelled files scored by every
training run and by ``adrisk evaluate``, logged under ``eval.<name>.*``, never trained or tuned on.

An entry may restrict the labels it is scored on (``labels``: a set that only labels
``adult_services`` says nothing about ``scam``) and may borrow negatives from the run's test split
(``negatives_from_test``: test rows negative for every one of those labels are appended, so AP is
measured against realistic negatives, as the cross-site-v1 README asks: "AP against risky-ads-v1's
non-adult test rows as negatives"). Besides the metrics of ``training.metrics.evaluate_scores`` each
set gets ``flagged_negatives`` (share of negatives at or above the threshold), overall and per
source: with ``negatives_from_test`` that is, e.g., the share of test Craigslist rows flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from model.schema import LabelSchema
from training.config import DataConfig
from training.data import DataError, Split, fingerprint, prepare_frame, read_table
from training.metrics import evaluate_scores

PREFIX = "eval."


@dataclass
class EvalSet:
    """A loaded extra set: ``split`` (all labels' targets), the label indices it is scored on."""

    name: str
    split: Split
    label_index: list[int]
    borrowed_negatives: int = 0


def load_eval_set(name: str, entry, schema: LabelSchema, test: Split | None = None) -> EvalSet:
    """Read and validate one ``eval_sets`` entry.

    Args:
        entry: an ``EvalSetConfig`` (path, column options, labels, negatives_from_test).
        test: the run's test split (needed when ``entry.negatives_from_test``).

    Raises:
        DataError: unreadable file, bad columns/labels (see ``prepare_frame``), unknown label
            names in ``labels``, or ``negatives_from_test`` without a test split.
    """
    cols = DataConfig(
        path=entry.path,
        text_column=entry.text_column,
        label_format=entry.label_format,
        labels_column=entry.labels_column,
        source_column=entry.source_column,
        id_column=entry.id_column,
        group_column=None,
    )
    frame, _ = prepare_frame(read_table(entry.path), cols, schema, f"eval_sets.{name} ({entry.path})")
    wanted = list(entry.labels) if entry.labels else list(schema.labels)
    unknown = sorted(set(wanted) - set(schema.labels))
    if unknown:
        raise DataError(
            f"eval_sets.{name}.labels: {unknown} are not labels of the model {list(schema.labels)}"
        )
    idx = [schema.labels.index(n) for n in wanted]
    borrowed = 0
    if entry.negatives_from_test:
        if test is None:
            raise DataError(f"eval_sets.{name}: negatives_from_test needs the test split")
        neg = test.frame[test.targets[:, idx].sum(axis=1) == 0]
        borrowed = len(neg)
        keep = (
            ["text"]
            + [c for c in ("source", "id") if c in frame and c in neg]
            + [f"y.{n}" for n in schema.labels]
        )
        frame = pd.concat([frame, neg[keep]], ignore_index=True)
    y = frame[[f"y.{n}" for n in schema.labels]].to_numpy(dtype=np.float32)
    split = Split(name, frame.reset_index(drop=True), y, fingerprint(frame, schema.labels), entry.path)
    return EvalSet(name, split, idx, borrowed)


def flagged_negatives(
    probs: np.ndarray, targets: np.ndarray, labels, thresholds, key: str, sources=None
) -> dict[str, float]:
    """Share of negative rows at or above each label's threshold: ``{key}.{label}.flagged_negatives``
    and, with ``sources``, ``{key}.source.{s}.{label}.flagged_negatives`` (slices with negatives only).

    Args:
        probs, targets: (n, L). thresholds: (L,).
    """
    out: dict[str, float] = {}
    src = np.asarray(sources, dtype=object) if sources is not None else None
    for j, name in enumerate(labels):
        neg = targets[:, j] == 0
        if neg.any():
            out[f"{key}.{name}.flagged_negatives"] = float((probs[neg, j] >= thresholds[j]).mean())
        if src is not None:
            for s in sorted(set(src.tolist())):
                m = neg & (src == s)
                if m.any():
                    out[f"{key}.source.{s}.{name}.flagged_negatives"] = float(
                        (probs[m, j] >= thresholds[j]).mean()
                    )
    return out


def evaluate_eval_set(
    es: EvalSet, probs: np.ndarray, labels, thresholds, prefix: str = PREFIX
) -> dict[str, float]:
    """Metrics of one extra set: ``{prefix}{name}.{label}.{metric}`` (+ per source), restricted to
    the set's labels, plus ``flagged_negatives``.

    Args:
        probs: (n, L) the model's calibrated probabilities on ``es.split`` rows, all labels.
        thresholds: (L,) the model's own thresholds.
    """
    idx = es.label_index
    p = np.asarray(probs)[:, idx]
    y = es.split.targets[:, idx]
    names = [labels[i] for i in idx]
    thr = [thresholds[i] for i in idx]
    out = evaluate_scores(p, y, names, thr, es.name, es.split.sources, prefix=prefix)
    out |= flagged_negatives(p, y, names, thr, f"{prefix}{es.name}", es.split.sources)
    out[f"{prefix}{es.name}.borrowed_test_negatives"] = float(es.borrowed_negatives)
    return out


def format_eval_sets(metrics: dict[str, float], names, labels, prefix: str = PREFIX) -> str:
    """One line per (set, label): n, positives, AP, recall at threshold, negatives flagged."""
    lines = [
        f"{'eval set':<16} {'label':<24} {'n':>6} {'pos':>5} {'AP':>6} {'recall':>6} {'neg flagged':>11}"
    ]
    for s in names:
        for lab in labels:
            k = f"{prefix}{s}.{lab}."
            if f"{k}n" not in metrics:
                continue

            def f(m: str, k: str = k) -> str:
                return "     -" if metrics.get(k + m) is None else f"{metrics[k + m]:6.3f}"

            lines.append(
                f"{s:<16} {lab:<24} {int(metrics[k + 'n']):>6} {int(metrics[k + 'support']):>5} {f('ap')} "
                f"{f('recall')} {f('flagged_negatives'):>11}"
            )
    return "\n".join(lines)
