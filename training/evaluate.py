"""``adrisk evaluate``: metrics of a trained model on a labelled file, as a table and a JSON report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.predictor import Predictor
from model.uri import ModelRef
from training.config import DataConfig
from training.data import prepare_frame, read_table
from training.metrics import evaluate_scores, format_table


@dataclass
class Evaluation:
    """``metrics`` keys are ``{split}.{label}.{metric}`` and ``{split}.source.{source}.{label}.{metric}``
    (undefined metrics are NaN); ``table`` is the printed table; ``report`` the JSON-ready report."""

    metrics: dict[str, float]
    table: str
    report: dict = field(default_factory=dict)


def evaluate_model(predictor: Predictor, ref: ModelRef, data: DataConfig, split: str = "eval") -> Evaluation:
    """Score ``data.path`` with ``predictor`` at the model's own thresholds and compute every metric
    per label and per source slice (see ``training.metrics.evaluate_scores``).

    Raises:
        training.data.DataError: unreadable file, missing text/label columns, unknown labels (rows named,
            text never shown).
    """
    frame, y = prepare_frame(read_table(data.path), data, predictor.meta.label_schema, data.path)
    probs = predictor.predict_proba(frame["text"].tolist())
    sources = frame["source"].tolist() if "source" in frame else None
    metrics = evaluate_scores(probs, y, predictor.labels, predictor.meta.threshold_vector(), split, sources)
    report = {"model": {"uri": ref.uri, "name": ref.name, "version": ref.version}, "data": data.path,
              "rows": int(len(y)), "metrics": {k: (None if np.isnan(v) else v) for k, v in metrics.items()}}
    return Evaluation(metrics, format_table(metrics, predictor.labels, split), report)
