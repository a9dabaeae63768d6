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


def test_a_loaded_model_is_frozen_out_of_the_cyclic_gc(tmp_path):
    """After each load the model's objects sit in gc's permanent generation (``gc.freeze``), so a full
    collection on some request does not walk them; a later swap unfreezes first."""
    import gc
    from types import SimpleNamespace

    from serve.state import ModelState

    class Model:  # stands in for a predictor; tracked by the cyclic gc like the real one's objects
        pass

    def load(uri, dst):
        return SimpleNamespace(
            predictor=Model(), ref=SimpleNamespace(name="m", version="1", run_id=None, directory=tmp_path)
        )

    gc.unfreeze()
    try:
        state = ModelState("unused", load, download_dir=str(tmp_path))
        state._try_load(None)
        frozen = gc.get_freeze_count()
        assert frozen > 0 and state.current is not None
        state._try_load(None)  # a swap: unfrozen, collected, frozen again
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_serve_load_bench_raw_client_round_trips(thread_server):
    """bench/serve_load.py's minimal keep-alive client reads every response (a mis-framed read would
    hang or count errors)."""
    import asyncio
    import importlib.util
    from pathlib import Path

    from tests.serve.conftest import wait_ready

    path = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with thread_server() as srv:
        wait_ready(srv.base)
        for kind in ("raw", "httpx"):
            r = asyncio.run(bench._drive(srv.base, 4, 5, 60, kind))
            assert r["requests"] == 20 and r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0
