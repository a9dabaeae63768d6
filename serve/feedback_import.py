"""``adrisk feedback import``: moderators' offline answers (e.g. a filled-in review queue) into the
feedback store, through ``FeedbackStore.add``, the path ``POST /v1/feedback`` takes.

Idempotent: a decision already recorded is not recorded again, so importing the same file twice
changes nothing. A row is the same decision as a stored one when text (normalised), labels and
reviewer match and either both give the same ``reviewed_at`` or the file gives none and the stored
decision is that reviewer's latest for that text (a moderator who changes their mind and back is
recorded; another reviewer's decision in between changes nothing).

Rows: ``text``, ``labels`` (a list, a JSON list, or names separated by ``,`` / ``;`` / ``|``; ``[]``
= benign), ``reviewer`` (or ``--reviewer``), optional ``reviewed_at`` (ISO 8601). A row whose
``labels`` is missing (null, or a CSV's empty field) is unanswered and skipped; rows with
unknown labels, no text or no reviewer are refused with their row numbers, never their text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from serve.feedback_store import FeedbackRow, FeedbackStore, text_digest


class FeedbackImportError(ValueError):
    """The file cannot be imported (unreadable, unknown format, no text column)."""


@dataclass
class ImportReport:
    """Counts of one import; ``refused`` maps a reason to row numbers (1-based, as in the file)."""

    rows: int = 0
    recorded: int = 0
    already_recorded: int = 0
    unanswered: int = 0
    refused: dict[str, list[int]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line of counts (row numbers for refusals, never text)."""
        line = (
            f"{self.rows} rows: {self.recorded} recorded, {self.already_recorded} already recorded, "
            f"{self.unanswered} unanswered (no labels)"
        )
        for why, rows in self.refused.items():
            shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
            line += f"; {len(rows)} refused ({why}: rows {shown})"
        return line


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def parse_labels(value) -> list[str] | None:
    """Label names of one answer; ``None`` when the row is unanswered.

    Accepts a list/array of names, a JSON list string, or names separated by ``,`` ``;`` ``|``
    (``""`` and ``[]`` are a benign answer).

    Raises:
        ValueError: a value of another type, or a list holding a non-string.
    """
    if _missing(value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            value = json.loads(s)
        else:
            return sorted({p.strip() for p in re.split(r"[,;|]", s) if p.strip()})
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return sorted({x.strip() for x in value if x.strip()})
    raise ValueError("labels must be a list of names or a string of names")


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FeedbackImportError(f"file not found: {path}")
    try:
        if suffix in (".jsonl", ".ndjson"):
            return (
                pd.read_json(path, lines=True, dtype=False, convert_dates=False)
                if path.stat().st_size
                else pd.DataFrame()
            )
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError) as e:
        raise FeedbackImportError(f"{path}: cannot be read ({type(e).__name__})") from None
    raise FeedbackImportError(f"{path}: unknown format (use .jsonl, .csv or .parquet)")


def _utc(t: datetime) -> datetime:
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)


def _already(session: Session, sha: str, labels: list[str], reviewer: str, at: datetime | None) -> bool:
    rows = (
        session.execute(
            select(FeedbackRow)
            .where(FeedbackRow.text_sha256 == sha)
            .order_by(FeedbackRow.reviewed_at, FeedbackRow.id)
        )
        .scalars()
        .all()
    )
    mine = [r for r in rows if r.reviewer == reviewer]  # each reviewer's decisions stand apart
    if not mine:
        return False
    if at is not None:
        return any(sorted(r.labels) == labels and _utc(r.reviewed_at) == _utc(at) for r in mine)
    return sorted(mine[-1].labels) == labels


def import_feedback(
    store: FeedbackStore,
    path: str | Path,
    known_labels: list[str] | None = None,
    reviewer: str | None = None,
    text_column: str = "text",
) -> ImportReport:
    """Record the answered rows of ``path`` in ``store`` (see the module docstring).

    Args:
        known_labels: when given, rows naming any other label are refused.
        reviewer: used for rows without a ``reviewer`` value.

    Raises:
        FeedbackImportError: unreadable file, unknown format, no ``text_column``.
    """
    path = Path(path)
    df = _read(path)
    report = ImportReport(rows=len(df))
    if not len(df):
        return report
    if text_column not in df.columns:
        raise FeedbackImportError(f"{path}: no column {text_column!r}")
    if "labels" not in df.columns:
        raise FeedbackImportError(f"{path}: no column 'labels' (the moderators' answers)")
    known = set(known_labels) if known_labels else None

    def refuse(why: str, n: int) -> None:
        report.refused.setdefault(why, []).append(n)

    for i, rec in enumerate(df.to_dict(orient="records"), start=1):
        try:
            labels = parse_labels(rec.get("labels"))
        except (ValueError, json.JSONDecodeError):
            refuse("unreadable labels", i)
            continue
        if labels is None:
            report.unanswered += 1
            continue
        text = rec.get(text_column)
        if not isinstance(text, str) or not text.strip():
            refuse("no text", i)
            continue
        if known is not None and set(labels) - known:
            refuse(f"labels outside {sorted(known)}", i)
            continue
        who = rec.get("reviewer")
        who = who if isinstance(who, str) and who.strip() else reviewer
        if not who:
            refuse("no reviewer (give a reviewer column or --reviewer)", i)
            continue
        at = rec.get("reviewed_at")
        try:
            when = None if _missing(at) or at == "" else pd.Timestamp(at).to_pydatetime()
        except (ValueError, TypeError):
            refuse("unreadable reviewed_at", i)
            continue
        with Session(store.engine) as s:
            if _already(s, text_digest(text), labels, who, when):
                report.already_recorded += 1
                continue
        store.add(text, labels, who, reviewed_at=when)
        report.recorded += 1
    return report
