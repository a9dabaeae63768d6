"""``GET /v1/model``: which model is serving, with its labels, thresholds and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serve.deps import StateDep, require_classify
from serve.errors import APIError, ErrorKind
from serve.schemas import ERROR_RESPONSES, ModelDetails

router = APIRouter(prefix="/v1", dependencies=[Depends(require_classify)], tags=["v1"])


@router.get("/model", response_model=ModelDetails, responses=ERROR_RESPONSES)
async def model_details(state: StateDep) -> ModelDetails:
    """The serving model: name, version, URI, labels, thresholds, metrics, and the last failed load."""
    cur = state.current
    err = state.load_error
    if cur is None:
        msg = "model not loaded yet" + (f"; last load failed: {err['error']}" if err else "")
        raise APIError(ErrorKind.not_ready, msg, headers={"Retry-After": "5"})
    meta = cur.predictor.meta
    return ModelDetails(
        name=cur.ref.name or meta.name,
        version=cur.ref.version,
        uri=cur.ref.uri,
        labels=list(meta.labels),
        thresholds=dict(meta.thresholds),
        metrics=dict(meta.metrics),
        loaded_at=cur.loaded_at,
        follow_alias_s=state.follow_alias_s,
        load_error=err,
        poll_error=state.poll_error,
    )
