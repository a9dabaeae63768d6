"""Moderator feedback over HTTP -> the store -> `adrisk feedback export` -> training data, with feedback
that repeats a gate-set text excluded and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.conftest import DATA_DIR, REPO

SECRET = "unique secret listing text 4821"


@pytest.mark.clock
def test_feedback_round_trip_into_training_data(thread_server, tmp_path):
    from training.config import load_config
    from training.data import load_data

    tiny = [f"output_dir={tmp_path / 'out'}", f"data.path={DATA_DIR}"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", tiny)
    gate_text = load_data(cfg.data, cfg.label_schema, cfg.seed).test.texts[3]
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    # reviewed before the two classifications were (relative to now: no date that expires)
    earlier = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()

    with thread_server(feedback_url=db) as srv:
        r = httpx.post(f"{srv.base}/v1/classify", json={"input": [gate_text, SECRET]}, timeout=30)
        assert r.status_code == 200
        cid = r.json()["id"]
        ok = [
            {"classification_id": cid, "input_index": 0, "labels": ["adult_services"], "reviewer": "mod-1"},
            {"classification_id": cid, "input_index": 1, "labels": ["scam"], "reviewer": "mod-1"},
            {
                "text": "fresh listing never seen before",
                "labels": [],
                "reviewer": "mod-2",
                "reviewed_at": earlier,
            },
        ]
        for body in ok:
            r = httpx.post(f"{srv.base}/v1/feedback", json=body, timeout=30)
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "recorded" and len(r.json()["text_sha256"]) == 64
        bad = [
            ({"text": SECRET, "labels": ["Scam "], "reviewer": "m"}, 422, "unknown"),
            ({"text": SECRET, "classification_id": cid, "labels": [], "reviewer": "m"}, 422, "exactly one"),
            ({"classification_id": "clf-nope", "labels": [], "reviewer": "m"}, 404, "unknown or expired"),
            ({"classification_id": cid, "input_index": 5, "labels": [], "reviewer": "m"}, 404, "input_index"),
            ({"text": SECRET, "labels": [], "reviewer": ""}, 422, "reviewer"),
            ({"text": 42, "labels": [], "reviewer": "m"}, 422, "text"),
        ]
        for body, status, words in bad:
            r = httpx.post(f"{srv.base}/v1/feedback", json=body, timeout=30)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["error"]["message"] and SECRET not in r.text

    out = tmp_path / "feedback.jsonl"
    p = subprocess.run(
        [sys.executable, "-m", "adrisk", "feedback", "export", "--db", db, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # ordered by reviewed_at: the earlier review first
    assert [(r["text"], r["labels"]) for r in rows] == [
        ("fresh listing never seen before", []),
        (gate_text, ["adult_services"]),
        (SECRET, ["scam"]),
    ]

    # the export is training data; the row repeating a gate-set (test split) text is excluded and counted
    # (a retrain trains on it: tests/training/test_retrain.py::test_gate_lifecycle)
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*tiny, f"data.extra_train_files=[{out}]"])
    bundle = load_data(cfg.data, cfg.label_schema, cfg.seed)
    assert bundle.report["extra_train"] == {"rows": 3, "excluded_gate_duplicates": 1, "kept": 2, "repeats": 1}
    assert len(bundle.train) == 240 + 2 and SECRET in bundle.train.texts


def test_export_from_a_mistyped_store_path_is_an_error(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "adrisk",
            "feedback",
            "export",
            "--db",
            f"sqlite:///{tmp_path / 'typo.db'}",
            "--output",
            str(tmp_path / "f.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 1 and "does not exist" in p.stderr
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "f.jsonl").exists()
