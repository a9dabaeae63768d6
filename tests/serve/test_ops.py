"""Auth, overload (503 + Retry-After), readiness and failed loads, on in-thread servers with
injected models."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest


class SlowPredictor:
    """Wraps a predictor; each ``predict`` call takes at least ``delay`` seconds."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay
        self.meta, self.labels = inner.meta, inner.labels

    def predict(self, texts):
        time.sleep(self.delay)
        return self.inner.predict(texts)


@pytest.mark.parametrize("keys", ["secret-one", "secret-one, other-key"])
def test_api_keys(thread_server, keys):
    with thread_server(api_keys=keys) as srv:
        url = f"{srv.base}/v1/classify"
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "secret-one"},
            {"Authorization": "Basic secret-one"},
        ):
            r = httpx.post(url, json={"input": "Sweet new girl in town"}, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "unauthorized" and "Sweet" not in r.text
            assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{srv.base}/v1/model").status_code == 401
        ok = httpx.post(url, json={"input": "x"}, headers={"Authorization": "Bearer secret-one"})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 1
        assert (
            httpx.get(f"{srv.base}/v1/model", headers={"Authorization": "Bearer secret-one"}).status_code
            == 200
        )
        if "other-key" in keys:
            assert (
                httpx.post(
                    url, json={"input": "x"}, headers={"Authorization": "Bearer other-key"}
                ).status_code
                == 200
            )
        # probes stay open for orchestrators
        assert httpx.get(f"{srv.base}/healthz").status_code == 200
        assert httpx.get(f"{srv.base}/readyz").status_code == 200


def test_no_auth_by_default(thread_server):
    with thread_server() as srv:
        assert httpx.post(f"{srv.base}/v1/classify", json={"input": "x"}).status_code == 200


def test_queue_full_is_503_with_retry_after(thread_server, tiny_predictor):
    slow = SlowPredictor(tiny_predictor, delay=0.4)
    with thread_server(predictor=slow, queue_size=2, max_batch_size=1, max_wait_ms=0) as srv:

        def call(i):
            return httpx.post(f"{srv.base}/v1/classify", json={"input": f"ad {i}"}, timeout=30)

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(call, range(12)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        busy = [r for r in responses if r.status_code == 503]
        for r in busy:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "overloaded"
        metrics = httpx.get(f"{srv.base}/metrics").text
        assert f"adrisk_queue_rejected_total {float(len(busy))}" in metrics
        # once drained, the server answers again
        assert call(99).status_code == 200


def test_not_ready_until_loaded(thread_server, tiny_predictor, tiny_artifact):
    from datetime import datetime, timezone

    from model.uri import ModelRef
    from serve.state import LoadedModel

    gate = threading.Event()

    def loader(uri, dst):
        gate.wait(30)
        return LoadedModel(
            tiny_predictor,
            ModelRef(uri=uri, directory=tiny_artifact, name="risky-ads"),
            datetime.now(timezone.utc).isoformat(),
        )

    with thread_server(loader=loader) as srv:
        assert httpx.get(f"{srv.base}/healthz").status_code == 200
        r = httpx.get(f"{srv.base}/readyz")
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        r = httpx.post(f"{srv.base}/v1/classify", json={"input": "x"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        gate.set()
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.base}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.post(f"{srv.base}/v1/classify", json={"input": "x"}).status_code == 200


def test_failed_load_is_reported(thread_server, caplog):
    def loader(uri, dst):
        raise FileNotFoundError("no model at that path")

    caplog.set_level(logging.INFO)
    with thread_server(loader=loader) as srv:
        deadline = time.monotonic() + 10
        while "no model at that path" not in httpx.get(f"{srv.base}/readyz").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.get(f"{srv.base}/v1/model")
        assert r.status_code == 503 and "FileNotFoundError" in r.json()["error"]["message"]
    assert any("failed" in rec.getMessage() for rec in caplog.records if rec.name == "serve.state")


def test_model_failure_is_json_error_without_text(thread_server, tiny_predictor, caplog):
    """A model crash is a server fault (500), still in the error shape, and neither the body nor the
    logs quote the exception message (which may quote the input)."""

    class Broken(SlowPredictor):
        def predict(self, texts):
            raise RuntimeError(f"boom on {texts[0]}")

    caplog.set_level(logging.DEBUG)
    with thread_server(predictor=Broken(tiny_predictor, 0)) as srv:
        r = httpx.post(f"{srv.base}/v1/classify", json={"input": "Sweet new girl in town"})
        assert r.status_code == 500
        assert r.json() == {"error": {"type": "internal_error", "message": "internal error"}}
        assert httpx.get(f"{srv.base}/healthz").status_code == 200  # the worker survived
    assert "Sweet new girl" not in caplog.text and "boom" not in caplog.text
