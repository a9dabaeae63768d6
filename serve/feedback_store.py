"""Moderator feedback store (SQLAlchemy): the server records decisions, ``adrisk feedback export``
turns them into training rows in the dataset schema.

SQLite by default (``sqlite:///feedback.db``); any SQLAlchemy URL (``postgresql+psycopg://...``)
via ``ADRISK_FEEDBACK_URL`` or ``--db``. Ad text is stored because it is training data; it is never
logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, select
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


def text_digest(text: str) -> str:
    """sha256 of the normalised text (groups duplicates; safe to log)."""
    return hashlib.sha256(normalize_text(text).encode("utf-8", "surrogatepass")).hexdigest()


class FeedbackStore:
    """Append-only store of moderator decisions.

    Args:
        url: SQLAlchemy database URL (default: ``ADRISK_FEEDBACK_URL`` or ``sqlite:///feedback.db``).
    """

    def __init__(self, url: str | None = None, must_exist: bool = False):
        """``must_exist``: refuse a SQLite file that is not there (an export from a mistyped path
        must not silently create an empty store)."""
        self.url = url or os.environ.get("ADRISK_FEEDBACK_URL") or DEFAULT_FEEDBACK_URL
        if must_exist and self.url.startswith("sqlite:///"):
            path = Path(self.url[len("sqlite:///") :].split("?", 1)[0])
            if not path.is_file():
                raise FileNotFoundError(f"feedback store {path} does not exist")
        self.engine = create_engine(self.url, future=True)
        Base.metadata.create_all(self.engine)

    def add(
        self,
        text: str,
        labels: list[str],
        reviewer: str,
        reviewed_at: datetime | None = None,
        classification_id: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> int:
        """Record one decision; returns its id. ``labels`` must already be validated by the caller."""
        now = datetime.now(timezone.utc)
        row = FeedbackRow(
            text=text,
            text_sha256=text_digest(text),
            labels=list(labels),
            reviewer=reviewer,
            reviewed_at=reviewed_at or now,
            created_at=now,
            classification_id=classification_id,
            model_name=model_name,
            model_version=model_version,
        )
        with Session(self.engine) as s, s.begin():
            s.add(row)
            s.flush()
            return int(row.id)

    def count(self) -> int:
        with Session(self.engine) as s:
            return len(s.execute(select(FeedbackRow.id)).all())

    def export(self, path: str | os.PathLike[str], since: datetime | None = None) -> int:
        """Write feedback as JSONL training rows (``id, text, labels, source, group, reviewer, reviewed_at``),
        the latest decision per normalised text winning. Written atomically; returns the row count."""
        q = select(FeedbackRow).order_by(FeedbackRow.reviewed_at, FeedbackRow.id)
        if since is not None:
            q = q.where(FeedbackRow.reviewed_at >= since)
        latest: dict[str, FeedbackRow] = {}
        with Session(self.engine) as s:
            for row in s.execute(q).scalars():
                latest[row.text_sha256] = row
            lines = [
                json.dumps(
                    {
                        "id": f"fb-{r.id}",
                        "text": r.text,
                        "labels": list(r.labels),
                        "source": FEEDBACK_SOURCE,
                        "group": f"fb-{r.text_sha256[:16]}",
                        "reviewer": r.reviewer,
                        "reviewed_at": r.reviewed_at.isoformat(),
                    },
                    ensure_ascii=False,
                )
                for r in latest.values()
            ]
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)
        logger.info("exported %d feedback rows to %s", len(lines), path)
        return len(lines)
