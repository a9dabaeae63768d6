"""``POST /v1/classify``: score one ad text or a list of them."""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import APIRouter, Depends, Request

from serve.batcher import NotReady, QueueFull
from serve.decisions import DecisionRecord, new_decision_id, utc_now_iso
from serve.deps import (
    AppContext,
    BatcherDep,
    ClassifyPrincipal,
    ContextDep,
    MetricsDep,
    SettingsDep,
    StateDep,
    parse_json,
    read_body,
    require_classify,
)
from serve.errors import APIError, ErrorKind
from serve.explain import ExplainQueue, ExplainQueueFull
from serve.keys import Principal
from serve.schemas import (
    ERROR_RESPONSES,
    ClassifyResponse,
    ClassifyResult,
    ModelInfo,
    classify_request_schema,
)
from serve.settings import Settings
from serve.state import LoadedModel

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", dependencies=[Depends(require_classify)], tags=["v1"])

_JSON_TYPES = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    dict: "object",
    list: "array",
    str: "string",
}


def parse_classify(payload: Any, settings: Settings) -> list[str]:
    """The texts of a classify request, in order.

    Raises:
        APIError(validation_error): wrong shape, a non-string item (named by index: the first bad one),
            an empty list or a text over ``max_text_chars``.
        APIError(payload_too_large): more than ``max_batch_items`` texts.
    """
    if not isinstance(payload, dict) or "input" not in payload:
        raise APIError(
            ErrorKind.validation_error,
            "body must be a JSON object with the field 'input': a string or a list of strings",
        )
    inp = payload["input"]
    if isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list):
        if not inp:
            raise APIError(
                ErrorKind.validation_error, "field 'input' is an empty list; give at least one string"
            )
        if len(inp) > settings.max_batch_items:
            raise APIError(
                ErrorKind.payload_too_large,
                f"input: {len(inp)} items, over the limit of {settings.max_batch_items} per request",
            )
        for i, x in enumerate(inp):
            if not isinstance(x, str):
                raise APIError(
                    ErrorKind.validation_error,
                    f"input[{i}]: expected a string, got {_JSON_TYPES.get(type(x), 'value')}",
                )
        texts = inp
    else:
        raise APIError(
            ErrorKind.validation_error,
            f"field 'input' must be a string or a list of strings, got {_JSON_TYPES.get(type(inp), 'value')}",
        )
    for i, t in enumerate(texts):
        if len(t) > settings.max_text_chars:
            where = f"input[{i}]" if isinstance(inp, list) else "input"
            raise APIError(
                ErrorKind.validation_error,
                f"{where}: {len(t)} characters, over the limit of {settings.max_text_chars}",
            )
    return texts


def parse_explain(payload: Any, n_texts: int, settings: Settings) -> bool:
    """The request's ``explain`` flag (default false).

    Raises:
        APIError(validation_error): ``explain`` is not a boolean.
        APIError(payload_too_large): ``explain`` with more than ``max_explain_items`` texts.
    """
    explain = payload.get("explain", False)
    if not isinstance(explain, bool):
        raise APIError(
            ErrorKind.validation_error,
            f"field 'explain' must be true or false, got {_JSON_TYPES.get(type(explain), 'value')}",
        )
    if explain and n_texts > settings.max_explain_items:
        raise APIError(
            ErrorKind.payload_too_large,
            f"input: {n_texts} items, over the limit of {settings.max_explain_items} per request "
            f"with explain",
        )
    return explain


def _overloaded(queue: str, settings: Settings, metrics) -> APIError:
    """A full queue: counted, and answered 503 with ``Retry-After``."""
    metrics.rejected.inc()
    return APIError(
        ErrorKind.overloaded,
        f"server busy: the {queue} queue is full, retry later",
        headers={"Retry-After": str(settings.retry_after_s)},
    )


async def _explanations(
    queue: ExplainQueue, loaded: LoadedModel, texts: list[str], preds, settings: Settings, metrics
) -> list[dict]:
    benign = loaded.predictor.meta.label_schema.benign_label
    labels = [[n for n, on in p.categories.items() if on and n != benign] for p in preds]
    try:
        return await queue.submit(loaded.predictor, texts, labels)
    except ExplainQueueFull:
        raise _overloaded("explanation", settings, metrics) from None
    except Exception as e:  # the message may quote the input
        logger.error("explanation failed: %s", type(e).__name__)
        raise APIError(ErrorKind.internal_error, "internal error") from None


def parse_extract(payload: Any) -> bool:
    """The request's ``extract`` flag (default false). Raises APIError(validation_error) for a non-boolean."""
    extract = payload.get("extract", False)
    if not isinstance(extract, bool):
        raise APIError(
            ErrorKind.validation_error,
            f"field 'extract' must be true or false, got {_JSON_TYPES.get(type(extract), 'value')}",
        )
    return extract


def _contacts(texts: list[str]) -> list[list[dict]]:
    from signals.contacts import extract_contacts

    return [[c.to_dict() for c in extract_contacts(t)] for t in texts]


