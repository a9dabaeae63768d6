"""Temperature and threshold selection on synthetic data with known answers."""

import numpy as np
import pytest

from model.calibration import calibrated_probabilities, fit_temperatures, select_threshold
from model.schema import ProblemType
from training.metrics import evaluate_scores, expected_calibration_error


def test_temperature_recovers_known_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(20000, 2))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    temps = fit_temperatures(z * np.array([3.0, 0.5]), y, ProblemType.MULTI_LABEL)
    assert temps[0] == pytest.approx(3.0, rel=0.05) and temps[1] == pytest.approx(0.5, rel=0.05)
    before = expected_calibration_error(1 / (1 + np.exp(-3 * z[:, 0])), y[:, 0])
    after = expected_calibration_error(
        calibrated_probabilities(z * [3.0, 0.5], temps, ProblemType.MULTI_LABEL)[:, 0], y[:, 0]
    )
    assert after < before / 3


def test_multiclass_shared_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(20000, 3))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    temps = fit_temperatures(z * 2.0, y, ProblemType.MULTI_CLASS)
    assert temps == [pytest.approx(2.0, rel=0.05)] * 3


def test_single_class_label_keeps_unit_temperature():
    assert fit_temperatures(np.array([[1.0], [2.0]]), np.array([[0.0], [0.0]]), ProblemType.MULTI_LABEL) == [
        1.0
    ]


def test_threshold_for_target_precision_is_lowest_reaching_it():
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])
    info = select_threshold(probs, y, 0.8)
    # at 0.4: 7 predicted, 6 positive -> precision 6/7 >= 0.8, recall 1; at 0.3 precision 6/8 < 0.8
    assert info.method == "target_precision"
    assert info.threshold == pytest.approx(0.4) and info.precision == pytest.approx(6 / 7)
    assert info.recall == pytest.approx(1.0)
    assert select_threshold(probs, y, 0.9).threshold == pytest.approx(0.6)  # 5/5 above 0.6; 0.5 gives 5/6


def test_separable_label_gets_the_clean_threshold_not_just_the_target():
    probs = np.array([0.05, 0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    info = select_threshold(probs, y, 0.6)  # 0.3 already reaches 0.75 precision at recall 1, 0.7 reaches 1.0
    assert info.threshold == pytest.approx(0.7) and info.precision == 1.0 and info.recall == 1.0


def test_unreachable_precision_falls_back_to_max_f1():
    probs = np.array([0.9, 0.8, 0.7, 0.6])
    y = np.array([0, 1, 0, 1])
    info = select_threshold(probs, y, 0.99)
    assert info.method == "max_f1"
    assert info.threshold == pytest.approx(0.6) and info.recall == 1.0


def test_threshold_default_when_one_class():
    assert select_threshold(np.array([0.2, 0.9]), np.array([0, 0])).method == "default"


def test_metric_names_follow_contract():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.2]])
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    m = evaluate_scores(probs, y, ["a", "b"], [0.5, 0.5], "test", sources=["x", "x", "y", "y"])
    for k in ("ap", "roc_auc", "precision", "recall", "f1", "recall_at_p90", "ece", "brier"):
        assert f"test.a.{k}" in m
    assert m["test.a.ap"] == 1.0 and m["test.macro.ap"] == 1.0
    assert "test.source.x.a.ap" in m and "test.source.y.b.roc_auc" not in m  # one class only in slice y for b


def test_max_flag_rate_raises_a_threshold_that_one_weak_positive_pulled_down():
    """All positives separable but one: the precision rule puts the threshold at that positive and
    flags 5% of the negatives; a 1% cap moves it above the 2nd-highest negative, whatever that row."""
    from model.calibration import flag_rate_floor, select_threshold

    rng = np.random.default_rng(0)
    neg = rng.uniform(0.0, 0.6, 1000)
    pos = np.r_[rng.uniform(0.9, 1.0, 999), np.quantile(neg, 0.95)]  # one weak positive
    p, y = np.r_[neg, pos], np.r_[np.zeros(1000), np.ones(1000)]

    plain = select_threshold(p, y, 0.9)
    assert plain.method == "target_precision" and plain.recall == 1.0
    assert plain.flagged_negatives == pytest.approx(0.05, abs=0.002)

    capped = select_threshold(p, y, 0.9, max_flag_rate=0.01)
    assert capped.method == "max_flag_rate" and capped.max_flag_rate == 0.01
    assert capped.flagged_negatives <= 0.01 and (neg >= capped.threshold).sum() == 10
    assert capped.threshold == flag_rate_floor(neg, 0.01) > np.sort(neg)[-11]
    assert capped.recall == pytest.approx(0.999) and capped.precision == pytest.approx(999 / 1009)

    loose = select_threshold(p, y, 0.9, max_flag_rate=0.2)  # a cap the precision rule already meets
    assert (loose.method, loose.threshold) == ("target_precision", plain.threshold)


def test_flag_rate_floor_edges():
    from model.calibration import flag_rate_floor

    assert flag_rate_floor(np.array([0.2, 0.2, 0.9]), 0.0) > 0.9  # nothing flagged
    assert flag_rate_floor(np.array([0.2, 0.2, 0.9]), 0.34) == pytest.approx(0.2, abs=1e-12)  # 1 allowed
    assert flag_rate_floor(np.array([]), 0.1) == 0.0
    assert flag_rate_floor(np.array([1.0]), 0.0) == 1.0  # clipped to a probability
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            flag_rate_floor(np.array([0.5]), bad)


def test_per_label_caps_from_the_config_reach_select_thresholds():
    from model.calibration import select_thresholds
    from training.config import Config

    cfg = Config.model_validate(
        {
            "labels": ["adult_services", "scam"],
            "data": {"path": "x"},
            "calibration": {"max_flag_rate_per_label": {"adult_services": 0.0}},
        }
    )
    assert cfg.max_flag_rates() == {"adult_services": 0.0, "scam": None}
    rng = np.random.default_rng(1)
    p = rng.uniform(size=(200, 2))
    y = (p + rng.normal(0, 0.3, p.shape) > 0.7).astype(int)
    info = select_thresholds(p, y, cfg.labels, cfg.target_precisions(), cfg.max_flag_rates())
    assert info["adult_services"].flagged_negatives == 0.0 and info["scam"].max_flag_rate is None
    with pytest.raises(ValueError, match="unknown labels"):
        Config.model_validate(
            {
                "labels": ["scam"],
                "data": {"path": "x"},
                "calibration": {"max_flag_rate_per_label": {"x": 0.1}},
            }
        )


@pytest.mark.parametrize(
    "calibration",
    [
        {"max_flag_rate_per_label": {"scam": 1.0}},
        {"max_flag_rate_per_label": {"scam": -0.1}},
        {"target_precision_per_label": {"scam": 0.0}},
        {"target_precision_per_label": {"scam": 1.5}},
    ],
)
def test_per_label_calibration_values_out_of_range_are_refused(calibration):
    from pydantic import ValidationError

    from training.config import Config

    with pytest.raises(ValidationError, match="scam"):
        Config.model_validate({"labels": ["scam"], "data": {"path": "x"}, "calibration": calibration})
