"""Moderator feedback store (SQLAlchemy): the server records decisions, ``adrisk feedback export``
turns them into training rows in the dataset schema.

SQLite by default (``sqlite:///feedback.db``); any SQLAlchemy URL (``postgresql+psycopg://...``)
via ``ADRISK_FEEDBACK_URL`` or ``--db``. Ad text is stored because it is training data; it is never
logged.

Which decision counts is decided by the server, never by a client's clock: one reviewer's later
decision on a text (later in the order the server received them) replaces their earlier one, and
reviewers who disagree are settled by a weighted vote per label; a tie is a conflict, held back from
the export and counted (docs/policy.md, "Feedback you can trust").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from model.normalize import normalize_text

logger = logging.getLogger(__name__)

DEFAULT_FEEDBACK_URL = "sqlite:///feedback.db"
FEEDBACK_SOURCE = "feedback"


class Base(DeclarativeBase):
    pass


class FeedbackRow(Base):
    """One moderator decision on one ad."""

    __tablename__ = "adrisk_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64), index=True)
    labels: Mapped[list] = mapped_column(JSON)
    reviewer: Mapped[str] = mapped_column(String(200))
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    classification_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(50), nullable=True)
    # added with scoped keys: the API key that sent the decision, its tenant, and the labels the serving
    # model gave the text (for per-reviewer disagreement); NULL in rows written before
    key_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    tenant: Mapped[str | None] = mapped_column(String(100), nullable=True)
    model_labels: Mapped[list | None] = mapped_column(JSON, nullable=True)


_ADDED_COLUMNS = {"key_id": "VARCHAR(100)", "tenant": "VARCHAR(100)", "model_labels": "JSON"}


def text_digest(text: str) -> str:
    """sha256 of the normalised text (groups duplicates; safe to log)."""
    return hashlib.sha256(normalize_text(text).encode("utf-8", "surrogatepass")).hexdigest()


def as_utc(when: datetime) -> datetime:
    """``when`` as an aware UTC datetime; a naive one is taken as UTC (SQLite returns stored UTC
    times without their zone)."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


@dataclass
class ReviewerStats:
    """One reviewer's decisions in an export (their latest per text).

    Attributes:
        decisions: texts this reviewer decided.
        with_model: of those, decisions whose text the serving model also labelled (recorded at the time).
        vs_model: of ``with_model``, the share whose label set differs from the model's.
        pairs: (this reviewer, other reviewer) pairs on a shared text.
        vs_others: of ``pairs``, the share whose label sets differ.
        weight: the reviewer's vote weight in this export (0 = excluded).
    """

    decisions: int = 0
    with_model: int = 0
    model_disagreements: int = 0
    pairs: int = 0
    pair_disagreements: int = 0
    weight: float = 1.0

    @property
    def vs_model(self) -> float | None:
        return self.model_disagreements / self.with_model if self.with_model else None

    @property
    def vs_others(self) -> float | None:
        return self.pair_disagreements / self.pairs if self.pairs else None

    def to_dict(self) -> dict:
        return {
            "decisions": self.decisions,
            "weight": self.weight,
            "with_model": self.with_model,
            "disagreement_with_model": self.vs_model,
            "pairs_with_other_reviewers": self.pairs,
            "disagreement_with_other_reviewers": self.vs_others,
        }


@dataclass
class ExportReport:
    """What ``FeedbackStore.export`` wrote: ``rows`` training rows, ``conflicts`` texts held back
    because weighted reviewers tied on a label, ``excluded`` texts whose every reviewer weighs 0, and
    per-reviewer ``reviewers`` statistics."""

    rows: int = 0
    conflicts: int = 0
    excluded: int = 0
    reviewers: dict[str, ReviewerStats] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "conflicts": self.conflicts,
            "excluded": self.excluded,
            "reviewers": {r: s.to_dict() for r, s in sorted(self.reviewers.items())},
        }


def weighted_labels(decisions: list[tuple[float, list[str]]]) -> list[str] | None:
    """The labels a weighted vote gives: label ``l`` is on when the weights of reviewers who chose it
    exceed half the total weight. ``decisions``: ``(weight, labels)`` per reviewer.

    Returns:
        Sorted labels, or None for a conflict (some label's votes are exactly half the total).

    Raises:
        ValueError: the total weight is 0 (nobody to decide).
    """
    total = sum(w for w, _ in decisions)
    if total <= 0:
        raise ValueError("no reviewer with a positive weight")
    votes: dict[str, float] = defaultdict(float)
    for w, labels in decisions:
        for lab in set(labels):
            votes[lab] += w
    if any(abs(2 * v - total) <= 1e-9 * total for v in votes.values()):
        return None
    return sorted(lab for lab, v in votes.items() if 2 * v > total)


