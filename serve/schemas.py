"""Request and response bodies of the HTTP API (see ``../shared/CONTRACT.md``).

The request limits are declared on the schemas' fields, from ``Settings``: the module-level models
carry the defaults, and ``create_app`` publishes the models built from the server's own settings
(``serve.openapi``), so ``/openapi.json`` shows the limits the server enforces.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_serializer

from serve.settings import Settings

_DEFAULTS = {
    name: Settings.model_fields[name].default
    for name in ("max_batch_items", "max_text_chars", "max_explain_items")
}


def classify_request_model(
    max_batch_items: int = _DEFAULTS["max_batch_items"],
    max_text_chars: int = _DEFAULTS["max_text_chars"],
    max_explain_items: int = _DEFAULTS["max_explain_items"],
) -> type[BaseModel]:
    """The ``/v1/classify`` body with the server's limits on its fields: ``input`` is one string of at
    most ``max_text_chars`` characters (code points) or a list of 1 to ``max_batch_items`` of them.

    ``serve.routes.classify.parse_classify`` enforces the same limits from the same ``Settings``;
    ``create_app`` publishes this model, built from its settings, in ``/openapi.json``.
    """
    text = Annotated[str, Field(max_length=max_text_chars)]
    return create_model(
        "ClassifyRequest",
        __doc__='``{"input": "ad text"}`` or ``{"input": ["ad 1", "ad 2", ...]}`` (every string is scored).',
        __config__=ConfigDict(
            json_schema_extra={
                "examples": [
                    {"input": "Sweet new girl in town, call me 24/7"},
                    {"input": ["2 bedroom apartment for rent", "hot petite girls 24/7 incall"]},
                ]
            }
        ),
        input=(
            text | Annotated[list[text], Field(min_length=1, max_length=max_batch_items)],
            Field(
                description=f"one ad text or a list of 1-{max_batch_items} ad texts; each at most {max_text_chars} "
                "characters (text beyond the model window is scored on what fits and marked truncated)"
            ),
        ),
        explain=(
            bool,
            Field(
                False,
                description=(
                    "add `explanations` (evidence spans per flagged label) to each result; at most "
                    f"{max_explain_items} texts per such request (413 beyond), run on their own queue"
                ),
            ),
        ),
        extract=(
            bool,
            Field(
                False,
                description=(
                    "add `contacts` (phones, e-mails, URLs, handles with offsets into the text) to each result"
                ),
            ),
        ),
    )


def classify_request_schema(
    max_batch_items: int = _DEFAULTS["max_batch_items"],
    max_text_chars: int = _DEFAULTS["max_text_chars"],
    max_explain_items: int = _DEFAULTS["max_explain_items"],
) -> dict[str, Any]:
    """JSON Schema of the ``/v1/classify`` body: ``classify_request_model``'s, plus the rule that a
    request with ``"explain": true`` holds at most ``max_explain_items`` texts."""
    schema = classify_request_model(max_batch_items, max_text_chars, max_explain_items).model_json_schema()
    schema["anyOf"] = [
        {"properties": {"explain": {"const": False}}},
        {
            "properties": {
                "explain": {"const": True},
                "input": {"anyOf": [{"type": "string"}, {"type": "array", "maxItems": max_explain_items}]},
            }
        },
    ]
    return schema


ClassifyRequest = classify_request_model()


class ExplanationSpan(BaseModel):
    """Characters ``[start, end)`` of the input text AS GIVEN (Python str indices: code points) and their
    signed contribution to the label's calibrated logit (positive pushes the label up)."""

    start: int
    end: int
    score: float


class ContactItem(BaseModel):
    """A contact found in the input text (``signals.contacts``): characters ``[start, end)`` of the text AS
    GIVEN; ``value`` normalised (phones E.164, e-mails lower-cased)."""

    type: str = Field(description="phone, email, url or handle")
    value: str
    start: int
    end: int
    platform: str | None = Field(None, description="handles only: snapchat, instagram, kik, ...")

    @model_serializer(mode="wrap")
    def _omit_absent_platform(self, handler):
        data = handler(self)
        if isinstance(data, dict) and data.get("platform", 0) is None:
            del data["platform"]
        return data


class ModelInfo(BaseModel):
    """Which model produced an answer."""

    name: str | None = Field(description="registered model name (or the artifact's name)")
    version: str | None = Field(description="registry version; null for a local model directory")
    uri: str = Field(description="the URI the server was started with")


