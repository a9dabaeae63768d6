"""The decision log: one append-only row per moderation decision, hash-chained.

Every ``/v1/classify`` result is a decision: request id, tenant, key id, the calibrated scores, the
rules beside the model that matched, action, severity, reasons, model and policy versions, and a
keyed hash of the text (HMAC-SHA256; never the text). Rows are chained: each row's ``row_hash`` is an
HMAC over its content, its ``seq`` and the previous row's hash, and a head record holds the last
(seq, hash). An edited, deleted or reordered row breaks the chain (``adrisk audit verify``); keyed
hashes mean an editor without the audit key cannot re-chain the rows after the edit. Every policy
version a decision was made under is stored beside the rows, so ``adrisk audit replay`` re-derives
each action from the logged scores. Format: docs/policy.md, "The decision log".

Writes cost the request path nothing but a queue put: one writer thread inserts queued rows in
batches (one transaction each) and computes the chain. SQLite by default (``sqlite:///decisions.db``),
any SQLAlchemy URL otherwise; one serving process per database (the chain is sequential).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from sqlalchemy import JSON, Integer, String, Table, Text, create_engine, event, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from model.normalize import normalize_text
from signals.policy import Policy, parse_policy

logger = logging.getLogger(__name__)

DEFAULT_DECISIONS_URL = "sqlite:///decisions.db"
AUDIT_KEY_ENV = "ADRISK_AUDIT_KEY"
GENESIS = "0" * 64
_WRITE_BATCH = 2048
# how long a batch gathers decisions: each batch is one commit (a disk sync) and one stretch of Python
# holding the GIL, which the request path waits for; a few batches a second keep that wait small
_GATHER_S = 0.2


class DecisionLogError(RuntimeError):
    """The decision log cannot be used as asked (one line)."""


class Base(DeclarativeBase):
    pass


class DecisionRow(Base):
    """One decision (never its text). ``seq`` orders the chain from 1."""

    __tablename__ = "adrisk_decisions"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    decision_id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    input_index: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(40), index=True)  # ISO 8601 UTC, as hashed
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(80), nullable=True)
    policy_version: Mapped[str] = mapped_column(String(64), index=True)
    scores: Mapped[dict] = mapped_column(JSON)
    rule_hits: Mapped[list] = mapped_column(JSON)
    action: Mapped[str] = mapped_column(String(64))
    observed_action: Mapped[str | None] = mapped_column(String(64), nullable=True)
    severity: Mapped[str] = mapped_column(String(64))
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reasons: Mapped[list] = mapped_column(JSON)
    text_hmac: Mapped[str] = mapped_column(String(64), index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class PolicyRow(Base):
    """Every policy version a decision was made under (canonical JSON), for replays and statements."""

    __tablename__ = "adrisk_policies"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    document: Mapped[str] = mapped_column(Text)
    first_used: Mapped[str] = mapped_column(String(40))


class HeadRow(Base):
    """The chain's last (seq, row_hash), keyed: a deleted tail shows as a head the rows do not reach."""

    __tablename__ = "adrisk_decision_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    row_hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class AppealRow(Base):
    """An appeal (DSA Art. 20 complaint) against a decision; resolved upheld or overturned by an admin
    key. ``statement`` is the appellant's text: stored for the moderator, never logged."""

    __tablename__ = "adrisk_appeals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(40), index=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    opened_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    opened_at: Mapped[str] = mapped_column(String(40))
    statement: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # open, upheld, overturned
    resolved_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    labels: Mapped[list | None] = mapped_column(JSON, nullable=True)
    feedback_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


# the fields of a row the chain hash covers, in order (docs/policy.md lists them)
CHAINED_FIELDS = (
    "seq",
    "decision_id",
    "request_id",
    "input_index",
    "created_at",
    "tenant",
    "key_id",
    "model_name",
    "model_version",
    "policy_version",
    "scores",
    "rule_hits",
    "action",
    "observed_action",
    "severity",
    "category",
    "reasons",
    "text_hmac",
    "prev_hash",
)


