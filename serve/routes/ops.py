"""Operations: ``/healthz`` (alive), ``/readyz`` (model loaded), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.deps import MetricsDep, StateDep
from serve.errors import ErrorKind, error_response
from serve.schemas import ErrorBody, Status

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """The process is alive (no model needed)."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorBody}})
async def readyz(state: StateDep):
    """200 once a model is loaded, 503 before (with the last load error, if any)."""
    cur = state.current
    if cur is None:
        err = state.load_error
        return error_response(ErrorKind.not_ready, "model not loaded" + (f": {err['error']}" if err else ""))
    return Status(status="ready", model_version=cur.ref.version)


@router.get("/metrics", include_in_schema=False)
async def metrics(m: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