class FeedbackStore:
    """Append-only store of moderator decisions.

    Args:
        url: SQLAlchemy database URL (default: ``ADRISK_FEEDBACK_URL`` or ``sqlite:///feedback.db``).
        must_exist: refuse a SQLite file that is not there (an export from a mistyped path must not
            silently create an empty store).
    """

    def __init__(self, url: str | None = None, must_exist: bool = False):
        self.url = url or os.environ.get("ADRISK_FEEDBACK_URL") or DEFAULT_FEEDBACK_URL
        if must_exist and self.url.startswith("sqlite:///"):
            path = Path(self.url[len("sqlite:///") :].split("?", 1)[0])
            if not path.is_file():
                raise FileNotFoundError(f"feedback store {path} does not exist")
        self.engine = create_engine(self.url, future=True)
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a store was created (nullable; old rows read as NULL)."""
        have = {c["name"] for c in inspect(self.engine).get_columns(FeedbackRow.__tablename__)}
        missing = [(n, t) for n, t in _ADDED_COLUMNS.items() if n not in have]
        if missing:
            with self.engine.begin() as conn:
                for name, sql_type in missing:
                    conn.execute(
                        text(f"ALTER TABLE {FeedbackRow.__tablename__} ADD COLUMN {name} {sql_type}")
                    )

    def add(
        self,
        text: str,
        labels: list[str],
        reviewer: str,
        reviewed_at: datetime | None = None,
        classification_id: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        *,
        key_id: str | None = None,
        tenant: str | None = None,
        model_labels: list[str] | None = None,
    ) -> int:
        """Record one decision; returns its id. ``labels`` must already be validated by the caller;
        ``reviewed_at`` is stored in UTC (a naive time is taken as UTC)."""
        now = datetime.now(timezone.utc)
        row = FeedbackRow(
            text=text,
            text_sha256=text_digest(text),
            labels=list(labels),
            reviewer=reviewer,
            reviewed_at=as_utc(reviewed_at) if reviewed_at is not None else now,
            created_at=now,
            classification_id=classification_id,
            model_name=model_name,
            model_version=model_version,
            key_id=key_id,
            tenant=tenant,
            model_labels=sorted(model_labels) if model_labels is not None else None,
        )
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            return int(row.id)

    def count(self) -> int:
        with Session(self.engine) as s:
            return len(s.execute(select(FeedbackRow.id)).all())

    def export(
        self,
        path: str | os.PathLike[str],
        since: datetime | None = None,
        reviewer_weights: dict[str, float] | None = None,
    ) -> int:
        """``export_report(...)``'s rows written (see there)."""
        return self.export_report(path, since, reviewer_weights).rows

    def export_report(
        self,
        path: str | os.PathLike[str],
        since: datetime | None = None,
        reviewer_weights: dict[str, float] | None = None,
    ) -> ExportReport:
        """Write feedback as JSONL training rows (``id, text, labels, source, group, reviewers,
        reviewed_at``), one per normalised text, ordered by review time.

        Per text, each reviewer's latest decision in arrival order counts (never the client-claimed
        ``reviewed_at``); reviewers are settled by ``weighted_labels`` with ``reviewer_weights``
        (default 1 each; 0 excludes a reviewer). Ties are held back as conflicts. Times are written in
        ISO 8601 with their UTC offset. Written atomically.

        Returns:
            An ``ExportReport`` (rows written, conflicts, per-reviewer disagreement).

        Raises:
            ValueError: a negative weight.
        """
        weights = dict(reviewer_weights or {})
        if any(w < 0 for w in weights.values()):
            raise ValueError("reviewer weights must be >= 0")
        q = select(FeedbackRow).order_by(FeedbackRow.id)  # arrival order: the server's, not the client's
        if since is not None:
            q = q.where(FeedbackRow.reviewed_at >= as_utc(since))
        latest: dict[str, dict[str, FeedbackRow]] = defaultdict(dict)  # text -> reviewer -> decision
        with Session(self.engine) as s:
            for row in s.execute(q).scalars():
                latest[row.text_sha256][row.reviewer] = row
        report = ExportReport()
        out: list[tuple[datetime, int, dict]] = []
        for digest, by_reviewer in latest.items():
            _count_disagreements(by_reviewer, weights, report)
            voting = [(weights.get(r, 1.0), row) for r, row in by_reviewer.items() if weights.get(r, 1.0) > 0]
            if not voting:
                report.excluded += 1
                continue
            labels = weighted_labels([(w, list(row.labels)) for w, row in voting])
            if labels is None:
                report.conflicts += 1
                continue
            newest = max((row for _, row in voting), key=lambda r: r.id)
            when = as_utc(max(row.reviewed_at for _, row in voting))
            record = {
                "id": f"fb-{newest.id}",
                "text": newest.text,
                "labels": labels,
                "source": FEEDBACK_SOURCE,
                "group": f"fb-{digest[:16]}",
                "reviewers": sorted(row.reviewer for _, row in voting),
                "reviewed_at": when.isoformat(),
            }
            out.append((when, newest.id, record))
        out.sort(key=lambda x: (x[0], x[1]))
        lines = [json.dumps(rec, ensure_ascii=False) for _, _, rec in out]
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
        report.rows = len(lines)
        logger.info(
            "exported %d feedback rows to %s (%d conflicts held back)", report.rows, path, report.conflicts
        )
        return report


def _count_disagreements(
    by_reviewer: dict[str, FeedbackRow], weights: dict[str, float], report: ExportReport
) -> None:
    """Add one text's decisions to the per-reviewer statistics (every reviewer, weighted or not)."""
    items = list(by_reviewer.items())
    for reviewer, row in items:
        stats = report.reviewers.setdefault(reviewer, ReviewerStats(weight=weights.get(reviewer, 1.0)))
        stats.decisions += 1
        mine = sorted(set(row.labels))
        if row.model_labels is not None:
            stats.with_model += 1
            stats.model_disagreements += mine != sorted(row.model_labels)
        for other, other_row in items:
            if other != reviewer:
                stats.pairs += 1
                stats.pair_disagreements += mine != sorted(set(other_row.labels))