def _model_info(loaded: LoadedModel) -> ModelInfo:
    return ModelInfo(
        name=loaded.ref.name or loaded.predictor.meta.name, version=loaded.ref.version, uri=loaded.ref.uri
    )


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": classify_request_schema()}},
        }
    },
)
async def classify(
    request: Request,
    settings: SettingsDep,
    state: StateDep,
    batcher: BatcherDep,
    metrics: MetricsDep,
    ctx: ContextDep,
    principal: ClassifyPrincipal,
) -> ClassifyResponse:
    """Score one ad text or a list of them; one result per input, in order.

    Limits: body ``max_body_bytes`` (413), ``max_batch_items`` texts (413), ``max_text_chars`` per
    text (422). A full queue answers 503 with ``Retry-After``. With ``"explain": true``: at most
    ``max_explain_items`` texts (413), scored as usual, then explained on a separate queue
    (``explain_queue_size`` texts; 503 beyond) that yields to plain requests. Every result carries
    the policy's decision (action, severity, reasons, policy and model versions) and is logged.
    Needs the ``classify`` scope; the key's tenant picks the policy's tenant overrides.
    """
    body = await read_body(request, settings.max_body_bytes)
    payload = parse_json(body)
    texts = parse_classify(payload, settings)
    explain = parse_explain(payload, len(texts), settings)
    extract = parse_extract(payload)
    if state.current is None:
        raise APIError(ErrorKind.not_ready, "model not loaded yet", headers={"Retry-After": "5"})
    if ctx.decision_log is not None and ctx.decision_log.pending > settings.decision_queue_size:
        raise _overloaded("decision log", settings, metrics)
    try:
        preds, tag = await batcher.submit(texts)
        loaded = cast(LoadedModel, tag)  # the batcher tags predictions with the LoadedModel that scored them
    except QueueFull:
        raise _overloaded("scoring", settings, metrics) from None
    except NotReady:
        raise APIError(ErrorKind.not_ready, "model not loaded yet", headers={"Retry-After": "5"}) from None
    except Exception:  # logged by type in the batcher; the message may quote the input
        raise APIError(ErrorKind.internal_error, "internal error") from None
    request.state.n_texts = len(texts)
    metrics.observe_predictions(preds)  # score histograms and flag rates (no text kept)
    rid = request.state.request_id
    ctx.recent.put(rid, texts)
    decided = decide(ctx, loaded, principal, rid, texts, preds)
    exps: list[dict | None] = [None] * len(texts)
    if explain:
        assert ctx.explain_queue is not None  # set by the lifespan
        exps = list(await _explanations(ctx.explain_queue, loaded, texts, preds, settings, metrics))
    contacts: list[list[dict] | None] = [None] * len(texts)
    if extract:
        contacts = list(_contacts(texts))  # ~0.1 ms per ad: no queue needed
    results = [
        ClassifyResult.model_validate({**p.to_dict(), **d, "explanations": e, "contacts": c})
        for p, d, e, c in zip(preds, decided, exps, contacts, strict=True)
    ]
    return ClassifyResponse(id=rid, model=_model_info(loaded), results=results)


def model_version(loaded: LoadedModel) -> str | None:
    """The registry version, or ``sha256:`` and 12 hex digits of the weights for a model directory."""
    if loaded.ref.version:
        return loaded.ref.version
    sha = loaded.predictor.meta.weights_sha256
    return f"sha256:{sha[:12]}" if sha else None


def decide(
    ctx: AppContext, loaded: LoadedModel, principal: Principal, request_id: str, texts: list[str], preds
) -> list[dict]:
    """The policy's decision on each scored text (one policy snapshot for the whole request), queued
    for the decision log; returns the decision fields of each result, in order."""
    assert ctx.policy_state is not None  # set by the lifespan
    meta = loaded.predictor.meta
    policy = ctx.policy_state.engine_for(meta.labels, dict(meta.thresholds), meta.label_schema.benign_label)
    engine = policy.engine
    mversion = model_version(loaded)
    log = ctx.decision_log
    now = utc_now_iso()
    out, records = [], []
    for i, (text, pred) in enumerate(zip(texts, preds, strict=True)):
        hits = engine.rule_hits(text)
        d = engine.decide(pred.category_scores, hits, principal.tenant)
        did = new_decision_id()
        out.append(
            {
                "decision_id": did,
                "action": d.action,
                "observed_action": d.observed_action,
                "severity": d.severity,
                "category_severity": d.category_severity,
                "reasons": d.reasons,
                "policy_version": d.policy_version,
                "model_version": mversion,
            }
        )
        if log is not None:
            records.append(
                DecisionRecord(
                    decision_id=did,
                    request_id=request_id,
                    input_index=i,
                    created_at=now,
                    tenant=principal.tenant,
                    key_id=principal.key_id,
                    model_name=loaded.ref.name or meta.name,
                    model_version=mversion,
                    policy_version=d.policy_version,
                    scores=dict(pred.category_scores),
                    rule_hits=hits,
                    action=d.action,
                    observed_action=d.observed_action,
                    severity=d.severity,
                    category=d.primary_category,
                    reasons=d.reasons,
                    text_hmac=log.keys.text_hmac(text),
                )
            )
    if log is not None:
        log.append(records)
    ctx.decision_metrics.decided(out)
    return out
