"""``POST /v1/feedback``: a moderator's decision on an ad, recorded in the feedback store
(``serve.feedback_store``, SQLAlchemy; ``sqlite:///feedback.db`` unless ``ADRISK_FEEDBACK_URL`` says
otherwise) for ``adrisk feedback export`` to turn into training data.

The ad is given as ``text``, or as a reference to an earlier answer of this server:
``classification_id`` (the ``id`` / ``X-Request-ID`` of a ``/v1/classify`` answer) and
``input_index`` (which input of that request). The server keeps the texts of the last
``feedback_recent`` classify requests in memory only (lost on restart; 0 turns references off).
"""

from __future__ import annotations

import difflib
import logging
import re
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from serve.batcher import NotReady, QueueFull
from serve.deps import (
    BatcherDep,
    ContextDep,
    FeedbackPrincipal,
    SettingsDep,
    StateDep,
    parse_json,
    read_body,
    require_feedback,
)
from serve.errors import APIError, ErrorKind
from serve.feedback_store import as_utc
from serve.schemas import ERROR_RESPONSES, FeedbackRequest, FeedbackResponse
from serve.settings import Settings

logger = logging.getLogger(__name__)

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _without_surrogates(text: str) -> str:
    """Lone UTF-16 surrogates (JSON ``\\ud83d``) as U+FFFD, as the normaliser does: accepted like
    ``/v1/classify`` accepts them, and storable (UTF-8 databases refuse surrogates)."""
    return _SURROGATE.sub("\ufffd", text)


def _describe(error: dict) -> str:
    """A validation error as ``location: message``, never quoting values. Keys are client text too
    (they could be ad text): an unknown key is named only when it is a near-miss of a real field."""
    loc = error.get("loc", ())
    if error.get("type") == "extra_forbidden" and loc:
        hint = difflib.get_close_matches(str(loc[-1]), list(FeedbackRequest.model_fields), n=1, cutoff=0.75)
        return (
            f"unknown field {str(loc[-1])!r} (did you mean {hint[0]!r}?)" if hint else "body: unknown field"
        )
    parts = [str(x) if isinstance(x, int) or _FIELD_NAME.match(str(x)) else "<field>" for x in loc]
    return f"{'.'.join(parts) or 'body'}: {error.get('msg', 'invalid')}"


def check_reviewed_at(reviewed_at: datetime | None, settings: Settings) -> datetime | None:
    """A client-claimed review time as UTC (a time without a zone is taken as UTC), within
    ``[now - feedback_max_age_days, now + feedback_clock_skew_s]``. Export never orders decisions by
    it (arrival order does), but a time no clock could have shown is a client error, not data.

    Raises:
        APIError(validation_error): outside the window.
    """
    if reviewed_at is None:
        return None
    reviewed_at = as_utc(reviewed_at)
    now = datetime.now(timezone.utc)
    if reviewed_at > now + timedelta(seconds=settings.feedback_clock_skew_s):
        raise APIError(
            ErrorKind.validation_error,
            f"reviewed_at: is in the future (more than {settings.feedback_clock_skew_s:g} s ahead of "
            "the server's clock); omit it to use the time of receipt",
        )
    if reviewed_at < now - timedelta(days=settings.feedback_max_age_days):
        raise APIError(
            ErrorKind.validation_error,
            f"reviewed_at: is more than {settings.feedback_max_age_days:g} days ago",
        )
    return reviewed_at


async def model_labels_of(batcher, text: str) -> list[str] | None:
    """The labels the serving model gives ``text`` (None when the scoring queue is full or no model
    serves: the decision is recorded all the same, without the comparison)."""
    try:
        preds, _ = await batcher.submit([text])
    except (QueueFull, NotReady):
        return None
    except Exception:  # logged by type in the batcher
        return None
    return sorted(n for n, on in preds[0].categories.items() if on)


router = APIRouter(prefix="/v1", dependencies=[Depends(require_feedback)], tags=["v1"])


@router.post("/feedback", status_code=201, response_model=FeedbackResponse, responses=ERROR_RESPONSES)
async def feedback(
    request: Request,
    settings: SettingsDep,
    state: StateDep,
    batcher: BatcherDep,
    ctx: ContextDep,
    principal: FeedbackPrincipal,
) -> FeedbackResponse:
    """Record a moderator's decision (labels must be the serving model's; ``[]`` means benign), with
    the sending key's id and tenant and the labels the serving model gives the text (for the
    per-reviewer disagreement ``adrisk feedback export`` reports). Needs the ``feedback`` scope.

    Errors: 422 (bad body, unknown label, both or neither of text/classification_id), 404 (unknown or
    expired classification id / input index), 503 (no model loaded: labels cannot be checked).
    """
    payload = parse_json(await read_body(request, settings.max_body_bytes))
    if isinstance(payload, dict) and isinstance(payload.get("text"), str):
        payload["text"] = _without_surrogates(payload["text"])
    try:
        req = FeedbackRequest.model_validate(payload)
    except ValidationError as e:  # messages name fields only; never the values
        first = e.errors()[0]
        raise APIError(ErrorKind.validation_error, _describe(dict(first))) from None
    if (req.text is None) == (req.classification_id is None):
        raise APIError(ErrorKind.validation_error, "give exactly one of 'text' or 'classification_id'")
    reviewed_at = check_reviewed_at(req.reviewed_at, settings)
    cur = state.current
    if cur is None:
        raise APIError(ErrorKind.not_ready, "model not loaded yet", headers={"Retry-After": "5"})
    known = list(cur.predictor.labels)
    unknown = [i for i, x in enumerate(req.labels) if x not in known]
    if unknown:  # named by index: the value is client text and is not echoed
        raise APIError(
            ErrorKind.validation_error,
            f"labels[{unknown[0]}]: unknown label; this model's labels are {known}",
        )
    text = req.text
    if text is None:
        texts = ctx.recent.get(req.classification_id or "")
        if texts is None:
            raise APIError(
                ErrorKind.not_found,
                "classification_id unknown or expired (the server keeps the last "
                f"{settings.feedback_recent} requests); send 'text' instead",
            )
        if req.input_index >= len(texts):
            raise APIError(
                ErrorKind.not_found, f"input_index {req.input_index}: that request had {len(texts)} inputs"
            )
        text = _without_surrogates(texts[req.input_index])
    model_labels = await model_labels_of(batcher, text)
    store = ctx.feedback_store()
    fid = await run_in_threadpool(
        lambda: store.add(
            text,
            sorted(set(req.labels)),
            req.reviewer,
            reviewed_at,
            req.classification_id,
            cur.ref.name,
            cur.ref.version,
            key_id=principal.key_id,
            tenant=principal.tenant,
            model_labels=model_labels,
        )
    )
    from serve.feedback_store import text_digest

    logger.info("feedback %d recorded (labels %s)", fid, sorted(set(req.labels)))
    return FeedbackResponse(id=fid, text_sha256=text_digest(text))
