"""Prometheus metrics of decisions, the policy, the decision log and appeals (same registry as
``serve.metrics.Metrics``)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Info


class DecisionMetrics:
    """Decisions by action, policy reloads, decision-log writes, appeals and the overturn rate per
    category (overturned / resolved appeals, from the log's history at start)."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.decisions = Counter(
            "adrisk_decisions_total", "decisions by action enacted", ["action"], registry=r
        )
        self.policy = Info("adrisk_policy", "the policy in force (version, source)", registry=r)
        self.reloads = Counter(
            "adrisk_policy_reloads_total",
            "policy file reloads by result (ok, failed)",
            ["result"],
            registry=r,
        )
        self.log_written = Counter(
            "adrisk_decision_log_written_total", "decisions written to the log", registry=r
        )
        self.log_errors = Counter(
            "adrisk_decision_log_errors_total", "failed decision-log writes (retried)", registry=r
        )
        self.log_pending = Gauge("adrisk_decision_log_pending", "decisions waiting to be written", registry=r)
        self.appeals = Counter(
            "adrisk_appeals_total",
            "appeals by the decision's category and outcome",
            ["category", "outcome"],
            registry=r,
        )
        self.overturn_rate = Gauge(
            "adrisk_appeal_overturn_rate",
            "overturned / resolved appeals per category (since the log began)",
            ["category"],
            registry=r,
        )
        self._resolved: Tally[tuple[str, str]] = Tally()

    def watch_pending(self, pending: Callable[[], int]) -> None:
        self.log_pending.set_function(lambda: float(pending()))

    def decided(self, decisions: list[dict]) -> None:
        for action, n in Tally(d["action"] for d in decisions).items():
            self.decisions.labels(action).inc(n)

    def set_policy(self, version: str, source: str) -> None:
        self.policy.info({"version": version, "source": source})

    def load_appeals(self, counts: Tally[tuple[str, str]]) -> None:
        """Start from the log's resolved appeals (``AppealStore.outcome_counts``)."""
        self._resolved = Tally(counts)
        for category in {c for c, _ in counts}:
            self._update_rate(category)

    def appeal(self, category: str | None, outcome: str) -> None:
        """Count an appeal event (``opened``, ``upheld``, ``overturned``)."""
        cat = category or "none"
        self.appeals.labels(cat, outcome).inc()
        if outcome in ("upheld", "overturned"):
            self._resolved[(cat, outcome)] += 1
            self._update_rate(cat)

    def _update_rate(self, cat: str) -> None:
        over, up = self._resolved[(cat, "overturned")], self._resolved[(cat, "upheld")]
        if over + up:
            self.overturn_rate.labels(cat).set(over / (over + up))
