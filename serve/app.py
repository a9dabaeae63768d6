"""The app factory. The model is loaded in the lifespan's background thread, never at import time;
``/readyz`` says 503 until it is serving."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.batcher import MicroBatcher
from serve.deps import AppContext
from serve.errors import ErrorKind, error_response, install_error_handlers
from serve.explain import ExplainQueue
from serve.metrics import Metrics
from serve.openapi import install_openapi
from serve.routes import ROUTERS
from serve.settings import Settings
from serve.state import LoadedModel, Loader, ModelState, RecentClassifications, default_loader

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")  # ASGI header names are lower-case bytes
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings: Settings | None = None, loader: Loader | None = None) -> FastAPI:
    """Build the API.

    Args:
        settings: server settings (default: from ``ADRISK_*`` environment variables).
        loader: ``(uri, download_dir) -> LoadedModel`` (tests inject slow or failing loaders);
            default resolves the URI and loads a ``Predictor`` with ``settings.torch_threads``.
    """
    settings = settings or Settings()
    metrics = Metrics(settings.metrics_window)
    ctx = AppContext(
        settings=settings, metrics=metrics, recent=RecentClassifications(settings.feedback_recent)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        def loaded(m: LoadedModel) -> None:
            metrics.set_model(m.ref.name or m.predictor.meta.name, m.ref.version, m.ref.uri)

        def batch_done(n: int, seconds: float) -> None:
            metrics.batch_size.observe(n)
            metrics.inference.observe(seconds)
            metrics.texts.inc(n)

        state = ModelState(
            settings.model,
            loader or default_loader(settings.runtime, settings.torch_threads),
            follow_alias_s=settings.follow_alias,
            download_dir=settings.download_dir,
            on_loaded=loaded,
            on_failure=metrics.load_failures.inc,
        )
        batcher = MicroBatcher(
            state.get,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            on_batch=batch_done,
            on_depth=metrics.queue_depth.set,
        )
        ctx.model_state, ctx.batcher = state, batcher
        ctx.explain_queue = ExplainQueue(lambda: batcher.depth, queue_size=settings.explain_queue_size)
        batcher.start()
        state.start()
        logger.info(
            "adrisk serve: model %s, max batch %d, max wait %.1f ms, queue %d, auth %s",
            settings.model,
            settings.max_batch_size,
            settings.max_wait_ms,
            settings.queue_size,
            "on" if settings.api_key_list() else "off",
        )
        try:
            yield
        finally:
            batcher.stop()
            ctx.explain_queue.stop()
            state.stop()

    app = FastAPI(
        title="adrisk",
        version="1",
        lifespan=lifespan,
        description="Flags risky classified ads (commercial sex, trafficking indicators, scams).",
    )
    app.state.ctx = ctx  # read only through serve/deps.py
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    def serving_labels() -> list[str] | None:
        cur = ctx.model_state.current if ctx.model_state is not None else None
        return list(cur.predictor.labels) if cur is not None else None

    install_openapi(app, settings, serving_labels)  # limits and labels this server enforces

    app.add_middleware(RequestContext, metrics=metrics)
    return app


class RequestContext:
    """Per-request context as pure ASGI middleware: the request id (the client's ``X-Request-ID`` when
    it is safe to echo, else a new one) in ``request.state.request_id`` and the response header, the
    request counter and latency histogram, and one log line (method, route template, status, ms,
    number of texts; never a body or query string).

    Pure ASGI rather than ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``, which adds a
    task and memory streams to every request): the per-request overhead bounds the server's request
    rate under load (``bench/serve_load.py``). An exception that escapes the app is answered 500 with
    the standard error body when no response has started, and logged by type only: uvicorn's traceback
    could quote the input.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == _REQUEST_ID_KEY), b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else f"clf-{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _REQUEST_ID_KEY]
                message = {**message, "headers": [*headers, (_REQUEST_ID_KEY, rid.encode("latin-1"))]}
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:  # not re-raised: uvicorn would log a traceback quoting the input
            logger.error("%s unhandled %s on %s %s", rid, type(e).__name__, scope["method"], scope["path"])
            if not started:
                await error_response(ErrorKind.internal_error, "internal error")(scope, receive, send_with_id)
        seconds = time.perf_counter() - t0
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(route, scope["method"], str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        # request line without query string or body: ad text never reaches the logs
        logger.info(
            "%s %s %s %d %.1fms n=%s",
            rid,
            scope["method"],
            route,
            status,
            seconds * 1000,
            state.get("n_texts", "-"),
        )
