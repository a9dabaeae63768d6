"""Policies, scoped keys, tenants, statements and appeals against a real server (uvicorn in a thread
on the tiny model): every result a logged decision, a classify-only key refused on feedback, tenant
overrides and isolation, reloads that keep serving, and a policy that does not fit refused."""

from __future__ import annotations

import hashlib
import re
import time

import httpx
import pytest
import yaml

from tests.serve.conftest import wait_ready

TEXT = "brand new listing, deposit by wire only"
KEYS = {  # key -> (id, scopes, tenant)
    "k-shop": ("shop-frontend", ["classify"], "shop"),
    "k-kids": ("kids-frontend", ["classify"], "kids"),
    "k-feedback": ("moderation-tool", ["feedback"], "shop"),
    "k-admin": ("trust-and-safety", ["classify", "feedback", "admin"], "shop"),
}
LABELS = ["adult_services", "trafficking_indicators", "scam"]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_keys(path) -> str:
    entries = [
        {"id": i, "sha256": hashlib.sha256(k.encode()).hexdigest(), "scopes": s, "tenant": t}
        for k, (i, s, t) in KEYS.items()
    ]
    path.write_text(yaml.safe_dump({"keys": entries}), encoding="utf-8")
    return str(path)


def write_policy(path, version: str, scam_from: float = 0.0, **extra) -> str:
    doc = {
        "version": version,
        "categories": {
            "adult_services": {},
            "trafficking_indicators": {},
            "scam": {
                "actions": [{"from": scam_from, "to": 1.0, "action": "review"}],
                "severity": [{"from": 0.0, "to": 1.0, "level": "medium"}],
            },
        },
        "tenants": {
            "kids": {"categories": {"scam": {"actions": [{"from": 0.0, "to": 1.0, "action": "remove"}]}}}
        },
        **extra,
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def error_of(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind
    assert TEXT[:20] not in r.text
    return body["error"]["message"]


def metric(base: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(f"{base}/metrics", timeout=30).text, re.M)
    return float(m.group(1)) if m else None


@pytest.fixture()
def policy_server(thread_server, tmp_path):
    settings = {
        "keys_file": write_keys(tmp_path / "keys.yaml"),
        "policy_file": write_policy(tmp_path / "policy.yaml", "p1"),
        "policy_poll_s": 0.05,
        "decisions_url": f"sqlite:///{tmp_path / 'decisions.db'}",
        "feedback_url": f"sqlite:///{tmp_path / 'feedback.db'}",
        "audit_key": "test audit secret",
    }
    with thread_server(**settings) as srv:
        wait_ready(srv.base)
        srv.tmp = tmp_path
        yield srv


def classify(srv, key: str, **body) -> dict:
    r = httpx.post(f"{srv.base}/v1/classify", json={"input": TEXT, **body}, headers=auth(key), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def test_scopes_and_tenants_on_a_real_server(policy_server):
    srv = policy_server
    base = srv.base
    error_of(httpx.post(f"{base}/v1/classify", json={"input": TEXT}, timeout=30), 401, "unauthorized")
    error_of(
        httpx.post(f"{base}/v1/classify", json={"input": TEXT}, headers=auth("nope"), timeout=30),
        401,
        "unauthorized",
    )
    shop = classify(srv, "k-shop")
    kids = classify(srv, "k-kids", extract=True, explain=True)
    for res in (shop, kids):  # every result is a decision, plain or with explanations / contacts
        assert re.fullmatch(r"dec-[0-9a-f]{32}", res["decision_id"]) and res["policy_version"] == "p1"
        assert res["model_version"].startswith("sha256:") and res["severity"] == "medium"
    assert shop["action"] == "review" and kids["action"] == "remove"  # the tenant's override
    assert kids["reasons"][0] == {
        "rule": "score",
        "category": "scam",
        "score": kids["category_scores"]["scam"],
        "band": [0.0, 1.0],
        "action": "remove",
    }
    assert "contacts" in kids and "explanations" in kids

    # a classify-only key cannot write training labels; a feedback-only key cannot classify
    fb = {"text": TEXT, "labels": ["scam"], "reviewer": "mod-1"}
    msg = error_of(
        httpx.post(f"{base}/v1/feedback", json=fb, headers=auth("k-shop"), timeout=30), 403, "forbidden"
    )
    assert "'feedback' scope" in msg
    error_of(
        httpx.post(f"{base}/v1/classify", json={"input": TEXT}, headers=auth("k-feedback"), timeout=30),
        403,
        "forbidden",
    )
    r = httpx.post(f"{base}/v1/feedback", json=fb, headers=auth("k-feedback"), timeout=30)
    assert r.status_code == 201, r.text
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from serve.feedback_store import FeedbackRow, FeedbackStore

    with Session(FeedbackStore(f"sqlite:///{srv.tmp / 'feedback.db'}").engine) as s:
        row = s.execute(select(FeedbackRow)).scalar_one()
        assert (row.key_id, row.tenant, row.reviewer) == ("moderation-tool", "shop", "mod-1")
        assert isinstance(row.model_labels, list)

    # the policy is the admin scope's
    error_of(httpx.get(f"{base}/v1/policy", headers=auth("k-shop"), timeout=30), 403, "forbidden")
    info = httpx.get(f"{base}/v1/policy", headers=auth("k-admin"), timeout=30).json()
    assert (info["version"], info["source"], info["tenants"], info["reload_error"]) == (
        "p1",
        "file",
        ["kids"],
        None,
    )

    # statements: a tenant sees its own; a decision that restricted nothing has none
    url = f"{base}/v1/decisions/{kids['decision_id']}/statement"
    st = httpx.get(url, headers=auth("k-kids"), timeout=30)
    assert st.status_code == 200, st.text
    sor = st.json()["statement"]
    assert (
        sor["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_REMOVED"]
        and sor["puid"] == kids["decision_id"]
    )
    assert sor["category"] == "STATEMENT_CATEGORY_SCAMS_AND_FRAUD" and sor["automated_detection"] == "Yes"
    assert "p1" in sor["decision_facts"] and TEXT[:15] not in st.text
    error_of(httpx.get(url, headers=auth("k-shop"), timeout=30), 404, "not_found")  # another tenant's
    assert httpx.get(url, headers=auth("k-admin"), timeout=30).status_code == 200
    msg = error_of(
        httpx.get(f"{base}/v1/decisions/{shop['decision_id']}/statement", headers=auth("k-shop"), timeout=30),
        404,
        "not_found",
    )
    assert "no restriction" in msg


def test_appeals_overturn_into_feedback_and_the_overturn_rate(policy_server):
    srv = policy_server
    base = srv.base
    kids = classify(srv, "k-kids")
    body = {"decision_id": kids["decision_id"], "statement": "this is a real flat for rent"}
    error_of(
        httpx.post(f"{base}/v1/appeals", json=body, headers=auth("k-shop"), timeout=30), 404, "not_found"
    )
    r = httpx.post(f"{base}/v1/appeals", json=body, headers=auth("k-kids"), timeout=30)
    assert r.status_code == 201, r.text
    appeal = r.json()
    assert (appeal["status"], appeal["category"]) == ("open", "scam")
    error_of(httpx.post(f"{base}/v1/appeals", json=body, headers=auth("k-kids"), timeout=30), 409, "conflict")
    resolve = f"{base}/v1/appeals/{appeal['id']}/resolve"
    overturn = {"outcome": "overturned", "reviewer": "mod-9", "labels": []}
    error_of(httpx.post(resolve, json=overturn, headers=auth("k-kids"), timeout=30), 403, "forbidden")
    bad_text = {**overturn, "text": "some other ad"}
    assert "does not match" in error_of(
        httpx.post(resolve, json=bad_text, headers=auth("k-admin"), timeout=30), 409, "conflict"
    )
    r = httpx.post(
        resolve, json=overturn, headers=auth("k-admin"), timeout=30
    )  # text from the server's memory
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "overturned" and isinstance(done["feedback_id"], int)
    error_of(httpx.post(resolve, json=overturn, headers=auth("k-admin"), timeout=30), 409, "conflict")
    assert (
        httpx.get(f"{base}/v1/appeals/{appeal['id']}", headers=auth("k-kids"), timeout=30).json()["status"]
        == "overturned"
    )
    assert metric(base, 'adrisk_appeal_overturn_rate{category="scam"}') == 1.0

    from serve.feedback_store import FeedbackStore

    rep = FeedbackStore(f"sqlite:///{srv.tmp / 'feedback.db'}").export_report(srv.tmp / "fb.jsonl")
    assert rep.rows == 1 and (srv.tmp / "fb.jsonl").read_text().count('"labels": []') == 1


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_reload_swaps_the_policy_and_a_bad_one_keeps_it(policy_server):
    srv = policy_server
    base, path = srv.base, srv.tmp / "policy.yaml"
    policy_now = lambda: httpx.get(f"{base}/v1/policy", headers=auth("k-admin"), timeout=30).json()  # noqa: E731
    assert classify(srv, "k-shop")["policy_version"] == "p1"
    write_policy(path, "p2", scam_from=1.0 - 1e-9)  # scam now reviews only at ~1
    _wait(lambda: policy_now()["version"] == "p2")
    res = classify(srv, "k-shop")
    assert res["policy_version"] == "p2" and res["action"] == "allow"

    # overlapping bands, then p2 changed without a new version: both refused, p2 keeps serving
    doc = yaml.safe_load(path.read_text())
    doc["categories"]["scam"]["severity"].append({"from": 0.5, "to": 1.0, "level": "high"})
    path.write_text(yaml.safe_dump(doc))
    _wait(lambda: policy_now()["reload_error"] is not None)
    err = policy_now()["reload_error"]["error"]
    assert "\n" not in err and "severity bands overlap" in err
    write_policy(path, "p2", scam_from=0.5)
    _wait(lambda: "other content" in (policy_now()["reload_error"] or {}).get("error", ""))
    assert classify(srv, "k-shop")["policy_version"] == "p2"
    assert metric(base, 'adrisk_policy_reloads_total{result="failed"}') == 2.0


def test_a_model_the_policy_does_not_fit_is_not_served(thread_server, tmp_path):
    doc = {"version": "p1", "categories": {"adult_services": {}, "trafficking_indicators": {}, "scams": {}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with thread_server(policy_file=str(tmp_path / "p.yaml"), decision_log=False) as srv:
        deadline = time.monotonic() + 30
        while (r := httpx.get(f"{srv.base}/readyz", timeout=30)).json()["error"][
            "message"
        ] == "model not loaded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        msg = error_of(r, 503, "not_ready")
        assert "categories.scams: not a label of the model" in msg


def test_serve_refuses_a_bad_policy_file_in_one_line(tiny_artifact, tmp_path, capsys):
    from adrisk.cli import main

    doc = {
        "version": "p1",
        "categories": {"scam": {"actions": [{"from": -0.1, "to": 0.5, "action": "remove"}]}},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    code = main(["serve", "--model", str(tiny_artifact), "--port", "0", "--policy", str(tmp_path / "p.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "categories.scam.actions[0].from: Input should be greater than or equal to 0" in err[0]