@dataclass(frozen=True)
class AuditKeys:
    """Keys derived from the one audit secret: ``chain`` for row hashes, ``text`` for text hashes."""

    chain: bytes
    text: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> AuditKeys:
        if not secret:
            raise DecisionLogError("the audit key is empty")
        derive = lambda label: hmac.new(secret, label, hashlib.sha256).digest()  # noqa: E731
        return cls(chain=derive(b"adrisk decision chain"), text=derive(b"adrisk decision text"))

    def text_hmac(self, text: str) -> str:
        """HMAC-SHA256 of the normalised text (``model.normalize``): the same ad sent again, or quoted in
        an appeal, hashes the same; the text itself is never stored."""
        return hmac.new(
            self.text, normalize_text(text).encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other URLs or an in-memory database)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def audit_keys(url: str, secret: str | None = None, create: bool = False) -> AuditKeys:
    """The audit keys of a log: ``secret`` (``ADRISK_AUDIT_KEY``), else the key file beside a SQLite
    log (``<db>.key``, created with mode 0600 when ``create``; keep a copy apart from the log).

    Raises:
        DecisionLogError: no key (a non-SQLite URL needs ``ADRISK_AUDIT_KEY``; a SQLite log's key file
            is missing and not to be created).
    """
    secret = secret if secret is not None else os.environ.get(AUDIT_KEY_ENV)
    if secret:
        return AuditKeys.from_secret(secret.encode("utf-8"))
    path = sqlite_path(url)
    if path is None:
        raise DecisionLogError(f"the decision log at a non-SQLite URL needs its key in {AUDIT_KEY_ENV}")
    key_file = path.with_name(path.name + ".key")
    if not key_file.is_file():
        if not create:
            raise DecisionLogError(f"no audit key: set {AUDIT_KEY_ENV} or restore {key_file}")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        logger.warning("created the decision log's audit key %s (keep a copy apart from the log)", key_file)
    return AuditKeys.from_secret(key_file.read_text(encoding="utf-8").strip().encode("utf-8"))


