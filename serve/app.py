"""The app factory. The model is loaded in the lifespan's background thread, never at import time;
``/readyz`` says 503 until it is serving."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.appeals import AppealStore
from serve.batcher import MicroBatcher
from serve.decisions import DecisionLog, audit_keys
from serve.decisions_metrics import DecisionMetrics
from serve.deps import AppContext
from serve.errors import ErrorKind, error_response, install_error_handlers
from serve.explain import ExplainQueue
from serve.keys import build_keyring
from serve.metrics import Metrics
from serve.openapi import install_openapi
from serve.policy_state import PolicyState
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
            default resolves the URI and loads a ``Predictor`` with ``settings.threads``.
    """
    settings = settings or Settings()
    metrics = Metrics(settings.metrics_window)
    keyring = build_keyring(settings.keys_file, settings.api_key_list())
    ctx = AppContext(
        settings=settings,
        metrics=metrics,
        recent=RecentClassifications(settings.feedback_recent),
        keyring=keyring,
        decision_metrics=DecisionMetrics(metrics.registry),
    )
    dm = ctx.decision_metrics

    def serving_labels() -> list[str] | None:
        cur = ctx.model_state.current if ctx.model_state is not None else None
        return list(cur.predictor.labels) if cur is not None else None

    def reloaded(ok: bool) -> None:
        dm.reloads.labels("ok" if ok else "failed").inc()
        if ok and policy_state.file is not None:
            dm.set_policy(policy_state.file.engine.version, "file")

    hash_key = settings.contact_hash_key.get_secret_value() if settings.contact_hash_key else None
    policy_state = PolicyState(  # a bad policy file stops here, before anything starts
        settings.policy_file,
        serving_labels,
        keyring.tenants(),
        hash_key=hash_key,
        poll_s=settings.policy_poll_s,
        on_reload=reloaded,
    )
    ctx.policy_state = policy_state
    base_loader = loader or default_loader(settings.runtime, settings.threads)

    def checked_loader(uri: str, dst: Path) -> LoadedModel:
        m = base_loader(uri, dst)
        policy_state.check_model(list(m.predictor.labels))  # a model the policy does not fit never serves
        return m

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        def loaded(m: LoadedModel) -> None:
            metrics.set_model(m.ref.name or m.predictor.meta.name, m.ref.version, m.ref.uri)
            meta = m.predictor.meta
            pol = policy_state.engine_for(meta.labels, dict(meta.thresholds), meta.label_schema.benign_label)
            dm.set_policy(pol.engine.version, pol.source)

        def batch_done(n: int, seconds: float) -> None:
            metrics.batch_size.observe(n)
            metrics.inference.observe(seconds)
            metrics.texts.inc(n)

        open_decision_log(ctx)
        state = ModelState(
            settings.model,
            checked_loader,
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
        policy_state.start()
        logger.info(
            "adrisk serve: model %s, max batch %d, max wait %.1f ms, queue %d, auth %s",
            settings.model,
            settings.max_batch_size,
            settings.max_wait_ms,
            settings.queue_size,
            "on" if ctx.keyring.enabled else "off",
        )
        try:
            yield
        finally:
            policy_state.stop()
            batcher.stop()
            ctx.explain_queue.stop()
            state.stop()
            if ctx.decision_log is not None:
                ctx.decision_log.stop()  # commits what is queued

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

    install_openapi(app, settings, serving_labels)  # limits and labels this server enforces

    app.add_middleware(RequestContext, metrics=metrics)
    return app


def open_decision_log(ctx: AppContext) -> None:
    """Open the decision log and its appeals (unless ``decision_log`` is off), store the file policy's
    version in it and start its writer.

    Raises:
        DecisionLogError: no usable audit key, or the policy's version is logged with other content.
    """
    settings, dm = ctx.settings, ctx.decision_metrics
    if not settings.decision_log:
        return
    url = settings.decisions_url
    try:
        secret = settings.audit_key.get_secret_value() if settings.audit_key else None
        log = DecisionLog(
            url,
            audit_keys(url or DecisionLog.default_url(), secret, create=True),
            on_written=dm.log_written.inc,
            on_error=dm.log_errors.inc,
        )
        assert ctx.policy_state is not None
        ctx.policy_state.attach(log.register_policy)
    except Exception as e:  # one line: the log's URL and key are the operator's, never ad text
        logger.error("decision log: %s", e)
        raise
    appeals = AppealStore(log)
    dm.load_appeals(appeals.outcome_counts())
    dm.watch_pending(lambda: log.pending)
    log.start()
    ctx.decision_log, ctx.appeals = log, appeals


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
