"""Label-free estimates on synthetic calibrated posteriors: EM recovers a shifted prior where the
mean probability does not, CBPE's expected confusion matrix, feedback matched by normalised text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.estimate import (
    ReferenceCalibration,
    adjust_posteriors,
    cbpe,
    em_prior,
    feedback_precision,
    load_feedback,
    realised,
)


def _calibrated(n: int, prior: float, base: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with ``prior``; posteriors exact for a model calibrated under ``base`` (two
    Gaussian classes one standard deviation and a half apart)."""
    y = rng.random(n) < prior
    s = np.where(y, rng.normal(1.5, 1, n), rng.normal(0, 1, n))
    lr = np.exp(1.5 * s - 1.125)
    return base * lr / (base * lr + 1 - base), y


@pytest.mark.parametrize("prior", [0.03, 0.3])
def test_em_recovers_a_shifted_prior_where_the_mean_probability_does_not(prior):
    rng = np.random.default_rng(1)
    q, y = _calibrated(40_000, prior, base=0.1, rng=rng)
    em = float(em_prior(q, 0.1))
    assert abs(em - y.mean()) < 0.01
    assert abs(q.mean() - y.mean()) > 2 * abs(em - y.mean())  # the naive estimate is pulled to the base


def test_em_under_no_shift_and_bootstrap_rows():
    rng = np.random.default_rng(2)
    q, y = _calibrated(20_000, 0.1, base=0.1, rng=rng)
    assert abs(float(em_prior(q, 0.1)) - 0.1) < 0.01
    both = em_prior(np.stack([q, q[::-1]]), 0.1)
    assert both.shape == (2,) and both[0] == pytest.approx(both[1])


def test_adjusted_posteriors_are_calibrated_under_the_new_prior():
    rng = np.random.default_rng(3)
    q, y = _calibrated(60_000, 0.3, base=0.1, rng=rng)
    adj = adjust_posteriors(q, 0.1, float(em_prior(q, 0.1)))
    for lo, hi in ((0.0, 0.2), (0.2, 0.5), (0.5, 0.8), (0.8, 1.0)):
        sel = (adj >= lo) & (adj < hi)
        assert abs(adj[sel].mean() - y[sel].mean()) < 0.03


def test_cbpe_expected_confusion_matrix_and_interval():
    q = np.array([0.9, 0.8, 0.1, 0.6, 0.0])
    flagged = np.array([True, True, True, False, False])
    est = cbpe(q, flagged, draws=4000, seed=0)
    assert est["precision"] == pytest.approx((0.9 + 0.8 + 0.1) / 3)
    assert est["recall"] == pytest.approx(1.8 / (1.8 + 0.6))
    lo, hi = est["precision_interval"]
    assert 0 <= lo <= est["precision"] <= hi <= 1
    assert cbpe(q, np.zeros(5, bool))["precision"] is None


def test_cbpe_interval_holds_the_recalibrations_error():
    rng = np.random.default_rng(0)
    q = rng.uniform(0.5, 1.0, 2000)
    flagged = q > 0.7
    plain = cbpe(q, flagged, seed=0)

    def width(est):
        lo, hi = est["precision_interval"]
        return hi - lo

    shifted = np.clip(q[None, :] + np.linspace(-0.1, 0.1, 50)[:, None], 0, 1)  # (B, n) recalibrations
    wide = cbpe(q, flagged, seed=0, q_draws=shifted)
    assert wide["precision"] == plain["precision"]  # the estimate itself is q's
    assert width(wide) > 2 * width(plain) and wide["precision_sd"] > 2 * plain["precision_sd"]
    same = cbpe(q, flagged, seed=0, q_draws=np.repeat(q[None, :], 50, axis=0))
    assert width(same) == pytest.approx(width(plain), rel=0.25)  # no recalibration error: Bernoulli only


def test_reference_calibration_reproduces_the_reference_realised_precision():
    rng = np.random.default_rng(4)
    p = rng.random(3000)
    y = (rng.random(3000) < p**2).astype(float)  # the model over-estimates: p, truth p^2
    cal = ReferenceCalibration(p[:, None], y[:, None])
    flagged = p >= 0.7
    est = cbpe(cal(p[:, None])[:, 0], flagged)["precision"]
    assert est == pytest.approx(realised(y, flagged)["precision"], abs=0.02)
    assert cbpe(p, flagged)["precision"] > est + 0.05  # uncorrected, it would be over-optimistic
    assert ReferenceCalibration(p[:, None], None).fitted == [False]


def _rare(n: int, rng, prior: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Exact posteriors of a rare label (classes 2.5 standard deviations apart) and its 0/1 targets."""
    y = rng.random(n) < prior
    s = np.where(y, rng.normal(2.5, 1, n), rng.normal(0, 1, n))
    lr = np.exp(2.5 * s - 3.125)
    return prior * lr / (prior * lr + 1 - prior), y.astype(float)


def test_few_flagged_reference_ads_get_platt_scaling_not_an_isotonic_precision_of_one():
    rng = np.random.default_rng(4)
    p_ref, y_ref = _rare(2000, rng)  # flags 17 ads at 0.9, every one a positive
    p_cur, y_cur = _rare(50_000, rng)
    thr = np.array([0.9])
    assert (p_ref >= 0.9).sum() < 50 and y_ref[p_ref >= 0.9].all()
    iso = ReferenceCalibration(p_ref[:, None], y_ref[:, None])
    platt = ReferenceCalibration(p_ref[:, None], y_ref[:, None], thr)
    assert iso.methods == ["isotonic"] and platt.methods == ["platt"]
    flagged = p_cur >= 0.9
    truth = realised(y_cur, flagged)["precision"]
    assert truth < 0.97
    assert cbpe(iso(p_cur[:, None])[:, 0], flagged, draws=10)["precision"] > 0.99  # every flagged ad -> 1
    assert cbpe(platt(p_cur[:, None])[:, 0], flagged, draws=10)["precision"] == pytest.approx(truth, abs=0.02)
    # a reference that flags enough ads keeps isotonic regression
    p_big, y_big = _rare(20_000, rng)
    assert ReferenceCalibration(p_big[:, None], y_big[:, None], thr).methods == ["isotonic"]


def test_feedback_is_matched_by_normalised_text(tmp_path):
    path = tmp_path / "fb.jsonl"
    rows = [
        {"text": "Sweet  new girl in town", "labels": ["adult_services"]},
        {"text": "2 bedroom apartment", "labels": []},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fb = load_feedback(str(path), ("adult_services", "scam"))
    texts = ["Sweet new girl in town", "2 bedroom apartment", "never reviewed"]
    flagged = np.array([[True, False], [True, False], [True, False]])
    out = feedback_precision(texts, flagged, fb, ("adult_services", "scam"))
    assert out["adult_services"]["precision"] == 0.5 and out["adult_services"]["precision_n"] == 2
    assert out["adult_services"]["reviewed"] == 2
    assert out["scam"]["precision"] is None
