"""Server settings: one pydantic-settings object, read from ``ADRISK_*`` environment variables and
overridden by ``adrisk serve`` flags."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server can be configured with (env prefix ``ADRISK_``, e.g. ``ADRISK_PORT``).

    Limits are enforced before any model work: a body over ``max_body_bytes`` or a batch over
    ``max_batch_items`` is a 413, a text over ``max_text_chars`` a 422 naming its index.
    """

    model_config = SettingsConfigDict(env_prefix="ADRISK_", extra="ignore")

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
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="intra-op threads (default: the predictor's measured default, ADRISK_NUM_THREADS, else every usable CPU)",
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
    api_keys: str = Field("", description="comma-separated API keys; empty = no auth on /v1/*")
    feedback_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the feedback store (default sqlite:///feedback.db in the working dir)",
    )
    feedback_recent: int = Field(
        10_000, ge=0, description="classify requests kept in memory for feedback by id"
    )
    download_dir: str | None = Field(None, description="where registry models are downloaded (default: temp)")
    metrics_window: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="texts in /metrics' recent-score window (category scores and flags only; 5 bytes per "
        "category per text)",
    )

    def api_key_list(self) -> list[str]:
        """The configured API keys (empty list: auth is off)."""
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]
