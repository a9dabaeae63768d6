"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The server's metrics; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "adrisk_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "adrisk_http_request_duration_seconds",
            "HTTP request latency (seconds)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "adrisk_batch_size", "texts per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "adrisk_inference_duration_seconds",
            "model time per batch (seconds)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("adrisk_queue_depth", "texts waiting for the model", registry=r)
        self.rejected = Counter(
            "adrisk_queue_rejected_total", "requests refused because the queue was full", registry=r
        )
        self.texts = Counter("adrisk_texts_scored_total", "texts scored", registry=r)
        self.model_info = Info("adrisk_model", "the model being served", registry=r)
        self.model_version = Gauge(
            "adrisk_model_version", "registry version of the served model (0: none)", registry=r
        )
        self.load_failures = Counter(
            "adrisk_model_load_failures_total", "model loads that failed", registry=r
        )

    def set_model(self, name: str | None, version: str | None, uri: str) -> None:
        """Record the model now serving."""
        self.model_info.info({"name": name or "", "version": version or "", "uri": uri})
        self.model_version.set(float(version) if version and version.isdigit() else 0)
