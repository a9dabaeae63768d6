"""Dependencies of the routes, in one module: the app's context (settings, model state, batcher,
metrics, feedback memory and store, policy and decision log), API-key auth with scopes
(``serve.keys``), and reading a bounded JSON body.

Routes take what they need as ``Annotated`` dependencies (``SettingsDep``, ``StateDep``, ...) and
never touch ``app.state`` themselves; tests override ``get_context``-based dependencies through
``create_app(settings, loader=...)``.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect

from serve.batcher import MicroBatcher
from serve.errors import APIError, ErrorKind
from serve.keys import ANONYMOUS, Keyring, Principal
from serve.metrics import Metrics
from serve.settings import Settings
from serve.state import ModelState

if TYPE_CHECKING:
    from serve.appeals import AppealStore
    from serve.decisions import DecisionLog
    from serve.decisions_metrics import DecisionMetrics
    from serve.explain import ExplainQueue
    from serve.feedback_store import FeedbackStore
    from serve.policy_state import PolicyState
    from serve.state import RecentClassifications


@dataclass
class AppContext:
    """Everything a request may need, built once by ``create_app`` (``model_state`` and ``batcher``
    are filled in by the lifespan, before the first request is served)."""

    settings: Settings
    metrics: Metrics
    recent: RecentClassifications
    keyring: Keyring = field(default_factory=Keyring)
    model_state: ModelState | None = None
    batcher: MicroBatcher | None = None
    explain_queue: ExplainQueue | None = None
    policy_state: PolicyState | None = None
    decision_log: DecisionLog | None = None
    appeals: AppealStore | None = None
    decision_metrics: DecisionMetrics = None  # type: ignore[assignment]  # set by create_app
    _feedback_store: FeedbackStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def feedback_store(self) -> FeedbackStore:
        """The feedback store, created on first use (a server nobody sends feedback to writes no file)."""
        with self._lock:
            if self._feedback_store is None:
                from serve.feedback_store import FeedbackStore

                self._feedback_store = FeedbackStore(self.settings.feedback_url)
            return self._feedback_store


async def get_context(request: Request) -> AppContext:
    return request.app.state.ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings(ctx: ContextDep) -> Settings:
    return ctx.settings


async def get_state(ctx: ContextDep) -> ModelState:
    assert ctx.model_state is not None  # set by the lifespan before requests are served
    return ctx.model_state


async def get_batcher(ctx: ContextDep) -> MicroBatcher:
    assert ctx.batcher is not None
    return ctx.batcher


async def get_metrics(ctx: ContextDep) -> Metrics:
    return ctx.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ModelState, Depends(get_state)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def _authenticate(request: Request, keyring: Keyring) -> Principal:
    """The request's principal: its ``Authorization: Bearer <key>`` looked up in the keyring (auth off:
    the anonymous principal with every scope). Stored in ``request.state.principal``.

    Raises:
        APIError(unauthorized): missing or unknown key.
    """
    if not keyring.enabled:
        principal = ANONYMOUS
    else:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Starlette decodes header bytes as latin-1; re-encoding as latin-1 gives back the bytes the
        # client sent, so a non-ASCII key sent as UTF-8 hashes like ``key.encode("utf-8")``.
        found = keyring.authenticate(given.strip().encode("latin-1", "replace"))
        if scheme.lower() != "bearer" or found is None:
            raise APIError(
                ErrorKind.unauthorized,
                "missing or invalid API key (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = found
    request.state.principal = principal
    return principal


async def require_api_key(request: Request, ctx: ContextDep) -> Principal:
    """Any valid key, whatever its scopes (``ADRISK_API_KEYS`` / ``--keys``; none: auth off).

    Raises:
        APIError(unauthorized): missing or unknown key.
    """
    return _authenticate(request, ctx.keyring)


def _scope_dependency(scope: str):
    async def require_scope(request: Request, ctx: ContextDep) -> Principal:
        principal = _authenticate(request, ctx.keyring)
        if scope not in principal.scopes:
            raise APIError(
                ErrorKind.forbidden,
                f"this API key lacks the {scope!r} scope (it has: {', '.join(sorted(principal.scopes))})",
            )
        return principal

    require_scope.__doc__ = f"""A valid key with the ``{scope}`` scope.

    Raises:
        APIError(unauthorized): missing or unknown key.
        APIError(forbidden): the key lacks the scope (403).
    """
    return require_scope


# one dependency object per scope: FastAPI runs a dependency once per request by identity
require_classify = _scope_dependency("classify")
require_feedback = _scope_dependency("feedback")
require_admin = _scope_dependency("admin")
ClassifyPrincipal = Annotated[Principal, Depends(require_classify)]
FeedbackPrincipal = Annotated[Principal, Depends(require_feedback)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]


SUPPORTED_ENCODINGS = ("gzip", "identity")
_ENCODING_SHOWN = re.compile(r"[^A-Za-z0-9 ,._-]")


def _content_encoding(request: Request) -> str:
    """``identity`` or ``gzip`` (``x-gzip``), from the Content-Encoding header.

    Raises:
        APIError(unsupported_media_type): any other (or a stacked) encoding; the message names it.
    """
    raw = request.headers.get("content-encoding", "")
    enc = raw.strip().lower()
    if enc in ("", "identity"):
        return "identity"
    if enc in ("gzip", "x-gzip"):
        return "gzip"
    shown = _ENCODING_SHOWN.sub("?", raw.strip())[:40]
    raise APIError(
        ErrorKind.unsupported_media_type,
        f"Content-Encoding {shown!r} is not supported; send the body uncompressed or as gzip",
    )


class _Gunzip:
    """Incremental gzip decoding (RFC 1952, several members allowed) that never produces more than
    ``limit + 1`` bytes, so a zip bomb costs at most ``limit`` bytes of memory (zlib)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.out: list[bytes] = []
        self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def _too_large(self) -> APIError:
        return APIError(
            ErrorKind.payload_too_large, f"request body over the {self.limit}-byte limit (decompressed)"
        )

    def feed(self, data: bytes) -> None:
        while data:
            try:
                part = self._d.decompress(data, self.limit + 1 - self.size)
            except zlib.error:
                raise APIError(
                    ErrorKind.invalid_encoding, "body is not valid gzip (Content-Encoding: gzip)"
                ) from None
            self.size += len(part)
            if self.size > self.limit:
                raise self._too_large()
            self.out.append(part)
            if self._d.unconsumed_tail:
                data = self._d.unconsumed_tail
            elif self._d.eof and self._d.unused_data:  # the next gzip member
                data = self._d.unused_data
                self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            else:
                data = b""

    def finish(self) -> bytes:
        if not self._d.eof:
            raise APIError(ErrorKind.invalid_encoding, "body is not valid gzip (truncated)")
        return b"".join(self.out)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes by its Content-Length or its actual
    size, before it is parsed.

    ``Content-Encoding: gzip`` bodies are decompressed as they arrive; ``limit`` applies to the
    compressed and to the decompressed size (a zip bomb is a 413 after at most ``limit`` bytes).

    Raises:
        APIError(payload_too_large): over ``limit`` (sent or decompressed).
        APIError(unsupported_media_type): a Content-Encoding other than gzip / identity (415).
        APIError(invalid_encoding): a gzip body that is not valid gzip.
        APIError(invalid_json): the client disconnected mid-body.
    """
    encoding = _content_encoding(request)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(ErrorKind.payload_too_large, f"request body over the {limit}-byte limit")
    gunzip = _Gunzip(limit) if encoding == "gzip" else None
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(ErrorKind.payload_too_large, f"request body over the {limit}-byte limit")
            if gunzip is not None:
                gunzip.feed(chunk)
            else:
                chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-body: its fault, not a server error
        raise APIError(ErrorKind.invalid_json, "request body incomplete: the client disconnected") from None
    return gunzip.finish() if gunzip is not None else b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Decode a UTF-8 JSON body. Lone surrogate escapes (``\\ud83d``) are kept; the model's normaliser
    replaces them.

    Raises:
        APIError(invalid_encoding | invalid_json): not UTF-8, or not JSON (position only in the message).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(ErrorKind.invalid_encoding, f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(
            ErrorKind.invalid_json, f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise APIError(ErrorKind.invalid_json, "body is nested too deeply") from None
    except ValueError:  # e.g. an integer literal over Python's 4300-digit conversion limit
        raise APIError(
            ErrorKind.invalid_json, "body is not valid JSON: a number literal is too long"
        ) from None
