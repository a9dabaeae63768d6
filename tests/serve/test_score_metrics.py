"""/metrics exposes per-category score histograms and flag rates over a bounded window of recent texts
(and cumulative ones), computed from what /v1/classify returned, with no ad text."""

from __future__ import annotations

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from serve.metrics import SCORE_BUCKETS, ScoreWindow


def _families(body: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(body)}


def _samples(fam, name: str, **labels) -> list:
    return [s for s in fam.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_recent_window_holds_the_last_texts_scored_and_no_text(thread_server):
    texts = [f"ad number {i} with a marker zqxj{i} call 555 0100" for i in range(8)]
    with thread_server(metrics_window=5) as srv, httpx.Client(base_url=srv.base, timeout=30) as c:
        first = c.post("/v1/classify", json={"input": texts[:3]}).json()["results"]
        last = c.post("/v1/classify", json={"input": texts[3:]}).json()["results"]
        body = c.get("/metrics").text
    # nothing of the texts (fragments no number can spell: a timestamp's digits may hold "555")
    assert "zqxj" not in body and "555 0100" not in body and "ad number" not in body
    fams = _families(body)
    assert fams["adrisk_recent_texts"].samples[0].value == 5
    window = (first + last)[-5:]  # the 5 most recent texts
    every = first + last
    for cat in window[0]["category_scores"]:
        scores = np.array([r["category_scores"][cat] for r in window], dtype=np.float32)
        buckets = _samples(
            fams["adrisk_recent_category_score"], "adrisk_recent_category_score_bucket", category=cat
        )
        got = {s.labels["le"]: s.value for s in buckets}
        for b in SCORE_BUCKETS:
            assert got[repr(b)] == np.sum(scores <= np.float32(b)), (cat, b)
        assert got["+Inf"] == 5
        rate = _samples(fams["adrisk_recent_flag_rate"], "adrisk_recent_flag_rate", category=cat)[0].value
        assert rate == np.mean([r["categories"][cat] for r in window])
        # the cumulative histogram counts every text since start
        total = _samples(fams["adrisk_category_score"], "adrisk_category_score_count", category=cat)[0].value
        assert total == len(every)


def test_score_window_memory_is_bounded_and_restarts_on_new_categories():
    w = ScoreWindow(size=4)
    rng = np.random.default_rng(0)
    for _ in range(10):
        w.observe(["a", "b"], rng.random((3, 2)), rng.random((3, 2)) > 0.5)
    assert w._scores.shape == (4, 2) and w._count == 4
    w.observe(["a", "b", "c"], np.full((1, 3), 0.5), np.ones((1, 3), bool))  # a model with other labels
    fams = {f.name: f for f in w.collect()}
    assert fams["adrisk_recent_texts"].samples[0].value == 1
    assert {s.labels["category"] for s in fams["adrisk_recent_flag_rate"].samples} == {"a", "b", "c"}