def _sqlite_wal(dbapi_connection, _record) -> None:
    """SQLite in write-ahead-log mode: one disk sync per commit instead of several, and statement
    reads never wait for the writer (synchronous stays FULL: a committed decision survives a crash)."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def row_hash(fields: dict[str, Any], chain_key: bytes) -> str:
    """HMAC-SHA256 over the ``CHAINED_FIELDS`` of a row (canonical JSON, in order)."""
    return hmac.new(
        chain_key, _canonical([fields.get(k) for k in CHAINED_FIELDS]), hashlib.sha256
    ).hexdigest()


def head_mac(seq: int, last_hash: str, chain_key: bytes) -> str:
    return hmac.new(chain_key, f"head:{seq}:{last_hash}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DecisionRecord:
    """A decision as the request path makes it (the chain fields are added by the writer)."""

    decision_id: str
    request_id: str
    input_index: int
    created_at: str
    tenant: str
    key_id: str | None
    model_name: str | None
    model_version: str | None
    policy_version: str
    scores: dict[str, float]
    rule_hits: list[dict]
    action: str
    observed_action: str | None
    severity: str
    category: str | None
    reasons: list[dict]
    text_hmac: str


_RECORD_FIELDS = tuple(f.name for f in fields(DecisionRecord))


def new_decision_id() -> str:
    return f"dec-{os.urandom(16).hex()}"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class DecisionLog:
    """The append-only, hash-chained decision log, written by one background thread.

    Args:
        url: SQLAlchemy URL (default ``ADRISK_DECISIONS_URL`` or ``sqlite:///decisions.db``).
        keys: the audit keys (default: ``audit_keys(url, create=True)``).
        on_written: called with the number of rows after each committed batch (metrics).
        on_error: called after each failed write (the batch is retried, never dropped).
        must_exist: refuse a SQLite file that is not there (the audit verbs).
    """

    @staticmethod
    def default_url() -> str:
        """``ADRISK_DECISIONS_URL``, else ``sqlite:///decisions.db`` (in the working directory)."""
        return os.environ.get("ADRISK_DECISIONS_URL") or DEFAULT_DECISIONS_URL

    def __init__(
        self,
        url: str | None = None,
        keys: AuditKeys | None = None,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[], None] | None = None,
        must_exist: bool = False,
    ):
        self.url = url or self.default_url()
        path = sqlite_path(self.url)
        if must_exist and path is not None and not path.is_file():
            raise DecisionLogError(f"decision log {path} does not exist")
        self.keys = keys or audit_keys(self.url, create=not must_exist)
        self.engine: Engine = create_engine(self.url, future=True)
        if path is not None:
            event.listen(self.engine, "connect", _sqlite_wal)
        Base.metadata.create_all(self.engine)
        self.on_written = on_written
        self.on_error = on_error
        self._queue: queue.SimpleQueue[DecisionRecord | None] = queue.SimpleQueue()
        self._submitted = 0
        self._written = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._policies: dict[str, Policy] = {}

    # -- policies ----------------------------------------------------------------------------------
    def register_policy(self, policy: Policy) -> None:
        """Store ``policy`` under its version (idempotent).

        Raises:
            DecisionLogError: the version is already stored with other content (a changed policy
                needs a new version, or replays of earlier decisions would use the wrong rules).
        """
        if self._policies.get(policy.version) is policy:
            return
        with Session(self.engine) as s, s.begin():
            have = s.get(PolicyRow, policy.version)
            if have is not None and have.sha256 != policy.sha256:
                raise DecisionLogError(
                    f"policy version {policy.version!r} is already in the decision log with other "
                    "content; give the changed policy a new version"
                )
            if have is None:
                s.add(
                    PolicyRow(
                        version=policy.version,
                        sha256=policy.sha256,
                        document=policy.canonical_json(),
                        first_used=utc_now_iso(),
                    )
                )
        self._policies[policy.version] = policy

    def policy(self, version: str) -> Policy | None:
        """A stored policy version (None if unknown)."""
        if version not in self._policies:
            with Session(self.engine) as s:
                row = s.get(PolicyRow, version)
            if row is None:
                return None
            self._policies[version] = parse_policy(json.loads(row.document))
        return self._policies[version]

    # -- writing -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adrisk-decision-log", daemon=True)
        self._thread.start()

    def append(self, records: list[DecisionRecord]) -> None:
        """Queue ``records`` for the writer (never blocks; the caller bounds the backlog via ``pending``)."""
        with self._cond:
            self._submitted += len(records)
        for r in records:
            self._queue.put(r)

    @property
    def pending(self) -> int:
        """Decisions queued but not yet committed."""
        return self._submitted - self._written

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued decision is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._written < self._submitted:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return self._written >= self._submitted
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        if self.pending:
            logger.error("decision log stopped with %d decisions not written", self.pending)
        self.engine.dispose()

    def _take(self) -> tuple[list[DecisionRecord], bool]:
        """The next batch: the first queued decision, then, after ``_GATHER_S``, everything queued
        meanwhile (at most ``_WRITE_BATCH``). Sleeping rather than waiting on the queue means a put
        never wakes this thread while a batch gathers: under load the writer wakes a few times a
        second, not once per request, and takes the GIL from the request path that much less."""
        first = self._queue.get()
        if first is None:
            return [], True
        time.sleep(_GATHER_S)
        batch, stop = [first], False
        while len(batch) < _WRITE_BATCH:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            batch.append(nxt)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            delay = 0.05
            while batch:
                try:
                    self._write(batch)
                except Exception as e:  # retried: a decision is never dropped
                    logger.error("decision log write of %d rows failed: %s", len(batch), type(e).__name__)
                    if self.on_error:
                        self.on_error()
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                with self._cond:
                    self._written += len(batch)
                    self._cond.notify_all()
                if self.on_written:
                    self.on_written(len(batch))
                batch = []

    def _write(self, batch: list[DecisionRecord]) -> None:
        """Chain and insert ``batch`` in one transaction, after the last committed row (SQLAlchemy
        Core ``executemany``: the ORM's unit of work costs several times more per row)."""
        key = self.keys.chain
        head_t, rows_t = cast(Table, HeadRow.__table__), cast(Table, DecisionRow.__table__)
        with self.engine.begin() as conn:
            head = conn.execute(select(head_t.c.seq, head_t.c.row_hash).where(head_t.c.id == 1)).first()
            seq, prev = (head.seq, head.row_hash) if head is not None else (0, GENESIS)
            rows = []
            for rec in batch:
                seq += 1
                row = {f: getattr(rec, f) for f in _RECORD_FIELDS}  # shallow: asdict deep-copies
                row["seq"], row["prev_hash"] = seq, prev
                row["row_hash"] = prev = row_hash(row, key)
                rows.append(row)
            conn.execute(insert(rows_t), rows)
            values = {"seq": seq, "row_hash": prev, "mac": head_mac(seq, prev, key)}
            if head is None:
                conn.execute(insert(head_t).values(id=1, **values))
            else:
                conn.execute(update(head_t).where(head_t.c.id == 1).values(**values))

    # -- reading -----------------------------------------------------------------------------------
    def get(self, decision_id: str) -> dict | None:
        """One decision as a dict of its columns (waits for queued writes when not found yet)."""
        for attempt in range(2):
            with Session(self.engine) as s:
                row = s.execute(select(DecisionRow).where(DecisionRow.decision_id == decision_id)).scalar()
                if row is not None:
                    return row_dict(row)
            if attempt == 0 and (not self.pending or not self.flush(10.0)):
                return None
        return None

    def rows(self, chunk: int = 5000) -> Iterator[dict]:
        """Every decision in chain order, read ``chunk`` rows at a time."""
        last = 0
        while True:
            with Session(self.engine) as s:
                q = select(DecisionRow).where(DecisionRow.seq > last).order_by(DecisionRow.seq).limit(chunk)
                got = [row_dict(r) for r in s.execute(q).scalars()]
            if not got:
                return
            yield from got
            last = got[-1]["seq"]

    def head(self) -> dict | None:
        with Session(self.engine) as s:
            h = s.get(HeadRow, 1)
            return {"seq": h.seq, "row_hash": h.row_hash, "mac": h.mac} if h is not None else None


def row_dict(row: DecisionRow) -> dict:
    """A decision row's columns as a dict."""
    return {c: getattr(row, c) for c in (*CHAINED_FIELDS, "row_hash")}
