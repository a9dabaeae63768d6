"""One router per resource: ``classify``, ``feedback``, ``model`` (under ``/v1``, API-key protected
when keys are set) and ``ops`` (health, readiness, Prometheus metrics)."""

from serve.routes import classify, feedback, model, ops

ROUTERS = (ops.router, classify.router, feedback.router, model.router)

__all__ = ["ROUTERS"]
