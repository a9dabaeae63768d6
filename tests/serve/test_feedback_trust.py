"""Feedback you can trust (issue 25, kind 4): the time a client claims, conflicting reviewers, and the
zone of exported times. Each test is named for the kind of fault it guards against."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest

TEXT = "cheap flat near the station, call today"


@pytest.mark.clock
@pytest.mark.parametrize(
    "claimed",
    [
        lambda now: now + timedelta(hours=23),  # a day's skew used to be accepted: it won every later review
        lambda now: datetime(1970, 1, 1, tzinfo=timezone.utc),  # the epoch: a client clock reset
        lambda now: now - timedelta(days=3650),  # older than any review the store keeps
    ],
    ids=["23h-ahead", "1970", "ten-years-ago"],
)
def test_reviewed_at_from_an_untrustworthy_clock_is_refused(thread_server, tmp_path, claimed):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    when = claimed(datetime.now(timezone.utc)).isoformat()
    with thread_server(feedback_url=db) as srv:
        from tests.serve.conftest import wait_ready

        wait_ready(srv.base)
        body = {"text": TEXT, "labels": ["scam"], "reviewer": "mod-1", "reviewed_at": when}
        r = httpx.post(f"{srv.base}/v1/feedback", json=body, timeout=30)
        assert r.status_code == 422, r.text
        assert "reviewed_at" in r.json()["error"]["message"] and TEXT not in r.text
        # a time a few minutes back is a normal review
        body["reviewed_at"] = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
        assert httpx.post(f"{srv.base}/v1/feedback", json=body, timeout=30).status_code == 201


def _export(store, path, **kw) -> list[dict]:
    store.export(path, **kw)
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.clock
def test_a_conflict_between_reviewers_is_not_won_by_the_last_writer(tmp_path):
    from serve.feedback_store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    now = datetime.now(timezone.utc)
    store.add(TEXT, ["scam"], "mod-1", now - timedelta(minutes=10))
    # a second reviewer disagrees and dates the decision later: it must not silently win
    store.add(TEXT, [], "mod-2", now)
    store.add("another listing", ["scam"], "mod-1", now - timedelta(minutes=9))
    rows = _export(store, tmp_path / "out.jsonl")
    assert [r["text"] for r in rows] == ["another listing"]  # the contested text is held back
    report = store.export_report(tmp_path / "out2.jsonl")
    assert report.conflicts == 1 and report.rows == 1
    # a third reviewer breaks the tie; down-weighting mod-2 decides it as well
    assert _export(store, tmp_path / "w.jsonl", reviewer_weights={"mod-2": 0.5})[0]["labels"] == ["scam"]
    assert [r["labels"] for r in _export(store, tmp_path / "x.jsonl", reviewer_weights={"mod-1": 0.0})] == [
        []
    ]


@pytest.mark.clock
def test_a_reviewer_revising_a_decision_wins_by_arrival_not_by_claimed_time(tmp_path):
    from serve.feedback_store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    now = datetime.now(timezone.utc)
    store.add(TEXT, ["scam"], "mod-1", now - timedelta(minutes=1))
    store.add(TEXT, [], "mod-1", now - timedelta(hours=2))  # the later revision, claiming an earlier time
    rows = _export(store, tmp_path / "out.jsonl")
    assert [r["labels"] for r in rows] == [[]]


@pytest.mark.clock
def test_exported_review_times_keep_their_zone(tmp_path):
    from serve.feedback_store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    when = (datetime.now(timezone.utc) - timedelta(minutes=30)).astimezone(timezone(timedelta(hours=5)))
    store.add(TEXT, ["scam"], "mod-1", when)
    (row,) = _export(store, tmp_path / "out.jsonl")
    got = datetime.fromisoformat(row["reviewed_at"])
    assert got.tzinfo is not None and got.utcoffset() is not None
    assert got == when


@pytest.mark.clock
def test_export_reports_each_reviewers_disagreement_and_can_exclude_one(tmp_path, capsys):
    from adrisk.cli import main
    from serve.feedback_store import FeedbackStore

    db = f"sqlite:///{tmp_path / 'fb.db'}"
    store = FeedbackStore(db)
    # mod-1 and mod-2 agree with the model; mod-3 flips every label, on the same texts
    for i in range(4):
        text, model = f"listing number {i}", ["scam"] if i % 2 else []
        store.add(text, model, "mod-1", model_labels=model)
        store.add(text, model, "mod-2", model_labels=model)
        store.add(text, [] if model else ["scam"], "mod-3", model_labels=model)
    out, report = tmp_path / "fb.jsonl", tmp_path / "report.json"
    code = main(
        [
            "feedback",
            "export",
            "--db",
            db,
            "--output",
            str(out),
            "--exclude-reviewer",
            "mod-3",
            "--report",
            str(report),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "| mod-3 | 0 | 4 | 1.000 (4) | 8 | 1.000 |" in printed, printed
    assert "| mod-1 | 1 | 4 | 0.000 (4) | 8 | 0.500 |" in printed, printed
    stats = json.loads(report.read_text())
    assert stats["rows"] == 4 and stats["conflicts"] == 0
    assert stats["reviewers"]["mod-3"]["disagreement_with_model"] == 1.0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["labels"] for r in rows] == [["scam"] if i % 2 else [] for i in range(4)]
    assert all(r["reviewers"] == ["mod-1", "mod-2"] for r in rows)
    with pytest.raises(SystemExit) as e:  # a usage error: argparse's exit 2, one line naming the rule
        main(["feedback", "export", "--db", db, "--output", str(out), "--reviewer-weight", "mod-3"])
    assert e.value.code == 2 and "REVIEWER=WEIGHT" in capsys.readouterr().err
