"""A window of ads as the monitor sees it: texts, the model's calibrated probabilities, and labels when
the file has them; read from CSV / JSONL / Parquet or from the output of ``adrisk score``.

Bad input is refused with one line (``MonitorError``) before any work: a missing file, no text column,
fewer than ``MIN_ADS`` ads with text, a window spec that selects too few.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from model.messages import describe_columns
from model.pyfunc import SCORE_PREFIX
from training.data import DataError, read_table

logger = logging.getLogger(__name__)

# Fewer ads than this make every drift statistic noise (a 5-fold domain classifier needs both sides in
# every fold; PSI over deciles needs several ads per bin).
MIN_ADS = 50
# Time columns looked for by a duration window (as the link pass looks for them, signals/linking.py).
TIME_COLUMNS = ("posted_at", "timestamp", "created_at", "posted", "date", "time")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class MonitorError(ValueError):
    """A user-facing problem with the monitor's input: printed as one line, exit 1 (never ad text)."""


@dataclass
class Window:
    """Ads in file order.

    Attributes:
        ids: (n,) row ids (the ``id`` column, else the row number in the file).
        texts: (n,) ad texts.
        probs: (n, L) float64 calibrated probabilities, columns in the model's label order.
        labels: (n, L) 0/1 float targets when the file has a labels column, else None.
        sources: (n,) the ``source`` column when present, else None.
        groups: (n,) int64 ids of ads that must stay on one side of a cross-fitting split (ads of one
            poster or template); None: computed by the monitor (``monitor.drift.ad_groups``).
        path: where the window came from (for the report).
        rows_skipped: rows of the file without usable text.
        rescored: the probabilities were computed here (False: taken from ``adrisk score`` columns).
        masked: (n,) contact-masked texts when already computed with ``groups`` (else None).
        embeddings: (n, d) sentence embeddings when already computed (else None: the monitor embeds
            a sample).
    """

    ids: list[str]
    texts: list[str]
    probs: np.ndarray
    labels: np.ndarray | None = None
    sources: list[str] | None = None
    groups: np.ndarray | None = None
    path: str = ""
    rows_skipped: int = 0
    rescored: bool = True
    masked: list[str] | None = None
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: np.ndarray) -> Window:
        """The window restricted to rows ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            ids=[self.ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            probs=self.probs[idx],
            labels=None if self.labels is None else self.labels[idx],
            sources=None if self.sources is None else [self.sources[i] for i in idx],
            groups=None if self.groups is None else self.groups[idx],
            masked=None if self.masked is None else [self.masked[i] for i in idx],
            embeddings=None if self.embeddings is None else self.embeddings[idx],
        )


def read_frame(path: str | Path, what: str) -> pd.DataFrame:
    """Read one CSV / JSONL / Parquet file.

    Raises:
        MonitorError: missing, empty, unknown format or unreadable (``what`` names the flag).
    """
    try:
        return read_table(path)
    except DataError as e:
        raise MonitorError(f"{what}: {e}") from None


def select_window(df: pd.DataFrame, spec: str | None, time_column: str | None = None) -> pd.DataFrame:
    """The rows of ``df`` a window spec selects: ``None`` all, ``N`` the last N rows, ``7d`` / ``24h`` /
    ``90m`` / ``3600s`` / ``2w`` the rows whose time lies within that long of the newest row's time
    (``time_column``, else the first of ``TIME_COLUMNS`` present; unparseable times are left out).

    Raises:
        MonitorError: a bad spec, or a duration without a time column.
    """
    if spec is None or not str(spec).strip():
        return df
    spec = str(spec).strip().lower()
    if spec.isdigit():
        n = int(spec)
        if n < 1:
            raise MonitorError(f"--window {spec}: give a positive number of rows or a duration like 7d")
        return df.iloc[-n:]
    m = _DURATION.match(spec)
    if not m:
        raise MonitorError(
            f"--window {spec!r}: expected a number of rows (10000) or a duration (7d, 24h, 90m)"
        )
    col = time_column or next((c for c in TIME_COLUMNS if c in df.columns), None)
    if not col or col not in df.columns:
        raise MonitorError(
            f"--window {spec} needs a time column ({time_column or ' / '.join(TIME_COLUMNS)}); "
            f"columns found: {describe_columns(df.columns)}"
        )
    t = pd.to_datetime(df[col], utc=True, errors="coerce")
    if t.notna().sum() == 0:
        raise MonitorError(f"--window {spec}: column '{col}' holds no readable time")
    span = pd.Timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    return df[(t >= t.max() - span).to_numpy()]


def _targets(
    df: pd.DataFrame, labels: tuple[str, ...], labels_column: str, label_format: str, where: str
) -> np.ndarray | None:
    """(n, L) 0/1 targets read as ``training.data`` reads them (``label_format``: ``list`` of label
    names, as datasets and feedback exports hold them; ``columns``; ``class``), or None when the
    file has no labels.

    Raises:
        MonitorError: unknown label names (named) or unreadable values.
    """
    present = (
        all(n in df.columns for n in labels) if label_format == "columns" else labels_column in df.columns
    )
    if not present:
        return None
    from model.schema import LabelSchema
    from training.config import DataConfig
    from training.data import targets_from_frame

    cfg = DataConfig(path=where, labels_column=labels_column, label_format=label_format)  # type: ignore[arg-type]
    try:
        return targets_from_frame(df, cfg, LabelSchema(labels=labels), where)
    except DataError as e:
        raise MonitorError(str(e).splitlines()[0]) from None


def model_version_tag(version: str | None, weights_sha256: str | None) -> str:
    """The ``model_version`` value ``adrisk score`` writes for a model (batch/score.py): the registry
    version, else ``local:<weights sha256 prefix>``."""
    if version:
        return str(version)
    return f"local:{weights_sha256[:12]}" if weights_sha256 else "local"


@dataclass
class PreparedWindow:
    """A window read and checked but not scored yet: its rows with text (window spec applied), their
    targets when the file has labels, and the rows skipped for want of text."""

    frame: pd.DataFrame
    targets: np.ndarray | None
    skipped: int
    path: str
    what: str
    text_column: str


def prepare_window(
    path: str | Path,
    labels: tuple[str, ...],
    *,
    what: str = "--current",
    text_column: str = "text",
    labels_column: str = "labels",
    label_format: str = "list",
    window: str | None = None,
    time_column: str | None = None,
    frame: pd.DataFrame | None = None,
) -> PreparedWindow:
    """Read, select and check one window (everything that can fail on bad input, before any scoring).

    Args:
        path: the file (read unless ``frame`` is given).
        labels: the model's labels (to read the targets, if the file has them).
        what: the flag named in error messages.

    Raises:
        MonitorError: see ``read_frame`` and ``select_window``; no text column; fewer than
            ``MIN_ADS`` ads with text; unknown label names.
    """
    df = read_frame(path, what) if frame is None else frame
    if text_column not in df.columns:
        raise MonitorError(
            f"{what} {path}: no text column '{text_column}' (columns found: {describe_columns(df.columns)}; "
            "--text-column names another)"
        )
    df = select_window(df, window, time_column)
    ok = np.fromiter((isinstance(t, str) and bool(t.strip()) for t in df[text_column]), bool, len(df))
    df = df[ok].reset_index(drop=True)
    if len(df) < MIN_ADS:
        sel = f" (window {window})" if window else ""
        raise MonitorError(
            f"{what} {path}{sel}: the monitor needs at least {MIN_ADS} ads with text, found {len(df)}"
        )
    targets = _targets(df, labels, labels_column, label_format, f"{what} {path}")
    return PreparedWindow(df, targets, int((~ok).sum()), str(path), what, text_column)


def score_window(prepared: PreparedWindow, predictor, *, model_version: str) -> Window:
    """Score a prepared window. The probabilities of an ``adrisk score`` output are reused when it was
    scored by this model (``model_version`` equal on every row); otherwise every text is scored.

    Args:
        predictor: a ``model.predictor.Predictor`` (``labels``, ``predict_proba``).
        model_version: what ``adrisk score`` writes in ``model_version`` for this model
            (``model_version_tag``).
    """
    df = prepared.frame
    labels = tuple(predictor.labels)
    texts = df[prepared.text_column].astype(str).tolist()
    cols = [SCORE_PREFIX + n for n in labels]
    probs, rescored = None, True
    if all(c in df.columns for c in cols):
        versions = set(df["model_version"].astype(str)) if "model_version" in df.columns else set()
        scores = df[cols].to_numpy(dtype=np.float64, na_value=np.nan)
        if versions == {model_version} and np.isfinite(scores).all():
            probs, rescored = scores, False
        else:
            logger.info("%s: the file's scores are not this model's; scoring again", prepared.what)
    if probs is None:
        probs = np.asarray(predictor.predict_proba(texts), dtype=np.float64)
    ids = df["id"].astype(str).tolist() if "id" in df.columns else [str(i) for i in range(len(df))]
    return Window(
        ids=ids,
        texts=texts,
        probs=probs,
        labels=prepared.targets,
        sources=df["source"].astype(str).tolist() if "source" in df.columns else None,
        path=prepared.path,
        rows_skipped=prepared.skipped,
        rescored=rescored,
    )
