"""Decisions after the fact: statements of reasons, appeals, and the policy in force.

``GET /v1/decisions/{id}/statement`` (``classify`` scope, own tenant) returns the DSA statement of
reasons of a decision that restricted an ad. ``POST /v1/appeals`` (``classify``) opens an appeal on
such a decision; ``GET /v1/appeals/{id}`` shows it; ``POST /v1/appeals/{id}/resolve`` (``admin``)
closes it upheld or overturned, an overturned decision becoming a feedback row with the moderator's
labels. ``GET /v1/policy`` (``admin``) names the policy in force and its last failed reload.
Admin keys see every tenant's decisions and appeals; others only their own tenant's.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from serve.appeals import Appeal, AppealError, AppealStore
from serve.decisions import DecisionLog
from serve.deps import (
    AdminPrincipal,
    BatcherDep,
    ClassifyPrincipal,
    ContextDep,
    SettingsDep,
    StateDep,
    parse_json,
    read_body,
)
from serve.errors import APIError, ErrorKind, describe_loc
from serve.keys import Principal
from serve.routes.feedback import model_labels_of
from serve.schemas import (
    ERROR_RESPONSES,
    AppealRequest,
    AppealResolution,
    AppealResponse,
    PolicyInfo,
    StatementResponse,
)
from serve.statements import statement_of_reasons

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["decisions"])

DECISION_ID = r"^dec-[0-9a-f]{32}$"
APPEAL_ID = r"^apl-[0-9a-f]{32}$"
DecisionId = Annotated[str, Path(pattern=DECISION_ID, description="a classify result's decision_id")]
AppealId = Annotated[str, Path(pattern=APPEAL_ID, description="an appeal's id")]
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_RESPONSES: dict[int | str, dict] = {**ERROR_RESPONSES, 409: ERROR_RESPONSES[404]}
_APPEAL_ERRORS = {"not_found": ErrorKind.not_found, "conflict": ErrorKind.conflict}


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _scrub(value: Any) -> Any:
    """Lone UTF-16 surrogates (JSON ``\\ud83d``) in strings as U+FFFD, as the normaliser does:
    storable (UTF-8 databases refuse them) and hashed like the classified text."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


async def _parse(request: Request, limit: int, model: type[BaseModel]) -> Any:
    """The body as ``model`` (bounded by ``limit`` bytes); errors name fields, never values."""
    payload = _scrub(parse_json(await read_body(request, limit)))
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(
            x if isinstance(x, int) or _FIELD.match(str(x)) else "<field>" for x in err.get("loc", ())
        )
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        raise APIError(ErrorKind.validation_error, f"{describe_loc(loc)}: {msg}") from None


def _log(ctx) -> DecisionLog:
    if ctx.decision_log is None:
        raise APIError(ErrorKind.not_found, "this server keeps no decision log (decision_log is off)")
    return ctx.decision_log


def _appeals(ctx) -> AppealStore:
    _log(ctx)
    assert ctx.appeals is not None
    return ctx.appeals


def _appeal_error(e: AppealError) -> APIError:
    return APIError(_APPEAL_ERRORS[e.kind], str(e))


def _appeal_response(a: Appeal) -> AppealResponse:
    return AppealResponse(
        id=a.id,
        decision_id=a.decision_id,
        status=a.status,
        category=a.category,
        opened_at=a.opened_at,
        resolved_at=a.resolved_at,
        reviewer=a.reviewer,
        labels=a.labels,
        feedback_id=a.feedback_id,
    )


def _sees(principal: Principal, tenant: str) -> bool:
    return "admin" in principal.scopes or principal.tenant == tenant


@router.get("/decisions/{decision_id}/statement", response_model=StatementResponse, responses=ERROR_RESPONSES)
async def statement(
    decision_id: DecisionId, ctx: ContextDep, principal: ClassifyPrincipal
) -> StatementResponse:
    """The DSA statement of reasons of a decision that restricted an ad (docs/policy.md, "Statement
    mapping"). 404: unknown, another tenant's, or a decision that restricted nothing."""
    log = _log(ctx)
    row = await run_in_threadpool(log.get, decision_id)
    if row is None or not _sees(principal, row["tenant"]):
        raise APIError(ErrorKind.not_found, f"decision {decision_id} not found")
    pol = await run_in_threadpool(log.policy, row["policy_version"])
    sor = statement_of_reasons(row, pol) if pol is not None else None
    if sor is None:
        raise APIError(
            ErrorKind.not_found,
            f"decision {decision_id} acted {row['action']!r}, which the policy maps to no restriction: "
            "no statement of reasons",
        )
    return StatementResponse(
        decision_id=decision_id,
        action=row["action"],
        policy_version=row["policy_version"],
        model_version=row["model_version"],
        statement=sor,
    )


@router.post(
    "/appeals",
    status_code=201,
    response_model=AppealResponse,
    responses=_RESPONSES,
    openapi_extra=_body_schema(AppealRequest),
)
async def open_appeal(
    request: Request, settings: SettingsDep, ctx: ContextDep, principal: ClassifyPrincipal
) -> AppealResponse:
    """Open an appeal on a decision that restricted an ad. 404: unknown decision (or another
    tenant's); 409: an appeal on it is already open, or the decision restricted nothing."""
    req: AppealRequest = await _parse(request, settings.max_body_bytes, AppealRequest)
    store = _appeals(ctx)
    try:
        appeal = await run_in_threadpool(
            store.open,
            req.decision_id,
            principal.tenant,
            "admin" in principal.scopes,
            principal.key_id,
            req.statement,
        )
    except AppealError as e:
        raise _appeal_error(e) from None
    ctx.decision_metrics.appeal(appeal.category, "opened")
    logger.info("appeal %s opened on %s", appeal.id, appeal.decision_id)
    return _appeal_response(appeal)


