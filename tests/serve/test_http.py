"""The HTTP API against a real ``adrisk serve`` subprocess on a loopback port."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import numpy as np
import pytest

from tests.conftest import PROBES, expand_probe_input

ATOL = 1e-4


def _probe_params(where: set[str]):
    rows = json.loads(PROBES.read_text(encoding="utf-8")) if PROBES.is_file() else []
    out = []
    for i, r in enumerate(rows):
        if where & set(r["where"].split(",")):
            r = {**r, "value": expand_probe_input(r["input"])}
            out.append(pytest.param(r, id=f"{i}-{r['kind']}"))
    return out


def _texts_sent(value) -> list[str]:
    """Strings long enough to recognise if echoed back or logged."""
    vals = value if isinstance(value, list) else [value]
    if isinstance(value, dict):
        vals = [v for v in value.values()]
    return [v for v in vals if isinstance(v, str) and len(v.strip()) >= 5]


def _assert_error_shape(r: httpx.Response, sent: list[str]) -> dict:
    assert r.status_code != 500
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert "Traceback" not in r.text
    for t in sent:  # no ad text echoed (not even a 20-character slice of it)
        assert t[:20] not in r.text
    return body["error"]


# every result is a logged decision (docs/policy.md)
DECISION_FIELDS = (
    "decision_id",
    "action",
    "severity",
    "category_severity",
    "reasons",
    "policy_version",
    "model_version",
)


def _assert_matches_offline(results: list[dict], texts: list[str], predictor) -> None:
    expected = predictor.predict(texts)
    assert len(results) == len(texts)
    for got, exp in zip(results, expected, strict=True):
        np.testing.assert_allclose(
            [got["category_scores"][n] for n in predictor.labels],
            [exp.category_scores[n] for n in predictor.labels],
            atol=ATOL,
        )
        assert got["truncated"] == exp.truncated
        assert set(got) == {"flagged", "categories", "category_scores", "truncated", *DECISION_FIELDS}
        # without --policy the model's thresholds are the policy: review exactly what is flagged
        assert got["action"] == ("review" if exp.flagged else "allow")


def test_single_text(server, tiny_predictor):
    r = httpx.post(f"{server.base}/v1/classify", json={"input": "2 bedroom apartment for rent"})
    assert r.status_code == 200
    body = r.json()
    assert re.fullmatch(r"clf-[0-9a-f]{32}", body["id"]) and r.headers["x-request-id"] == body["id"]
    assert body["model"] == {"name": "risky-ads", "version": None, "uri": str(server_model(server))}
    _assert_matches_offline(body["results"], ["2 bedroom apartment for rent"], tiny_predictor)
    res = body["results"][0]
    thresholds = {n: 0.5 for n in tiny_predictor.labels}
    assert res["categories"] == {n: res["category_scores"][n] >= thresholds[n] for n in thresholds}
    assert res["flagged"] == any(res["categories"].values())


def server_model(server) -> str:
    return server.proc.args[server.proc.args.index("--model") + 1]


def test_batch_in_order(server, tiny_predictor):
    texts = ["cheap rental flat, call 555-0100", "hot petite girls 24/7 incall", "", "work from home $$$"]
    r = httpx.post(f"{server.base}/v1/classify", json={"input": texts})
    assert r.status_code == 200
    _assert_matches_offline(r.json()["results"], texts, tiny_predictor)


def test_request_id_header_passed_through(server):
    r = httpx.post(f"{server.base}/v1/classify", json={"input": "x"}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["id"] == "abc-123"
    r = httpx.post(
        f"{server.base}/v1/classify", json={"input": "x"}, headers={"X-Request-ID": "bad id\twith ad"}
    )
    assert r.headers["x-request-id"].startswith("clf-")


@pytest.mark.parametrize("row", _probe_params({"http"}))
def test_probe_http(server, tiny_predictor, row):
    value, kind = row["value"], row["kind"]
    scored_before = _metric(httpx.get(f"{server.base}/metrics").text, "adrisk_texts_scored_total")
    r = httpx.post(f"{server.base}/v1/classify", json={"input": value}, timeout=60)
    assert r.status_code != 500, row["expect"]
    texts = value if isinstance(value, list) else [value]
    if kind == "non-string-item":
        assert r.status_code == 422
        err = _assert_error_shape(r, _texts_sent(value))
        assert "input[1]" in err["message"] and "input[2]" not in err["message"]
        return
    if kind == "wrong-shape":
        assert r.status_code == 422
        err = _assert_error_shape(r, _texts_sent(value))
        assert "'input'" in err["message"]
        # and the same value as the whole body (the typo'd key itself)
        r = httpx.post(f"{server.base}/v1/classify", json=value)
        assert r.status_code == 422 and "'input'" in _assert_error_shape(r, _texts_sent(value))["message"]
        return
    if kind == "big-batch":
        assert r.status_code == 413
        assert _assert_error_shape(r, [])["type"] == "payload_too_large"
        after = _metric(httpx.get(f"{server.base}/metrics").text, "adrisk_texts_scored_total")
        assert after == scored_before  # refused before any model work
        return
    if r.status_code == 413 and kind == "long-text":  # allowed by the probe for a documented limit
        _assert_error_shape(r, _texts_sent(value))
        return
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    _assert_matches_offline(results, texts, tiny_predictor)
    if kind == "long-text":
        assert results[0]["truncated"] is True
    if kind in ("empty", "batch-vs-single", "batch-with-empty"):
        # each text scores the same alone and inside a (padded) batch
        for t, res in zip(texts, results, strict=True):
            alone = httpx.post(f"{server.base}/v1/classify", json={"input": t}).json()["results"][0]
            mixed = httpx.post(f"{server.base}/v1/classify", json={"input": ["padding " * 40, t]}).json()[
                "results"
            ][1]
            for other in (alone, mixed):
                np.testing.assert_allclose(
                    list(other["category_scores"].values()), list(res["category_scores"].values()), atol=ATOL
                )


@pytest.mark.parametrize("row", _probe_params({"http-raw", "http-raw-bytes-hex"}))
def test_probe_http_raw(server, tiny_predictor, row):
    raw = (
        bytes.fromhex(row["input"]) if "http-raw-bytes-hex" in row["where"] else row["input"].encode("utf-8")
    )
    r = httpx.post(f"{server.base}/v1/classify", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code != 500 and "Traceback" not in r.text and "surrogates not allowed" not in r.text
    allowed = {"lone-surrogate": {200, 422}, "invalid-json": {400, 422}, "non-utf8-body": {400, 415, 422}}
    assert r.status_code in allowed.get(row["kind"], {200, 400, 413, 415, 422}), row["expect"]
    if r.status_code == 200:
        text = json.loads(raw.decode("utf-8"))["input"]
        _assert_matches_offline(r.json()["results"], [text], tiny_predictor)
        # the surrogate is scored as U+FFFD
        _assert_matches_offline(r.json()["results"], [text.replace("\ud83d", "\ufffd")], tiny_predictor)
    else:
        _assert_error_shape(r, ["unterminated", "hi \ud83d there"])


@pytest.mark.parametrize(
    "body, status, kind",
    [
        ({"input": []}, 422, "validation_error"),
        ({"input": 42}, 422, "validation_error"),
        ([1, 2], 422, "validation_error"),
        ({"input": ["ok"] * 257}, 413, "payload_too_large"),
        ({"input": ["ok", "y" * 100_001]}, 422, "validation_error"),
    ],
)
def test_bad_requests(server, body, status, kind):
    r = httpx.post(f"{server.base}/v1/classify", json=body)
    assert r.status_code == status
    assert _assert_error_shape(r, ["y" * 30])["type"] == kind


def test_oversized_body_413_before_parsing(server):
    big = b'{"input": "' + b"Sweet new girl in town " * 50_000 + b'"}'  # ~1.1 MB, over the 1 MiB limit
    r = httpx.post(f"{server.base}/v1/classify", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert _assert_error_shape(r, ["Sweet new girl in town"])["type"] == "payload_too_large"

    def chunks():  # no Content-Length: the actual bytes are counted
        yield b'{"input": "'
        for _ in range(1200):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(
        f"{server.base}/v1/classify", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413


def test_unknown_route_and_method_use_error_shape(server):
    r = httpx.get(f"{server.base}/nope")
    assert r.status_code == 404 and _assert_error_shape(r, [])["type"] == "not_found"
    r = httpx.get(f"{server.base}/v1/classify")
    assert r.status_code == 405 and _assert_error_shape(r, [])["type"] == "method_not_allowed"


def test_ops_endpoints(server, tiny_predictor):
    assert httpx.get(f"{server.base}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{server.base}/readyz").status_code == 200
    m = httpx.get(f"{server.base}/v1/model").json()
    assert m["labels"] == list(tiny_predictor.labels)
    assert m["thresholds"] == {n: 0.5 for n in tiny_predictor.labels}
    assert m["name"] == "risky-ads" and m["load_error"] is None
    spec = httpx.get(f"{server.base}/openapi.json").json()
    schema = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "input" in schema["properties"]
    assert httpx.get(f"{server.base}/docs").status_code == 200


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_32_concurrent_clients_match_offline(server, tiny_predictor):
    texts = [
        f"ad number {i}: " + "sweet girl incall " * (i % 7) + "apartment for rent" * (i % 3)
        for i in range(96)
    ]
    before = httpx.get(f"{server.base}/metrics").text

    async def client(k: int, c: httpx.AsyncClient) -> list[tuple[str, dict]]:
        out = []
        for t in texts[k::32]:
            r = await c.post(f"{server.base}/v1/classify", json={"input": t})
            assert r.status_code == 200
            out.append((t, r.json()["results"][0]))
        return out

    async def main():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*(client(k, c) for k in range(32)))

    pairs = [p for chunk in asyncio.run(main()) for p in chunk]
    assert len(pairs) == len(texts)
    _assert_matches_offline([res for _, res in pairs], [t for t, _ in pairs], tiny_predictor)
    after = httpx.get(f"{server.base}/metrics").text
    batches = _metric(after, "adrisk_batch_size_count") - _metric(before, "adrisk_batch_size_count")
    scored = _metric(after, "adrisk_batch_size_sum") - _metric(before, "adrisk_batch_size_sum")
    assert scored == len(texts)
    assert batches < len(texts), "concurrent requests were never coalesced into one batch"


def test_metrics_exposed(server):
    # this test makes its own 200 and 422 so it holds in any test order
    assert httpx.post(f"{server.base}/v1/classify", json={"input": "x"}).status_code == 200
    assert httpx.post(f"{server.base}/v1/classify", json={"input": 7}).status_code == 422
    text = httpx.get(f"{server.base}/metrics").text
    for name in (
        "adrisk_http_requests_total",
        "adrisk_http_request_duration_seconds_bucket",
        "adrisk_batch_size_bucket",
        "adrisk_queue_depth",
        "adrisk_model_info",
        "adrisk_model_version",
    ):
        assert name in text
    assert re.search(
        r'adrisk_http_requests_total\{method="POST",route="/v1/classify",status="422"\} [1-9]', text
    )
    assert re.search(
        r'adrisk_http_requests_total\{method="POST",route="/v1/classify",status="200"\} [1-9]', text
    )


def test_logs_never_contain_ad_text(server):
    """Whatever order the module's tests ran in: this test sends its own scored, refused and
    malformed requests carrying marker texts, then checks the server's log has their request lines
    and none of the texts (nor of any text sent by the tests that ran before it)."""
    markers = ["zq marker ad text one", "zq marker refused text", "zq marker malformed"]
    assert httpx.post(f"{server.base}/v1/classify", json={"input": markers[0]}).status_code == 200
    assert httpx.post(f"{server.base}/v1/classify", json={"inptu": markers[1]}).status_code == 422
    bad = b'{"input": "' + markers[2].encode() + b'"'  # unterminated JSON
    r = httpx.post(f"{server.base}/v1/classify", content=bad, headers={"content-type": "application/json"})
    assert r.status_code == 400
    lines = ("POST /v1/classify 200", "POST /v1/classify 422", "POST /v1/classify 400")
    deadline = time.monotonic() + 10
    while not all(x in server.logs() for x in lines) and time.monotonic() < deadline:
        time.sleep(0.1)  # each access line is written after its response: wait for all three
    logs = server.logs()
    assert all(x in logs for x in lines)  # the request lines are there...
    sent = [
        *markers,
        "Sweet new girl",
        "cheap rental flat",
        "hot petite girls",
        "typo in key",
        "unterminated",
        "ok text",
        "a much longer advertisement",
        "2 bedroom apartment",
        "sweet girl incall",
        "bad id",
    ]
    for t in sent:  # ...but none of the texts
        assert t not in logs, t
    assert "Traceback" not in logs