class Reason(BaseModel):
    """Why a decision was taken: a category's score in a policy band (``rule: score``), a contact on the
    blocklist (``contact_blocklist``) or a blocked term (``term``). Never ad text."""

    rule: str = Field(description="score, contact_blocklist or term")
    action: str = Field(description="the action this reason calls for")
    category: str | None = Field(None, description="the label (score; rules: the label they report)")
    score: float | None = Field(None, description="score: the calibrated probability")
    band: list[float] | None = Field(None, description="score: the policy band [from, to) it fell in")
    contact_type: str | None = Field(None, description="contact_blocklist: phone, email, url or handle")
    term: str | None = Field(None, description="term: the blocked term as the policy spells it")

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler):
        data = handler(self)
        return (
            {k: v for k, v in data.items() if v is not None or k == "category"}
            if isinstance(data, dict)
            else data
        )


class ClassifyResult(BaseModel):
    """One input's result; ``category_scores`` are calibrated probabilities in [0, 1]. The decision
    fields come from the moderation policy (docs/policy.md); every result is logged under its
    ``decision_id`` unless the server runs without a decision log."""

    flagged: bool = Field(description="any category reached its threshold")
    categories: dict[str, bool]
    category_scores: dict[str, float]
    truncated: bool = Field(description="the text did not fit the model window; scored on what fits")
    decision_id: str = Field(description="id of this decision (GET /v1/decisions/{id}/statement, appeals)")
    action: str = Field(
        description="what to do with the ad, in the policy's action names (allow, review, remove)"
    )
    observed_action: str | None = Field(
        None, description="observe-only policies: the action the policy decided (``action`` is the first one)"
    )
    severity: str = Field(description="highest severity level over categories and rules")
    category_severity: dict[str, str] = Field(description="severity level per category")
    reasons: list[Reason] = Field(description="why, most severe first; [] when nothing fired")
    policy_version: str = Field(description="version of the policy that decided")
    model_version: str | None = Field(
        description="registry version, or sha256:<12 hex> of the weights for a model directory"
    )
    explanations: dict[str, list[ExplanationSpan]] | None = Field(
        None,
        description='only with "explain": true: per flagged label, the top word spans, strongest first '
        "(see docs/explanations.md)",
    )
    contacts: list[ContactItem] | None = Field(
        None,
        description='only with "extract": true: phones, e-mails, URLs and handles in the text (docs/linking.md)',
    )

    @model_serializer(mode="wrap")
    def _omit_absent_explanations(self, handler):
        data = handler(self)
        if isinstance(data, dict):
            for key in ("explanations", "contacts", "observed_action"):
                if data.get(key, 0) is None:
                    del data[key]  # plain requests keep the plain result shape
        return data


class ClassifyResponse(BaseModel):
    """One result per input, in input order."""

    id: str = Field(description="request id, also in the X-Request-ID header")
    model: ModelInfo
    results: list[ClassifyResult]


class StatementResponse(BaseModel):
    """A decision's statement of reasons: ``GET /v1/decisions/{id}/statement``."""

    decision_id: str
    action: str
    policy_version: str
    model_version: str | None
    statement: dict[str, Any] = Field(
        description="fields of the DSA Transparency Database's statement-of-reasons schema (docs/policy.md)"
    )


class AppealRequest(BaseModel):
    """Open an appeal on a decision that restricted an ad (one open appeal per decision)."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=40, description="the decision_id of a classify result")
    statement: str | None = Field(
        None,
        max_length=2000,
        description="the appellant's explanation (stored for the moderator, never logged)",
    )


class AppealResolution(BaseModel):
    """Resolve an open appeal (admin key). Overturned decisions become feedback rows with ``labels``
    (required then; the serving model's labels are added to the published schema as an ``enum``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"properties": {"outcome": {"const": "upheld"}}},
                {
                    "properties": {"outcome": {"const": "overturned"}, "labels": {"type": "array"}},
                    "required": ["labels"],
                },
            ]
        },
    )

    outcome: Literal["upheld", "overturned"]
    reviewer: str = Field(min_length=1, max_length=200, description="moderator id")
    labels: list[str] | None = Field(
        None,
        max_length=64,
        description="overturned: the labels the moderator decided on ([] = benign; required)",
    )
    text: str | None = Field(
        None,
        max_length=100_000,
        description="overturned: the ad text, checked against the decision's keyed text hash (needed when "
        "the server no longer holds the classify request)",
    )


