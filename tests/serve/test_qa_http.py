"""QA break-it tests for the HTTP API: odd bodies and headers must get a 4xx JSON error (never a
500), and no error body may quote client text."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

SECRET = "qa secret listing text 9917"


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert SECRET not in r.text
    return body["error"]


def test_number_literal_over_int_digit_limit_is_400_not_500(thread_server):
    # json.loads raises a plain ValueError (not JSONDecodeError) past 4300 digits
    with thread_server() as srv:
        for body in ('{"input": ' + "9" * 5000 + "}", '{"input": ["a", ' + "9" * 5000 + "]}"):
            r = httpx.post(f"{srv.base}/v1/classify", content=body, timeout=30)
            assert _error(r, 400)["type"] == "invalid_json"
        r = httpx.post(f"{srv.base}/v1/feedback", content='{"input_index": ' + "1" * 5000 + "}", timeout=30)
        assert _error(r, 400)["type"] == "invalid_json"


def test_feedback_accepts_lone_surrogates_like_classify(thread_server, tmp_path):
    # classify accepts "\ud83d"; feedback by that request's id used to 500 (UnicodeEncodeError in
    # the SQLite store) and feedback by text used to 422
    with thread_server(feedback_url=f"sqlite:///{tmp_path / 'fb.db'}") as srv:
        raw = '{"input": ["\\ud83d' + SECRET + '", "\\udc00"]}'
        r = httpx.post(f"{srv.base}/v1/classify", content=raw, timeout=30)
        assert r.status_code == 200, r.text
        cid = r.json()["id"]
        for idx in (0, 1):
            body = json.dumps({"classification_id": cid, "input_index": idx, "labels": [], "reviewer": "m"})
            r = httpx.post(f"{srv.base}/v1/feedback", content=body, timeout=30)
            assert r.status_code == 201, r.text
        body = '{"text": "\\ud83d' + SECRET + '", "labels": ["scam"], "reviewer": "m"}'
        r = httpx.post(f"{srv.base}/v1/feedback", content=body, timeout=30)
        assert r.status_code == 201, r.text


def test_feedback_errors_do_not_echo_client_strings(thread_server, tmp_path):
    with thread_server(feedback_url=f"sqlite:///{tmp_path / 'fb.db'}") as srv:
        r = httpx.post(
            f"{srv.base}/v1/feedback",
            json={"text": "t", "labels": ["scam", SECRET], "reviewer": "m"},
            timeout=30,
        )
        err = _error(r, 422)
        assert "labels[1]" in err["message"] and "unknown" in err["message"]
        for key in (SECRET, "SECRETLISTING"):
            r = httpx.post(
                f"{srv.base}/v1/feedback",
                json={"text": "t", "labels": [], "reviewer": "m", key: 1},
                timeout=30,
            )
            assert "unknown field" in _error(r, 422)["message"] and key not in r.text
        r = httpx.post(
            f"{srv.base}/v1/feedback",
            json={"text": "t", "labels": [], "reviewer": "m", "reviewd_at": 1},
            timeout=30,
        )
        assert "reviewed_at" in _error(r, 422)["message"]  # a near-miss of a field is still named


def test_non_ascii_api_key_sent_as_utf8_authenticates(thread_server):
    key = "clé-🔑-1"
    with thread_server(api_keys=f"plain,{key}") as srv:
        body = json.dumps({"input": "hello"}).encode()
        for auth, status in (
            (f"Bearer {key}".encode(), 200),
            (b"Bearer plain", 200),
            (b"Bearer cl\xe9-", 401),
            (b"Bearer " + key.encode()[:-1], 401),
        ):
            r = httpx.post(
                f"{srv.base}/v1/classify", content=body, headers={"Authorization": auth}, timeout=30
            )
            assert r.status_code == status, (auth, r.text)


def test_client_disconnect_mid_body_is_not_a_server_error(thread_server):
    with thread_server() as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"input": "' + SECRET.encode()
            )
            time.sleep(0.3)
        time.sleep(0.5)
        m = httpx.get(f"{srv.base}/metrics", timeout=10).text
        assert 'route="/v1/classify",status="500"' not in m


def test_reused_client_request_id_never_attaches_feedback_to_another_ad(thread_server, tmp_path):
    # X-Request-ID is client-chosen: two clients (or two jobs) reusing one id for different ads
    with thread_server(feedback_url=f"sqlite:///{tmp_path / 'fb.db'}") as srv:
        for text in ("first client's ad", "second client's ad"):
            r = httpx.post(
                f"{srv.base}/v1/classify", json={"input": text}, headers={"X-Request-ID": "job-1"}, timeout=30
            )
            assert r.status_code == 200 and r.json()["id"] == "job-1"
        r = httpx.post(
            f"{srv.base}/v1/feedback",
            timeout=30,
            json={"classification_id": "job-1", "labels": [], "reviewer": "m"},
        )
        assert _error(r, 404)["type"] == "not_found"
        # a retry of the same request under the same id still works
        for _ in range(2):
            httpx.post(
                f"{srv.base}/v1/classify",
                json={"input": "retried"},
                headers={"X-Request-ID": "job-2"},
                timeout=30,
            )
        r = httpx.post(
            f"{srv.base}/v1/feedback",
            timeout=30,
            json={"classification_id": "job-2", "labels": [], "reviewer": "m"},
        )
        assert r.status_code == 201, r.text


def test_invalid_serve_setting_is_one_line(capsys):
    from adrisk.cli import main

    assert main(["serve", "--model", "unused", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--port" in err and "65535" in err


@pytest.mark.clock
def test_feedback_reviewed_at_is_stored_in_utc_and_not_in_the_future(thread_server, tmp_path):
    # SQLite keeps no zone: 10:00+02:00 was stored as 10:00 and outranked a later 09:00Z decision;
    # a year-9999 date would be the "latest" decision for that ad forever
    from serve.feedback_store import FeedbackStore

    db = f"sqlite:///{tmp_path / 'fb.db'}"
    with thread_server(feedback_url=db) as srv:
        # yesterday 10:00 at +02:00 is 08:00Z, earlier than yesterday 09:00Z (no literal date: none expires)
        day = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
        for labels, at in ((["scam"], f"{day}T10:00:00+02:00"), ([], f"{day}T09:00:00Z")):
            r = httpx.post(
                f"{srv.base}/v1/feedback",
                timeout=30,
                json={"text": "same ad", "labels": labels, "reviewer": "m", "reviewed_at": at},
            )
            assert r.status_code == 201, r.text
        r = httpx.post(
            f"{srv.base}/v1/feedback",
            timeout=30,
            json={
                "text": "same ad",
                "labels": ["scam"],
                "reviewer": "m",
                "reviewed_at": "9999-12-31T00:00:00Z",
            },
        )
        assert "future" in _error(r, 422)["message"]
    out = tmp_path / "fb.jsonl"
    FeedbackStore(db).export(out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["labels"] == []  # 09:00Z is the later decision
