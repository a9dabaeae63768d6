"""`adrisk feedback import`: offline answers into the feedback store, idempotent, refusals by row."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd

from serve.feedback_import import import_feedback, parse_labels
from serve.feedback_store import FeedbackStore


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_importing_the_same_file_twice_changes_nothing(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    at = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    f = _write(
        tmp_path / "answers.jsonl",
        [
            {"text": "room for rent, call now", "labels": [], "reviewer": "mod-1"},
            {
                "text": "sweet girl new in town",
                "labels": ["adult_services"],
                "reviewer": "mod-2",
                "reviewed_at": at,
            },
            {"text": "unreviewed ad", "labels": None, "reviewer": None},
        ],
    )
    first = import_feedback(store, f, ["adult_services", "scam"])
    assert (first.recorded, first.already_recorded, first.unanswered) == (2, 0, 1)
    before = store.count()
    export1 = tmp_path / "e1.jsonl"
    store.export(export1)
    second = import_feedback(store, f, ["adult_services", "scam"])
    assert (second.recorded, second.already_recorded) == (0, 2)
    assert store.count() == before
    export2 = tmp_path / "e2.jsonl"
    store.export(export2)
    assert export1.read_text() == export2.read_text()


def test_a_changed_mind_and_back_is_recorded(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    a = _write(
        tmp_path / "a.jsonl", [{"text": "massage offer", "labels": ["adult_services"], "reviewer": "m"}]
    )
    b = _write(tmp_path / "b.jsonl", [{"text": "massage offer", "labels": [], "reviewer": "m"}])
    assert import_feedback(store, a).recorded == 1
    assert import_feedback(store, b).recorded == 1
    assert import_feedback(store, a).recorded == 1  # the latest decision was b's: a again is news
    out = tmp_path / "e.jsonl"
    store.export(out)
    assert json.loads(out.read_text())["labels"] == ["adult_services"]


def test_refusals_name_rows_never_text(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    secret = "secret ad text 555"
    f = _write(
        tmp_path / "bad.jsonl",
        [
            {"text": secret, "labels": ["no_such_label"], "reviewer": "m"},
            {"text": None, "labels": [], "reviewer": "m"},
            {"text": secret, "labels": [], "reviewer": None},
        ],
    )
    report = import_feedback(store, f, ["adult_services"])
    assert report.recorded == 0 and store.count() == 0
    line = report.summary()
    assert "rows 1" in line and "rows 2" in line and "rows 3" in line and secret not in line


def test_a_filled_in_csv_queue_imports_through_the_cli(tmp_path, capsys):
    from adrisk.cli import main

    q = tmp_path / "queue.csv"
    pd.DataFrame(
        {
            "queue_rank": [1, 2, 3],
            "text": ["a b c", "d e f", "g h i"],
            "labels": ["adult_services", "[]", None],
        }
    ).to_csv(q, index=False)
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    args = [
        "feedback",
        "import",
        str(q),
        "--db",
        db,
        "--reviewer",
        "mod-7",
        "--labels",
        "adult_services,scam",
    ]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("3 rows: 2 recorded, 0 already recorded, 1 unanswered")
    assert out[1].startswith("3 rows: 0 recorded, 2 already recorded, 1 unanswered")


def test_parse_labels_forms():
    assert parse_labels(None) is None
    assert parse_labels("[]") == [] and parse_labels([]) == []
    assert parse_labels("scam; adult_services") == ["adult_services", "scam"]
    assert parse_labels('["scam"]') == ["scam"]


def test_another_reviewers_decision_in_between_keeps_the_import_idempotent(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    a = _write(tmp_path / "a.jsonl", [{"text": "spa offer", "labels": ["adult_services"], "reviewer": "m1"}])
    b = _write(tmp_path / "b.jsonl", [{"text": "spa offer", "labels": [], "reviewer": "m2"}])
    assert import_feedback(store, a).recorded == 1
    assert import_feedback(store, b).recorded == 1
    again = import_feedback(store, a)
    assert (again.recorded, again.already_recorded) == (0, 1) and store.count() == 2
