"""The decision log (serve/decisions.py): the keyed hash chain detects an edited, a deleted and a
reordered row and a cut tail; replay re-derives every action under the logged policy version;
a policy version cannot change its content; the audit verbs exit 1 on a broken log."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from serve.decisions import (
    AuditKeys,
    DecisionLog,
    DecisionLogError,
    DecisionRecord,
    new_decision_id,
    utc_now_iso,
)
from serve.decisions_audit import export_statements, replay, verify
from signals.policy import PolicyEngine, parse_policy

LABELS = ("adult_services", "trafficking_indicators", "scam")
KEYS = AuditKeys.from_secret(b"test audit secret")


def policy(version="v1", remove_at=0.8):
    return parse_policy(
        {
            "version": version,
            "categories": {
                "adult_services": {"actions": [{"from": 0.5, "to": 1.0, "action": "review"}]},
                "trafficking_indicators": {},
                "scam": {
                    "actions": [{"from": remove_at, "to": 1.0, "action": "remove"}],
                    "severity": [{"from": 0.5, "to": 1.0, "level": "high"}],
                },
            },
            "terms": {"block": [{"term": "wire the deposit", "action": "review", "category": "scam"}]},
        }
    )


def records(engine: PolicyEngine, n: int, seed: int = 0) -> list[DecisionRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scores = {lab: rng.random() for lab in LABELS}
        text = f"listing {i}" + (" wire the deposit" if i % 7 == 0 else "")
        hits = engine.rule_hits(text)
        d = engine.decide(scores, hits, "default")
        out.append(
            DecisionRecord(
                decision_id=new_decision_id(),
                request_id=f"clf-{i // 4}",
                input_index=i % 4,
                created_at=utc_now_iso(),
                tenant="default",
                key_id=None,
                model_name="risky-ads",
                model_version="3",
                policy_version=d.policy_version,
                scores=scores,
                rule_hits=hits,
                action=d.action,
                observed_action=d.observed_action,
                severity=d.severity,
                category=d.primary_category,
                reasons=d.reasons,
                text_hmac=KEYS.text_hmac(text),
            )
        )
    return out


@pytest.fixture()
def log(tmp_path):
    lg = DecisionLog(f"sqlite:///{tmp_path / 'decisions.db'}", KEYS)
    lg.start()
    for version, remove_at in (("v1", 0.8), ("v2", 0.6)):  # two versions, as a reload mid-run leaves
        pol = policy(version, remove_at)
        lg.register_policy(pol)
        lg.append(records(PolicyEngine(pol), 30, seed=remove_at.hex().__hash__() % 1000))
    assert lg.flush(30)
    yield lg
    lg.stop()


def _sql(log: DecisionLog, statement: str, *args) -> None:
    con = sqlite3.connect(log.url[len("sqlite:///") :])
    con.execute(statement, args)
    con.commit()
    con.close()


def test_an_intact_log_verifies_and_replays_every_action(log, tmp_path):
    rep = verify(log)
    assert rep.ok and rep.rows == 60, rep.problems
    rr = replay(log)
    assert (rr.rows, rr.agreed, rr.disagreements) == (60, 60, [])
    rows = list(log.rows())
    assert [r["seq"] for r in rows] == list(range(1, 61))
    assert {r["policy_version"] for r in rows} == {"v1", "v2"}
    # a restricting decision has a statement; "review" maps to no restriction in these policies
    n = export_statements(log, tmp_path / "sor.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "sor.jsonl").read_text().splitlines()]
    assert n == len(lines) == sum(r["action"] == "remove" for r in rows) > 0
    assert all(s["category"] == "STATEMENT_CATEGORY_SCAMS_AND_FRAUD" for s in lines)
    assert all(s["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_REMOVED"] for s in lines)


def test_an_edited_row_is_detected(log):
    _sql(log, "UPDATE adrisk_decisions SET action = 'tampered' WHERE seq = 7")
    rep = verify(log)
    assert not rep.ok and any(p.startswith("seq 7 ") and "edited" in p for p in rep.problems), rep.problems
    _sql(log, "UPDATE adrisk_decisions SET scores = '{\"scam\": 0.99}' WHERE seq = 9")
    assert any(p.startswith("seq 9 ") for p in verify(log).problems)


def test_a_deleted_row_is_detected(log):
    _sql(log, "DELETE FROM adrisk_decisions WHERE seq = 12")
    problems = verify(log).problems
    assert any("seq 12..12 missing" in p for p in problems), problems
    assert any(p.startswith("seq 13: does not follow") for p in problems), problems


def test_a_reordered_row_is_detected(log):
    _sql(log, "UPDATE adrisk_decisions SET seq = -1 WHERE seq = 20")
    _sql(log, "UPDATE adrisk_decisions SET seq = 20 WHERE seq = 21")
    _sql(log, "UPDATE adrisk_decisions SET seq = 21 WHERE seq = -1")
    problems = verify(log).problems
    assert any(p.startswith("seq 20") for p in problems) and any(p.startswith("seq 21") for p in problems), (
        problems
    )


def test_a_cut_tail_is_detected(log):
    _sql(log, "DELETE FROM adrisk_decisions WHERE seq > 55")
    problems = verify(log).problems
    assert problems == ["the chain ends at seq 55 but its head says seq 60: rows deleted at the end"]


def test_a_policy_version_cannot_change_its_content(log):
    log.register_policy(policy("v1", 0.8))  # the same content again: fine
    with pytest.raises(DecisionLogError, match="'v1' is already in the decision log with other content"):
        log.register_policy(policy("v1", 0.7))


def test_the_audit_verbs_exit_1_on_a_broken_log(log, capsys, monkeypatch):
    from adrisk.cli import main

    def run(*args: str, key: str = "test audit secret") -> tuple[int, str]:
        monkeypatch.setenv("ADRISK_AUDIT_KEY", key)
        code = main(["audit", *args, "--db", log.url])
        return code, capsys.readouterr().out

    assert run("verify") == (0, "60 decisions checked: the chain holds\n")
    code, out = run("replay")
    assert code == 0 and "60 of 60 decisions replayed identically (100.00%)" in out
    _sql(log, "UPDATE adrisk_decisions SET severity = 'none', action = 'allow' WHERE action = 'remove'")
    code, out = run("verify")
    assert code == 1 and "edited" in out
    code, out = run("replay")
    assert code == 1 and "logged allow/None/none, replayed remove/None/high" in out
    code, out = run("verify", key="another secret")
    assert code == 1 and out.count("edited") >= 20  # without the key no row verifies
