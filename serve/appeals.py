"""Appeals against logged decisions (DSA Art. 20 complaints), kept in the decision log's database.

An appeal is opened on a decision that restricted an ad (its action is not the policy's first);
at most one is open per decision. An admin key resolves it ``upheld`` or ``overturned``; the route
turns an overturned decision into a feedback row with the moderator's labels (the text checked
against the decision's keyed text hash), and the overturn rate per category is exported to
``/metrics``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from serve.decisions import AppealRow, DecisionLog, utc_now_iso

OUTCOMES = ("upheld", "overturned")


class AppealError(Exception):
    """An appeal request that cannot be carried out: ``kind`` is ``not_found`` or ``conflict``; the
    message names ids only."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Appeal:
    id: str
    decision_id: str
    tenant: str
    category: str | None
    status: str
    opened_at: str
    resolved_at: str | None
    reviewer: str | None
    labels: list[str] | None
    feedback_id: int | None

    @classmethod
    def of(cls, row: AppealRow) -> Appeal:
        return cls(
            row.id,
            row.decision_id,
            row.tenant,
            row.category,
            row.status,
            row.opened_at,
            row.resolved_at,
            row.reviewer,
            list(row.labels) if row.labels is not None else None,
            row.feedback_id,
        )


class AppealStore:
    """Appeals in ``log``'s database.

    Args:
        log: the decision log (its decisions and policies decide what may be appealed).
    """

    def __init__(self, log: DecisionLog):
        self.log = log

    def open(
        self, decision_id: str, tenant: str, any_tenant: bool, key_id: str | None, statement: str | None
    ) -> Appeal:
        """Open an appeal on ``decision_id`` for ``tenant`` (``any_tenant``: an admin key, any tenant's).

        Raises:
            AppealError(not_found): no such decision for this tenant.
            AppealError(conflict): the decision restricted nothing (its action is the policy's first),
                or an appeal on it is already open.
        """
        row = self.log.get(decision_id)
        if row is None or (not any_tenant and row["tenant"] != tenant):
            raise AppealError("not_found", f"decision {decision_id} not found")
        policy = self.log.policy(row["policy_version"])
        if policy is not None and row["action"] == policy.actions[0]:
            raise AppealError(
                "conflict", f"decision {decision_id} acted {row['action']!r}: nothing to appeal"
            )
        with Session(self.log.engine) as s, s.begin():
            existing = s.execute(
                select(AppealRow.id).where(AppealRow.decision_id == decision_id, AppealRow.status == "open")
            ).scalar()
            if existing is not None:
                raise AppealError(
                    "conflict", f"decision {decision_id} already has an open appeal ({existing})"
                )
            appeal = AppealRow(
                id=f"apl-{os.urandom(16).hex()}",
                decision_id=decision_id,
                tenant=row["tenant"],
                category=row["category"],
                opened_by=key_id,
                opened_at=utc_now_iso(),
                statement=statement,
                status="open",
            )
            s.add(appeal)
            s.flush()
            return Appeal.of(appeal)

    def get(self, appeal_id: str, tenant: str, any_tenant: bool) -> Appeal:
        """Raises AppealError(not_found) for an unknown appeal or another tenant's."""
        with Session(self.log.engine) as s:
            row = s.get(AppealRow, appeal_id)
            if row is None or (not any_tenant and row.tenant != tenant):
                raise AppealError("not_found", f"appeal {appeal_id} not found")
            return Appeal.of(row)

    def resolve(
        self,
        appeal_id: str,
        outcome: str,
        reviewer: str,
        labels: list[str] | None,
        key_id: str | None,
        feedback_id: int | None,
    ) -> Appeal:
        """Close an open appeal.

        Raises:
            AppealError(not_found | conflict): unknown, or no longer open.
        """
        with Session(self.log.engine) as s, s.begin():
            done = s.execute(
                update(AppealRow)
                .where(AppealRow.id == appeal_id, AppealRow.status == "open")
                .values(
                    status=outcome,
                    resolved_at=utc_now_iso(),
                    resolved_by=key_id,
                    reviewer=reviewer,
                    labels=labels,
                    feedback_id=feedback_id,
                )
            )
            row = s.get(AppealRow, appeal_id)
            if row is None:
                raise AppealError("not_found", f"appeal {appeal_id} not found")
            if done.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
                raise AppealError("conflict", f"appeal {appeal_id} is already resolved ({row.status})")
            return Appeal.of(row)

    def open_row(self, appeal_id: str) -> dict | None:
        """The decision row an appeal is about, if the appeal exists."""
        with Session(self.log.engine) as s:
            row = s.get(AppealRow, appeal_id)
            decision_id = row.decision_id if row is not None else None
        return self.log.get(decision_id) if decision_id is not None else None

    def outcome_counts(self) -> Counter[tuple[str, str]]:
        """Resolved appeals by ``(category, outcome)`` (category ``none`` when the decision had none)."""
        with Session(self.log.engine) as s:
            rows = s.execute(
                select(AppealRow.category, AppealRow.status).where(AppealRow.status.in_(OUTCOMES))
            ).all()
        return Counter((c or "none", st) for c, st in rows)
