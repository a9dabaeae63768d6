"""The shortcut audit (training/audit.py): known answers, and the confounding flag on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.audit import (
    SOURCE_CONFOUNDED_AP,
    format_audit_table,
    length_bins,
    one_feature_scores,
    run_audit,
    source_only_ap,
    view_metrics,
)

LABELS = ("adult_services", "scam")


def _synthetic(confounded: bool, n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    sources = rng.choice(["site_a", "site_b", "site_c"], size=n)
    y = np.zeros((n, 2), dtype=np.float32)
    if confounded:
        y[:, 0] = sources == "site_a"  # one source carries every positive
    else:
        y[:, 0] = rng.random(n) < 0.3  # independent of source
    y[:, 1] = rng.random(n) < 0.2
    texts = [f"ad number {i} " + "x" * int(rng.integers(5, 80)) for i in range(n)]
    return texts, y, sources.tolist()


def test_one_feature_scores_are_train_rates_with_overall_rate_for_unseen():
    s = one_feature_scores(["a", "a", "b", "b"], np.array([1, 0, 1, 1]), ["a", "b", "c"])
    assert s.tolist() == [0.5, 1.0, 0.75]
    with pytest.raises(ValueError):
        one_feature_scores(["a"], np.array([1, 0]), ["a"])


def test_length_bins_come_from_train_quantiles():
    tr, ev = length_bins(list(range(100)), [-5, 1000], n_bins=4)
    assert len(set(tr.tolist())) == 4 and ev.tolist() == [0, 3]


def test_source_only_ap_known_answers():
    assert source_only_ap(["a", "b"], np.array([1, 0]), ["a", "a", "b"], np.array([1, 1, 0])) == 1.0
    assert math.isnan(source_only_ap(["a", "b"], np.array([1, 0]), ["a"], np.array([1])))  # one class


@pytest.mark.parametrize("confounded", [True, False])
def test_audit_flags_only_the_source_confounded_data(confounded):
    tr_t, tr_y, tr_s = _synthetic(confounded, seed=1)
    ev_t, ev_y, ev_s = _synthetic(confounded, seed=2)
    res = run_audit(LABELS, tr_t, tr_y, tr_s, ev_t, ev_y, ev_s)
    ap = res.metrics["adult_services.source_only_ap"]
    if confounded:
        assert res.confounded == ["adult_services"] and ap >= SOURCE_CONFOUNDED_AP
        assert res.metrics["adult_services.source_confounded"] == 1.0
        assert "SOURCE-CONFOUNDED" in res.table and "source-confounded" in res.table
    else:
        assert res.confounded == [] and ap < 0.6 and "SOURCE-CONFOUNDED" not in res.table
        assert res.metrics["adult_services.source_confounded"] == 0.0
    assert "scam" not in res.confounded and "adult_services.length_only_ap" in res.metrics
    assert set(res.prefixed()) == {f"audit.{k}" for k in res.metrics}


def test_view_metrics_expose_a_style_reliant_model():
    # a "model" that keys on an emoji: perfect on the unchanged text, blind on the stripped views
    texts = ["Sweet girl \U0001f48b\nbody", "Kind girl \U0001f48b\nbody", "ipad mini", "old sofa"]
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=np.float32)

    def score(ts):
        return np.array([[0.9 if "\U0001f48b" in t else 0.1, 0.5] for t in ts])

    m = view_metrics(score, texts, y, LABELS, [0.5, 0.5], views=["plain"])
    assert m["view.plain.adult_services.recall"] == 0.0
    assert m["view.plain.adult_services.flagged_negatives"] == 0.0
    assert m["view.plain.scam.recall"] == 1.0 and m["view.plain.scam.flagged_negatives"] == 1.0
    res = run_audit(
        LABELS,
        texts,
        y,
        None,
        texts,
        y,
        None,
        score=score,
        thresholds=[0.5, 0.5],
        views=["plain"],
        eval_probs=score(texts),
    )
    assert res.metrics["view.unchanged.adult_services.recall"] == 1.0
    assert "adult_services.source_only_ap" not in res.metrics  # no source column: that part is skipped
    calls = []
    view_metrics(
        lambda ts: calls.append(list(ts)) or score(ts),
        texts,
        y,
        LABELS,
        [0.5, 0.5],
        ["plain"],
        base_probs=score(texts),
    )
    assert calls == [["sweet girl body", "kind girl body"]]  # unchanged views are not scored again
    table = format_audit_table(res, LABELS, ["unchanged", "plain"])
    assert "plain" in table and "unchanged" in table
