"""One router per resource: ``classify``, ``feedback``, ``model``, ``decisions`` (statements, appeals,
the policy; under ``/v1``, API-key protected with scopes when keys are set) and ``ops`` (health,
readiness, Prometheus metrics)."""

from serve.routes import classify, decisions, feedback, model, ops

ROUTERS = (ops.router, classify.router, feedback.router, model.router, decisions.router)

__all__ = ["ROUTERS"]
