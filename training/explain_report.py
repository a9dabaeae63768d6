"""``adrisk evaluate --explain-report DIR``: which words and emoji a model relies on, per label and per
source, over a labelled data set, so a shortcut (site boilerplate, a phone format, a city name) shows
up as a ranked list.

Every row is explained for every label with ``model.explain.Explainer`` (occlusion: one set of
forward passes gives all labels), unit attributions are grouped by their NFKC-folded, lower-cased
original characters (``unit_key``) and ranked by summed attribution (``aggregate_attributions``). Written as ``explain_report.csv`` and
``explain_report.png`` (top tokens per label, all sources); logged to MLflow as a table and a figure
when a run is active.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.explain import Attribution, Explainer
from model.normalize import _VARIATION_SELECTORS, normalize_text
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


def unit_key(text: str, span: Sequence[int]) -> str:
    """A grouping key for a unit: its original characters NFKC-folded, format characters removed,
    lower-cased (emoji stay emoji)."""
    s = unicodedata.normalize("NFKC", text[int(span[0]) : int(span[1])])
    s = "".join(ch for ch in s if unicodedata.category(ch) != "Cf" and ch not in _VARIATION_SELECTORS)
    return s.lower().strip()


def aggregate_attributions(
    texts: Sequence[str],
    attributions: Sequence[Attribution],
    labels: Sequence[str],
    sources: Sequence[str] | None = None,
    top_n: int = 20,
    min_count: int = 3,
):
    """Rank the words/emoji with the largest attributions per label and per source over a data set, so a
    shortcut (site boilerplate, a phone format, a city name) shows up as a ranked list.

    Units are grouped by ``unit_key`` (NFKC, lower-cased original characters). For each (label,
    source) and for each label over all sources (source ``"*"``), keys seen in at least ``min_count``
    texts are ranked by their summed attribution (calibrated-logit units; positive = pushes the label up).

    Args:
        texts: the original texts. attributions: ``Explainer.attribute(texts)`` (all labels, in
            ``labels`` order). labels: the model's label names. sources: one source name per text
            (None: all ``"*"``). top_n: rows per (label, source). min_count: fewest texts a key must occur in.

    Returns:
        A pandas DataFrame with columns ``label, source, rank, token, total, mean, texts``.

    Raises:
        ValueError: lengths disagree.
    """
    import pandas as pd

    if len(texts) != len(attributions) or (sources is not None and len(sources) != len(texts)):
        raise ValueError("texts, attributions and sources must have the same length")
    recs = []
    for i, (t, a) in enumerate(zip(texts, attributions, strict=True)):
        src = "*" if sources is None else str(sources[i])
        for u in a.active:
            key = unit_key(t, a.spans[u])
            if not key:
                continue
            for j, name in enumerate(labels):
                recs.append((name, src, key, i, float(a.scores[u, j])))
    cols = ["label", "source", "rank", "token", "total", "mean", "texts"]
    if not recs:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(recs, columns=["label", "source", "token", "doc", "score"])
    parts = [df] if sources is None else [df, df.assign(source="*")]
    g = (
        pd.concat(parts)
        .groupby(["label", "source", "token"])
        .agg(total=("score", "sum"), mean=("score", "mean"), texts=("doc", "nunique"))
        .reset_index()
    )
    g = g[g["texts"] >= min_count].sort_values(["label", "source", "total"], ascending=[True, True, False])
    g["rank"] = g.groupby(["label", "source"]).cumcount() + 1
    return g[g["rank"] <= top_n][cols].reset_index(drop=True)


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
