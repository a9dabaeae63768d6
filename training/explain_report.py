"""``adrisk evaluate --explain-report DIR``: which words and emoji a model relies on, per label and per
source, over a labelled data set, so a shortcut (site boilerplate, a phone format, a city name) shows
up as a ranked list.

Every row is explained for every label with ``model.explain.Explainer`` (occlusion: one set of
forward passes gives all labels), unit attributions are grouped by their NFKC-folded, lower-cased
original characters (``model.explain.unit_key``) and ranked by summed attribution
(``model.explain.aggregate_attributions``). Written as ``explain_report.csv`` and
``explain_report.png`` (top tokens per label, all sources); logged to MLflow as a table and a figure
when a run is active.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.explain import Explainer, aggregate_attributions
from model.normalize import normalize_text
from model.predictor import Predictor
from training.config import DataConfig
from training.data import prepare_frame, read_table

logger = logging.getLogger(__name__)

TABLE_FILE = "explain_report.csv"
PLOT_FILE = "explain_report.png"


@dataclass
class ExplainReport:
    """The ranked table (columns ``label, source, rank, token, total, mean, texts``) and the files written."""

    table: pd.DataFrame
    table_path: Path
    plot_path: Path
    rows: int


def explain_report(
    predictor: Predictor,
    data: DataConfig,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    top_n: int = 20,
    min_count: int = 5,
    seed: int = 0,
) -> ExplainReport:
    """Explain ``data.path`` and write the ranked table and plot into ``out_dir``.

    Args:
        predictor: the model. data: the labelled file (text and source columns as in ``adrisk evaluate``).
        out_dir: directory for ``explain_report.csv`` / ``.png`` (created).
        limit: explain a seeded random sample of this many rows (None: all; its cost per text:
            docs/explanations.md).
        top_n: rows per (label, source). min_count: fewest texts a token must occur in to rank.

    Raises:
        training.data.DataError: as ``adrisk evaluate``. ValueError: ``limit`` < 1.
    """
    if limit is not None and limit < 1:
        raise ValueError("--explain-limit must be at least 1")
    frame, _ = prepare_frame(read_table(data.path), data, predictor.meta.label_schema, data.path)
    if limit is not None and limit < len(frame):
        frame = frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), limit, replace=False))]
    texts = frame["text"].tolist()
    sources = frame["source"].astype(str).tolist() if "source" in frame else None
    attrs = Explainer(predictor).attribute(texts)
    table = aggregate_attributions(texts, attrs, predictor.labels, sources, top_n=top_n, min_count=min_count)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / TABLE_FILE
    table.to_csv(table_path, index=False)
    plot_path = plot_top_tokens(table, predictor.labels, out / PLOT_FILE)
    try:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_table(table, artifact_file="explain_report.json")
            mlflow.log_artifact(str(plot_path))
    except Exception as e:  # logging is a bonus; the files are written
        logger.warning("explain report not logged to MLflow: %s", type(e).__name__)
    return ExplainReport(table, table_path, plot_path, len(texts))


def plot_top_tokens(table: pd.DataFrame, labels, path: Path, n: int = 15) -> Path:
    """One horizontal bar panel per label: the top ``n`` tokens over all sources by summed attribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 0.28 * n + 1.5), squeeze=False)
    for j, label in enumerate(labels):
        ax = axes[0, j]
        rows = table[(table["label"] == label) & (table["source"] == "*")].head(n)
        ax.barh(range(len(rows))[::-1], rows["total"].to_numpy(), color="tab:red")
        # emoji have no glyph in matplotlib's default font: show their names
        names = [str(t) if str(t).isascii() else normalize_text(str(t)) for t in rows["token"]]
        ax.set_yticks(range(len(rows))[::-1], [t[:24] for t in names])
        ax.set(title=label, xlabel="summed attribution (calibrated logit)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def format_top(table: pd.DataFrame, labels, n: int = 8) -> str:
    """A short text summary: the top ``n`` tokens per label over all sources."""
    lines = []
    for label in labels:
        rows = table[(table["label"] == label) & (table["source"] == "*")].head(n)
        lines.append(
            f"{label}: "
            + ", ".join(f"{t} ({v:+.1f})" for t, v in zip(rows["token"], rows["total"], strict=True))
        )
    return "\n".join(lines)