class AppealResponse(BaseModel):
    id: str
    decision_id: str
    status: str = Field(description="open, upheld or overturned")
    category: str | None = Field(description="the decision's primary category")
    opened_at: str
    resolved_at: str | None = None
    reviewer: str | None = None
    labels: list[str] | None = None
    feedback_id: int | None = Field(None, description="overturned: the feedback row made from it")


class PolicyInfo(BaseModel):
    """The policy in force: ``GET /v1/policy`` (admin)."""

    version: str
    source: str = Field(description="file, or model-thresholds (no --policy)")
    path: str | None
    loaded_at: str
    observe_only: bool
    actions: list[str]
    severity_levels: list[str]
    tenants: list[str] = Field(description="tenants with overrides")
    reload_error: dict[str, str] | None = Field(
        description="the last failed reload (the previous policy serves)"
    )


class LoadError(BaseModel):
    """A model version that failed to load (the previous one keeps serving)."""

    version: str | None
    error: str = Field(description="exception type and message")
    at: str = Field(description="UTC time, ISO 8601")


class PollError(BaseModel):
    """Registry polls of a followed alias that keep failing (the serving model is unaffected)."""

    error: str = Field(description="the latest failure: exception type and the first line of its message")
    failures: int = Field(description="failed polls in a row")
    since: str = Field(description="UTC time of the first failure in the row, ISO 8601")
    at: str = Field(description="UTC time of the latest failure, ISO 8601")


class ModelDetails(BaseModel):
    """The serving model: ``GET /v1/model``."""

    name: str | None
    version: str | None
    uri: str
    labels: list[str]
    thresholds: dict[str, float]
    metrics: dict[str, float]
    loaded_at: str | None
    follow_alias_s: float | None = Field(description="registry poll interval when following an alias")
    load_error: LoadError | None = Field(description="last failed load, if any")
    poll_error: PollError | None = Field(
        default=None, description="failing registry polls of a followed alias, until one succeeds"
    )


class Status(BaseModel):
    """Body of ``/healthz`` and ``/readyz``."""

    status: str = Field(description="ok (alive) or ready (model loaded)")
    model_version: str | None = None


class ErrorDetail(BaseModel):
    type: str = Field(description="an error kind from serve.errors.ErrorKind")
    message: str = Field(description="what was wrong; never contains ad text")


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorDetail


# the error responses every /v1 route documents (one body shape, see serve/errors.py)
ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 503)
}


class FeedbackRequest(BaseModel):
    """One moderator decision. Give ``text`` or ``classification_id`` (+ ``input_index``), not both.

    The published schema (``oneOf``) says "exactly one of them is a string"; the serving model's labels
    are added to it as an ``enum`` by ``serve.openapi``. Fields take only the JSON types the schema
    names (no "3" for 3, no number for a time).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "classification_id": "clf-0f3c...",
                    "input_index": 0,
                    "labels": ["adult_services"],
                    "reviewer": "mod-17",
                },
                {"text": "cheap rental flat, call 555-0100", "labels": [], "reviewer": "mod-17"},
            ],
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["classification_id"], "properties": {"classification_id": {"type": "string"}}},
            ],
        },
    )

    text: str | None = Field(None, max_length=100_000, description="the ad text as reviewed")
    classification_id: str | None = Field(
        None, max_length=128, description="id of an earlier /v1/classify answer"
    )
    input_index: int = Field(0, ge=0, description="which input of that classify request")
    labels: list[str] = Field(max_length=64, description="the labels the moderator decided on; [] = benign")
    reviewer: str = Field(min_length=1, max_length=200, description="moderator id (no personal data needed)")
    reviewed_at: datetime | None = Field(
        None,
        description="when the decision was made (default: now); within the server's window: at most "
        "feedback_max_age_days (365) back and feedback_clock_skew_s (300 s) ahead (422 beyond). Only "
        "informative: a reviewer's later decision is the one received later",
    )

    @field_validator("input_index", mode="before")
    @classmethod
    def _index_is_a_json_integer(cls, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be an integer")
        return value  # 2.0 is an integer in JSON Schema; 2.5 is refused by the int field

    @field_validator("reviewed_at", mode="before")
    @classmethod
    def _time_is_a_string(cls, value):
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a date-time string (RFC 3339)")
        return value


class FeedbackResponse(BaseModel):
    id: int = Field(description="feedback record id")
    status: str = "recorded"
    text_sha256: str = Field(description="sha256 of the normalised text, for de-duplication")
