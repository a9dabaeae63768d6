"""``/openapi.json`` as the truth: request bodies published with the limits this server enforces.

FastAPI builds the document from the routes once; ``install_openapi`` replaces the request bodies of
``POST /v1/classify`` and ``POST /v1/feedback`` with schemas built from the server's ``Settings``
(``max_batch_items``, ``max_text_chars``, ``max_explain_items``) and, once a model is loaded, the
serving model's labels (``labels`` items of ``/v1/feedback`` and of an appeal's resolution are an
``enum``). The document is rebuilt
when the serving model's labels change (a followed alias can load a model with other labels).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from serve.schemas import classify_request_schema
from serve.settings import Settings


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def feedback_request_schema(labels: list[str] | None) -> dict[str, Any]:
    """JSON Schema of the ``/v1/feedback`` body; ``labels`` items restricted to ``labels`` when known."""
    from serve.schemas import FeedbackRequest

    schema = FeedbackRequest.model_json_schema()
    if labels is not None:
        schema["properties"]["labels"]["items"] = {"type": "string", "enum": list(labels)}
    return schema


def install_openapi(app: FastAPI, settings: Settings, labels: Callable[[], list[str] | None]) -> None:
    """Serve ``/openapi.json`` with request bodies from ``settings`` and the serving model's ``labels()``."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        current = labels()
        key = tuple(current) if current is not None else None
        if built.get("key", ...) != key or "doc" not in built:
            app.openapi_schema = None
            doc = copy.deepcopy(FastAPI.openapi(app))
            paths = doc.get("paths", {})
            if "/v1/classify" in paths:
                paths["/v1/classify"]["post"]["requestBody"] = _body(
                    classify_request_schema(
                        settings.max_batch_items, settings.max_text_chars, settings.max_explain_items
                    )
                )
            if "/v1/feedback" in paths:
                paths["/v1/feedback"]["post"]["requestBody"] = _body(feedback_request_schema(current))
            resolve = paths.get("/v1/appeals/{appeal_id}/resolve", {}).get("post")
            if resolve is not None and current is not None:
                props = resolve["requestBody"]["content"]["application/json"]["schema"]["properties"]
                known = {"type": "array", "items": {"type": "string", "enum": list(current)}, "maxItems": 64}
                props["labels"] = {**props["labels"], "anyOf": [known, {"type": "null"}]}
            built.update(key=key, doc=doc)
        app.openapi_schema = built["doc"]
        return built["doc"]

    app.openapi = openapi  # type: ignore[method-assign]
