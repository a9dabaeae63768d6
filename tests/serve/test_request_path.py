"""The per-request path: no thread-pool hop for a /v1 dependency, and the request-context middleware.

FastAPI runs a plain-``def`` dependency in its thread pool (a thread hop per dependency per request);
for the trivial lookups in ``serve/deps.py`` that hop cost more than the lookup and capped the
server's request rate (measured with ``bench/serve_load.py``, docs/performance.md)."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from serve.routes import ROUTERS


def _calls(dependant):
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def test_v1_dependencies_are_coroutines():
    checked = 0
    for route in (r for router in ROUTERS for r in router.routes):
        if isinstance(route, APIRoute) and route.path.startswith("/v1"):
            for call in _calls(route.dependant):
                assert inspect.iscoroutinefunction(call), (
                    f"{route.path}: {call.__name__} runs in the thread pool"
                )
                checked += 1
    assert checked >= 10  # the classify, model and feedback routes' dependencies were seen


def test_request_context_middleware_answers_an_escaped_exception_without_echoing_it(caplog):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings

    app = create_app(Settings(model="unused"))

    async def boom():
        raise RuntimeError("call 555-0100, sweet new girl")  # personal data in the message

    app.add_api_route("/boom", boom)
    with caplog.at_level("INFO"):
        r = TestClient(app, raise_server_exceptions=False).get("/boom", headers={"X-Request-ID": "abc-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "abc-1"
    assert r.json()["error"]["type"] == "internal_error"
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "abc-1 unhandled RuntimeError" in logged and "abc-1 GET /boom 500" in logged
    assert "555" not in logged and "sweet" not in logged and "555" not in r.text