@router.get("/appeals/{appeal_id}", response_model=AppealResponse, responses=ERROR_RESPONSES)
async def get_appeal(appeal_id: AppealId, ctx: ContextDep, principal: ClassifyPrincipal) -> AppealResponse:
    """An appeal's state (404 for an unknown appeal or another tenant's)."""
    store = _appeals(ctx)
    try:
        appeal = await run_in_threadpool(store.get, appeal_id, principal.tenant, "admin" in principal.scopes)
    except AppealError as e:
        raise _appeal_error(e) from None
    return _appeal_response(appeal)


async def _overturn_feedback(
    ctx, state, batcher, row: dict, req: AppealResolution, principal: Principal
) -> int:
    """The feedback row an overturned decision becomes: the moderator's labels on the decision's text
    (from the body, else the server's memory of the request), checked against its keyed hash."""
    log = _log(ctx)
    cur = state.current
    if cur is None:
        raise APIError(ErrorKind.not_ready, "model not loaded yet", headers={"Retry-After": "5"})
    labels = req.labels
    if labels is None:
        raise APIError(ErrorKind.validation_error, "labels: required to overturn ([] = benign)")
    known = list(cur.predictor.labels)
    unknown = [i for i, x in enumerate(labels) if x not in known]
    if unknown:
        raise APIError(
            ErrorKind.validation_error,
            f"labels[{unknown[0]}]: unknown label; this model's labels are {known}",
        )
    text = req.text
    if text is None:
        texts = ctx.recent.get(row["request_id"])
        text = texts[row["input_index"]] if texts is not None and row["input_index"] < len(texts) else None
        if text is None or log.keys.text_hmac(text) != row["text_hmac"]:
            raise APIError(
                ErrorKind.conflict,
                "text: required (the server no longer holds this decision's request; the log keeps no text)",
            )
    elif log.keys.text_hmac(text) != row["text_hmac"]:
        raise APIError(ErrorKind.conflict, "text: does not match the decision's text hash")
    model_labels = await model_labels_of(batcher, text)
    store = ctx.feedback_store()
    return await run_in_threadpool(
        lambda: store.add(
            text,
            sorted(set(labels)),
            req.reviewer,
            None,
            row["request_id"],
            row["model_name"],
            row["model_version"],
            key_id=principal.key_id,
            tenant=row["tenant"],
            model_labels=model_labels,
        )
    )


@router.post(
    "/appeals/{appeal_id}/resolve",
    response_model=AppealResponse,
    responses=_RESPONSES,
    openapi_extra=_body_schema(AppealResolution),
)
async def resolve_appeal(
    appeal_id: AppealId,
    request: Request,
    settings: SettingsDep,
    state: StateDep,
    batcher: BatcherDep,
    ctx: ContextDep,
    principal: AdminPrincipal,
) -> AppealResponse:
    """Resolve an open appeal (``admin`` scope): ``upheld`` keeps the decision; ``overturned`` records
    the moderator's ``labels`` as feedback on the ad (``text`` checked against the decision). 404:
    unknown appeal; 409: already resolved, or the text missing (the server no longer holds the
    request) or not the decision's; 422: labels missing or unknown."""
    req: AppealResolution = await _parse(request, settings.max_body_bytes, AppealResolution)
    store = _appeals(ctx)
    try:
        appeal = await run_in_threadpool(store.get, appeal_id, principal.tenant, True)
    except AppealError as e:
        raise _appeal_error(e) from None
    if appeal.status != "open":
        raise APIError(ErrorKind.conflict, f"appeal {appeal_id} is already resolved ({appeal.status})")
    feedback_id = None
    if req.outcome == "overturned":
        row = await run_in_threadpool(_log(ctx).get, appeal.decision_id)
        assert row is not None  # an appeal is opened on a logged decision
        feedback_id = await _overturn_feedback(ctx, state, batcher, row, req, principal)
    try:
        done = await run_in_threadpool(
            store.resolve, appeal_id, req.outcome, req.reviewer, req.labels, principal.key_id, feedback_id
        )
    except AppealError as e:
        raise _appeal_error(e) from None
    ctx.decision_metrics.appeal(done.category, done.status)
    logger.info("appeal %s resolved %s", done.id, done.status)
    return _appeal_response(done)


@router.get("/policy", response_model=PolicyInfo, responses=ERROR_RESPONSES)
async def policy_info(ctx: ContextDep, state: StateDep, principal: AdminPrincipal) -> PolicyInfo:
    """The policy in force (``admin`` scope): version, source, and the last failed reload, if any."""
    ps = ctx.policy_state
    assert ps is not None
    cur = state.current
    if ps.file is not None:
        loaded = ps.file
    elif cur is not None:
        meta = cur.predictor.meta
        loaded = ps.engine_for(meta.labels, dict(meta.thresholds), meta.label_schema.benign_label)
    else:
        raise APIError(
            ErrorKind.not_ready,
            "model not loaded yet (its thresholds are the policy)",
            headers={"Retry-After": "5"},
        )
    pol = loaded.engine.policy
    return PolicyInfo(
        version=pol.version,
        source=loaded.source,
        path=str(ps.path) if ps.path else None,
        loaded_at=loaded.loaded_at,
        observe_only=pol.observe_only,
        actions=list(pol.actions),
        severity_levels=list(pol.severity_levels),
        tenants=sorted(pol.tenants),
        reload_error=ps.reload_error,
    )
