"""HTTP routes: ``/v1/classify``, ``/v1/model`` (API-key protected when keys are set), ``/healthz``,
``/readyz`` and ``/metrics``."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from serve.batcher import MicroBatcher, NotReady, QueueFull
from serve.errors import APIError, ErrorKind, error_response
from serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    ErrorBody,
    ModelDetails,
    ModelInfo,
    Status,
)
from serve.settings import Settings
from serve.state import LoadedModel, ModelState

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 413, 422, 503)
}


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_state(request: Request) -> ModelState:
    return request.app.state.model_state


def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


def require_api_key(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """With ``ADRISK_API_KEYS`` set, require ``Authorization: Bearer <key>`` (constant-time compare).

    Raises:
        APIError(unauthorized): missing or unknown key.
    """
    keys = settings.api_key_list()
    if not keys:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Starlette decodes header bytes as latin-1; re-encoding as latin-1 gives back the bytes the
    # client sent, so a non-ASCII key sent as UTF-8 compares equal to ``key.encode("utf-8")``.
    given_b = given.strip().encode("latin-1", "replace")
    ok = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        ok |= hmac.compare_digest(given_b, key.encode("utf-8"))
    if scheme.lower() != "bearer" or not ok:
        raise APIError(ErrorKind.unauthorized, "missing or invalid API key (Authorization: Bearer <key>)",
                       headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ModelState, Depends(get_state)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["v1"])
ops = APIRouter(tags=["operations"])


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes by its Content-Length or its actual
    size, before it is parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(ErrorKind.payload_too_large, f"request body over the {limit}-byte limit")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(ErrorKind.payload_too_large, f"request body over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-body: its fault, not a server error
        raise APIError(ErrorKind.invalid_json, "request body incomplete: the client disconnected") from None
    return b"".join(chunks)


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
        raise APIError(ErrorKind.invalid_json, f"body is not valid JSON: {e.msg} at line {e.lineno} "
                                               f"column {e.colno}") from None
    except RecursionError:
        raise APIError(ErrorKind.invalid_json, "body is nested too deeply") from None
    except ValueError:  # e.g. an integer literal over Python's 4300-digit conversion limit
        raise APIError(ErrorKind.invalid_json, "body is not valid JSON: a number literal is too long") from None


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", dict: "object",
               list: "array", str: "string"}


def parse_classify(payload: Any, settings: Settings) -> list[str]:
    """The texts of a classify request, in order.

    Raises:
        APIError(validation_error): wrong shape, a non-string item (named by index: the first bad one),
            an empty list or a text over ``max_text_chars``.
        APIError(payload_too_large): more than ``max_batch_items`` texts.
    """
    if not isinstance(payload, dict) or "input" not in payload:
        raise APIError(ErrorKind.validation_error,
                       "body must be a JSON object with the field 'input': a string or a list of strings")
    inp = payload["input"]
    if isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list):
        if not inp:
            raise APIError(ErrorKind.validation_error, "field 'input' is an empty list; give at least one string")
        if len(inp) > settings.max_batch_items:
            raise APIError(ErrorKind.payload_too_large,
                           f"input: {len(inp)} items, over the limit of {settings.max_batch_items} per request")
        for i, x in enumerate(inp):
            if not isinstance(x, str):
                raise APIError(ErrorKind.validation_error,
                               f"input[{i}]: expected a string, got {_JSON_TYPES.get(type(x), 'value')}")
        texts = inp
    else:
        raise APIError(ErrorKind.validation_error,
                       f"field 'input' must be a string or a list of strings, got {_JSON_TYPES.get(type(inp), 'value')}")
    for i, t in enumerate(texts):
        if len(t) > settings.max_text_chars:
            where = f"input[{i}]" if isinstance(inp, list) else "input"
            raise APIError(ErrorKind.validation_error,
                           f"{where}: {len(t)} characters, over the limit of {settings.max_text_chars}")
    return texts


def _model_info(loaded: LoadedModel) -> ModelInfo:
    return ModelInfo(name=loaded.ref.name or loaded.predictor.meta.name, version=loaded.ref.version,
                     uri=loaded.ref.uri)


@v1.post("/classify", response_model=ClassifyResponse, responses=_ERRORS,
         openapi_extra={"requestBody": {"required": True, "content": {
             "application/json": {"schema": ClassifyRequest.model_json_schema()}}}})
async def classify(request: Request, settings: SettingsDep, state: StateDep, batcher: BatcherDep) -> ClassifyResponse:
    """Score one ad text or a list of them; one result per input, in order.

    Limits: body ``max_body_bytes`` (413), ``max_batch_items`` texts (413), ``max_text_chars`` per
    text (422). A full queue answers 503 with ``Retry-After``.
    """
    body = await read_body(request, settings.max_body_bytes)
    texts = parse_classify(parse_json(body), settings)
    if state.current is None:
        raise APIError(ErrorKind.not_ready, "model not loaded yet", headers={"Retry-After": "5"})
    try:
        preds, loaded = await batcher.submit(texts)
    except QueueFull:
        request.app.state.metrics.rejected.inc()
        raise APIError(ErrorKind.overloaded, "server busy: the scoring queue is full, retry later",
                       headers={"Retry-After": str(settings.retry_after_s)}) from None
    except NotReady:
        raise APIError(ErrorKind.not_ready, "model not loaded yet", headers={"Retry-After": "5"}) from None
    except Exception:  # logged by type in the batcher; the message may quote the input
        raise APIError(ErrorKind.internal_error, "internal error") from None
    request.state.n_texts = len(texts)
    request.app.state.recent.put(request.state.request_id, texts)
    return ClassifyResponse(id=request.state.request_id, model=_model_info(loaded),
                            results=[ClassifyResult(**p.to_dict()) for p in preds])


@v1.get("/model", response_model=ModelDetails, responses=_ERRORS)
async def model_details(state: StateDep) -> ModelDetails:
    """The serving model: name, version, URI, labels, thresholds, metrics, and the last failed load."""
    cur = state.current
    err = state.load_error
    if cur is None:
        msg = "model not loaded yet" + (f"; last load failed: {err['error']}" if err else "")
        raise APIError(ErrorKind.not_ready, msg, headers={"Retry-After": "5"})
    meta = cur.predictor.meta
    return ModelDetails(name=cur.ref.name or meta.name, version=cur.ref.version, uri=cur.ref.uri,
                        labels=list(meta.labels), thresholds=dict(meta.thresholds), metrics=dict(meta.metrics),
                        loaded_at=cur.loaded_at, follow_alias_s=state.follow_alias_s, load_error=err)


@ops.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """The process is alive (no model needed)."""
    return Status(status="ok")


@ops.get("/readyz", response_model=Status, responses={503: {"model": ErrorBody}})
async def readyz(state: StateDep):
    """200 once a model is loaded, 503 before (with the last load error, if any)."""
    cur = state.current
    if cur is None:
        err = state.load_error
        return error_response(ErrorKind.not_ready, "model not loaded" + (f": {err['error']}" if err else ""))
    return Status(status="ready", model_version=cur.ref.version)


@ops.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
