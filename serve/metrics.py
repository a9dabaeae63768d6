"""Prometheus metrics of one app instance (own registry, so several apps can live in one process).

Score drift (docs/monitoring.md): every classified text's calibrated probability per category goes to

* ``adrisk_category_score`` (a cumulative histogram per category) and ``adrisk_category_flagged_total``:
  Prometheus computes any window from these (``rate(...[1h])``);
* ``adrisk_recent_category_score`` (a gauge histogram) and ``adrisk_recent_flag_rate`` over the last
  ``metrics_window`` texts this server scored, recomputed at each scrape (``ScoreWindow``): a ring
  buffer of one float32 per category and one flag byte per category per text (10,000 texts and 3
  categories: 150 KB), no text and nothing else about the ad.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Calibrated probabilities: finer near 0 and 1, where most ads' scores lie.
SCORE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
DEFAULT_SCORE_WINDOW = 10_000


class ScoreWindow(Collector):
    """The category scores and flags of the last ``size`` texts scored, as Prometheus gauges.

    Memory is fixed at construction: ``size`` x categories x (4 + 1) bytes. The ring restarts when the
    served model's categories change (a hot swap to another label set).

    Args:
        size: texts kept (>= 1).
    """

    def __init__(self, size: int = DEFAULT_SCORE_WINDOW):
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = int(size)
        self._lock = threading.Lock()
        self._categories: tuple[str, ...] = ()
        self._scores = np.zeros((0, 0), dtype=np.float32)
        self._flags = np.zeros((0, 0), dtype=bool)
        self._next = 0
        self._count = 0

    def observe(self, categories: Sequence[str], scores: np.ndarray, flags: np.ndarray) -> None:
        """Add texts: ``scores`` (n, C) calibrated probabilities and ``flags`` (n, C) bool, columns in
        ``categories`` order."""
        cats = tuple(categories)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1, len(cats))[-self.size :]
        flags = np.asarray(flags, dtype=bool).reshape(-1, len(cats))[-self.size :]
        with self._lock:
            if cats != self._categories:
                self._categories = cats
                self._scores = np.zeros((self.size, len(cats)), dtype=np.float32)
                self._flags = np.zeros((self.size, len(cats)), dtype=bool)
                self._next = self._count = 0
            idx = (self._next + np.arange(len(scores))) % self.size
            self._scores[idx] = scores
            self._flags[idx] = flags
            self._next = int((self._next + len(scores)) % self.size)
            self._count = min(self.size, self._count + len(scores))

    def collect(self) -> Iterable:
        with self._lock:
            cats, n = self._categories, self._count
            scores, flags = self._scores[:n].copy(), self._flags[:n].copy()
        texts = GaugeMetricFamily(
            "adrisk_recent_texts", f"texts in the recent-score window (at most {self.size})", value=n
        )
        yield texts
        hist = GaugeHistogramMetricFamily(
            "adrisk_recent_category_score",
            f"calibrated probability per category over the last {self.size} texts scored",
            labels=["category"],
        )
        rate = GaugeMetricFamily(
            "adrisk_recent_flag_rate",
            f"share of the last {self.size} texts scored flagged for the category",
            labels=["category"],
        )
        for j, c in enumerate(cats):
            col = scores[:, j]
            counts = np.searchsorted(np.sort(col), SCORE_BUCKETS, side="right")
            buckets = [(repr(b), float(k)) for b, k in zip(SCORE_BUCKETS, counts, strict=True)]
            buckets.append(("+Inf", float(n)))
            hist.add_metric([c], buckets, gsum_value=float(col.sum()))
            rate.add_metric([c], float(flags[:, j].mean()) if n else 0.0)
        yield hist
        yield rate


class Metrics:
    """The server's metrics; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, score_window: int = DEFAULT_SCORE_WINDOW) -> None:
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
        self.category_score = Histogram(
            "adrisk_category_score",
            "calibrated probability per category of every text scored",
            ["category"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.category_flagged = Counter(
            "adrisk_category_flagged", "texts flagged per category", ["category"], registry=r
        )
        self.recent = ScoreWindow(score_window)
        r.register(self.recent)

    def observe_predictions(self, predictions: Sequence) -> None:
        """Record classified texts' category scores and flags (``model.predictor.Prediction``s); keeps
        nothing of the texts."""
        if not predictions:
            return
        cats = list(predictions[0].category_scores)
        scores = np.array([[p.category_scores[c] for c in cats] for p in predictions], dtype=np.float32)
        flags = np.array([[p.categories[c] for c in cats] for p in predictions], dtype=bool)
        for j, c in enumerate(cats):
            h = self.category_score.labels(c)
            for x in scores[:, j]:
                h.observe(float(x))
            if flags[:, j].any():
                self.category_flagged.labels(c).inc(int(flags[:, j].sum()))
        self.recent.observe(cats, scores, flags)

    def set_model(self, name: str | None, version: str | None, uri: str) -> None:
        """Record the model now serving."""
        self.model_info.info({"name": name or "", "version": version or "", "uri": uri})
        self.model_version.set(float(version) if version and version.isdigit() else 0)
