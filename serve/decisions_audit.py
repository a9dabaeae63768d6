"""Audits of the decision log (``adrisk audit verify | replay | export``).

``verify`` recomputes the keyed hash chain: an edited row (its hash no longer matches its content), a
deleted or reordered row (a ``seq`` gap, or a ``prev_hash`` that is not the previous row's hash) and a
cut tail (the head record ahead of the last row) are each reported by ``seq``. ``replay`` re-derives
every logged action from the logged scores and rule hits under the logged policy version and tenant
(``signals.policy.PolicyEngine.decide``) and reports disagreements. ``export_statements`` writes the
DSA statements of reasons of every restricting decision as JSON lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from serve.decisions import GENESIS, DecisionLog, head_mac, row_hash
from serve.statements import statement_of_reasons
from signals.policy import PolicyEngine


@dataclass
class VerifyReport:
    """``rows`` checked; ``problems``: one line per break, by ``seq`` (empty: the chain holds)."""

    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(log: DecisionLog, max_problems: int = 20) -> VerifyReport:
    """Recompute the chain of ``log`` (see the module docstring).

    Returns:
        A ``VerifyReport``; at most ``max_problems`` problems are listed (the first ones).
    """
    rep = VerifyReport()
    key = log.keys.chain
    prev_seq, prev_hash = 0, GENESIS

    def problem(msg: str) -> None:
        if len(rep.problems) < max_problems:
            rep.problems.append(msg)

    for row in log.rows():
        rep.rows += 1
        seq = row["seq"]
        if seq != prev_seq + 1:
            problem(f"seq {prev_seq + 1}..{seq - 1} missing: rows deleted (or renumbered)")
        if row["prev_hash"] != prev_hash:
            problem(f"seq {seq}: does not follow seq {prev_seq} in the chain (a row deleted or reordered)")
        if row_hash(row, key) != row["row_hash"]:
            problem(f"seq {seq} ({row['decision_id']}): content does not match its hash (edited)")
        prev_seq, prev_hash = seq, row["row_hash"]
    head = log.head()
    if head is None:
        if rep.rows:
            problem("the head record is missing")
    else:
        if head["mac"] != head_mac(head["seq"], head["row_hash"], key):
            problem("the head record does not match its hash (edited)")
        elif head["seq"] != prev_seq or head["row_hash"] != prev_hash:
            problem(
                f"the chain ends at seq {prev_seq} but its head says seq {head['seq']}: rows deleted at the end"
            )
    return rep


@dataclass
class ReplayReport:
    """``rows`` replayed, ``agreed`` of them re-derived identically (action, observed action, severity),
    ``disagreements`` (the first ones, by decision id) and ``missing_policies`` (versions not stored)."""

    rows: int = 0
    agreed: int = 0
    disagreements: list[str] = field(default_factory=list)
    missing_policies: set[str] = field(default_factory=set)

    @property
    def share(self) -> float:
        return self.agreed / self.rows if self.rows else 1.0


def replay(log: DecisionLog, max_listed: int = 20) -> ReplayReport:
    """Re-derive every logged decision under its logged policy version; see ``ReplayReport``."""
    rep = ReplayReport()
    engines: dict[str, PolicyEngine | None] = {}
    for row in log.rows():
        rep.rows += 1
        version = row["policy_version"]
        if version not in engines:
            pol = log.policy(version)
            engines[version] = PolicyEngine(pol, match_contacts=False) if pol is not None else None
        engine = engines[version]
        if engine is None:
            rep.missing_policies.add(version)
            continue
        try:
            d = engine.decide(row["scores"], row["rule_hits"], row["tenant"])
        except (KeyError, TypeError, ValueError) as e:
            got = f"error {type(e).__name__}"
        else:
            got = f"{d.action}/{d.observed_action}/{d.severity}"
            if (d.action, d.observed_action, d.severity) == (
                row["action"],
                row["observed_action"],
                row["severity"],
            ):
                rep.agreed += 1
                continue
        if len(rep.disagreements) < max_listed:
            want = f"{row['action']}/{row['observed_action']}/{row['severity']}"
            rep.disagreements.append(
                f"{row['decision_id']} (seq {row['seq']}): logged {want}, replayed {got}"
            )
    return rep


def export_statements(log: DecisionLog, path: str | os.PathLike[str], since: str | None = None) -> int:
    """Write one JSON line per restricting decision: its DSA statement of reasons
    (``serve.statements.statement_of_reasons``), ``since`` an ISO date/time if given. Written
    atomically; returns the number of statements."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in log.rows():
            if since is not None and row["created_at"] < since:
                continue
            pol = log.policy(row["policy_version"])
            sor = statement_of_reasons(row, pol) if pol is not None else None
            if sor is not None:
                f.write(json.dumps(sor, ensure_ascii=False) + "\n")
                n += 1
    os.replace(tmp, out)
    return n
