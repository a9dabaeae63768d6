"""Server settings: one pydantic-settings object, read from ``ADRISK_*`` environment variables and
overridden by ``adrisk serve`` flags."""

from __future__ import annotations

import logging
import os

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)


class Settings(BaseSettings):
    """Everything the server can be configured with (env prefix ``ADRISK_``, e.g. ``ADRISK_PORT``).

    Limits are enforced before any model work: a body over ``max_body_bytes`` or a batch over
    ``max_batch_items`` is a 413, a text over ``max_text_chars`` a 422 naming its index.
    """

    model_config = SettingsConfigDict(env_prefix="ADRISK_", extra="ignore", populate_by_name=True)

    model: str = Field(
        "", description="model URI: models:/NAME@ALIAS, models:/NAME/N, runs:/ID/model or a dir"
    )
    runtime: str = Field("auto", description="torch, an ONNX variant of the model, or auto")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    follow_alias: float | None = Field(
        None, gt=0, description="seconds between registry polls when the model URI is models:/NAME@ALIAS"
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="most texts per model batch (1 = no batching)")
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="how long a batch that already holds queued requests waits for more (an idle server never waits)",
    )
    queue_size: int = Field(1024, ge=1, description="most texts waiting for the model; beyond it 503")
    threads: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("ADRISK_THREADS", "ADRISK_TORCH_THREADS"),
        description="intra-op threads (default: ADRISK_THREADS, else every usable CPU); torch_threads and "
        "ADRISK_TORCH_THREADS are its deprecated names",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body (bytes)")
    max_batch_items: int = Field(256, ge=1, description="most strings in one request's input list")
    max_text_chars: int = Field(100_000, ge=1, description="longest single input (characters)")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with a queue-full 503")
    max_explain_items: int = Field(
        8,
        ge=1,
        description='most strings in one request with "explain": true (413 beyond; explanations '
        "cost ~10-100x a plain score)",
    )
    explain_queue_size: int = Field(32, ge=1, description="most texts waiting for explanation; beyond it 503")
    api_keys: str = Field(
        "", description="comma-separated API keys with every scope and tenant 'default' (the older form)"
    )
    keys_file: str | None = Field(
        None,
        description="YAML keys file: id, sha256, scopes (classify, feedback, admin), tenant (serve/keys.py)",
    )
    feedback_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the feedback store (default sqlite:///feedback.db in the working dir)",
    )
    feedback_recent: int = Field(
        10_000, ge=0, description="classify requests kept in memory for feedback by id"
    )
    feedback_max_age_days: float = Field(
        365.0,
        gt=0,
        description="oldest reviewed_at /v1/feedback accepts, in days before now (422 beyond)",
    )
    feedback_clock_skew_s: float = Field(
        300.0,
        ge=0,
        le=3600,
        description="how far ahead of the server's clock a reviewed_at may be (seconds; 422 beyond)",
    )
    download_dir: str | None = Field(None, description="where registry models are downloaded (default: temp)")
    metrics_window: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="texts in /metrics' recent-score window (category scores and flags only; 5 bytes per "
        "category per text)",
    )

    # -- moderation policy, decision log, appeals (docs/policy.md) -----------------------------------
    policy_file: str | None = Field(
        None, description="moderation policy YAML (default: the model's thresholds); reloaded on change"
    )
    policy_poll_s: float = Field(2.0, gt=0, le=3600, description="seconds between checks of the policy file")
    contact_hash_key: SecretStr | None = Field(
        None, description="key of the policy's contact blocklist digests (ADRISK_CONTACT_HASH_KEY)"
    )
    decision_log: bool = Field(True, description="log every decision (false: no log, statements or appeals)")
    decisions_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the decision log (default sqlite:///decisions.db in the working dir)",
    )
    audit_key: SecretStr | None = Field(
        None,
        description="secret keying the decision log's hashes (default: <db>.key beside a SQLite log, created once)",
    )
    decision_queue_size: int = Field(
        100_000, ge=1, description="decisions waiting to be written; beyond it /v1/classify answers 503"
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_names(cls, data: object) -> object:
        if isinstance(data, dict) and "torch_threads" in data:
            given = data["torch_threads"]  # given in code: wins over the environment, as ``threads`` does
            names = ("torch_threads", "threads", "ADRISK_THREADS", "ADRISK_TORCH_THREADS")
            data = {k: v for k, v in data.items() if k not in names} | {"threads": given}
            logger.warning("the torch_threads setting is deprecated: call it threads")
        elif "ADRISK_TORCH_THREADS" in os.environ:
            logger.warning("ADRISK_TORCH_THREADS is deprecated: call it ADRISK_THREADS")
        return data

    def api_key_list(self) -> list[str]:
        """The configured API keys (empty list: auth is off)."""
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]
