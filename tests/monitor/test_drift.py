"""Drift statistics: the text domain classifier stays quiet on two samples of the same traffic and
fires on changed text; templated ads must not leak across its folds; MMD and PSI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitor.drift import (
    AUC_THRESHOLD,
    ad_groups,
    mmd_test,
    novel_share,
    psi,
    random_auc_quantile,
    text_drift,
)
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def ads() -> pd.DataFrame:
    df = pd.read_json(DATA_DIR / "validation.jsonl", lines=True)
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _drift(ref_texts, cur_texts, grouped=True):
    groups, masked = ad_groups(list(ref_texts) + list(cur_texts))
    n = len(ref_texts)
    ids = [str(i) for i in range(len(groups))]
    g = groups if grouped else np.arange(len(groups))
    return text_drift(masked[:n], masked[n:], ids[:n], ids[n:], g, seed=0)


def test_same_traffic_does_not_drift_and_changed_text_does(ads):
    ref, cur = ads.text[:300].tolist(), ads.text[300:600].tolist()
    same = _drift(ref, cur)
    assert same.auc < same.threshold and not same.drifted
    rng = np.random.default_rng(0)
    noisy = [
        "".join(chr(97 + rng.integers(26)) if c.isalpha() and rng.random() < 0.3 else c for c in t)
        for t in cur
    ]
    changed = _drift(ref, noisy)
    assert changed.drifted and changed.auc > 0.75
    assert changed.top_terms["reference"] and len(changed.examples["current"]) == 5


def test_templated_ads_do_not_leak_across_folds(ads):
    """A bug kind: ads of one template in both training and held-out folds make any two samples of
    the same traffic look different. Both sides here are templates drawn from one pool."""
    long = ads[ads.text.str.split().str.len() >= 12].text.tolist()[:120]
    variants = [f"{t} ref {k}" for t in long for k in range(5)]  # 5 near-duplicates per template
    ref, cur = variants[: len(variants) // 2], variants[len(variants) // 2 :]
    grouped, ungrouped = _drift(ref, cur), _drift(ref, cur, grouped=False)
    assert not grouped.drifted
    assert ungrouped.auc > grouped.auc + 0.1 and ungrouped.drifted


def test_contacts_are_masked_before_the_classifier_sees_them():
    _, masked = ad_groups(["call me at 415-555-0199 tonight", "mail kim at kim22@gmail.com"])
    assert "0199" not in masked[0] and "kim22" not in masked[1]


def test_random_auc_threshold_is_evidently_s_for_small_windows():
    assert random_auc_quantile(5000, 5000) < AUC_THRESHOLD < random_auc_quantile(30, 30)


def test_mmd_permutation_test():
    rng = np.random.default_rng(0)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    a, b = unit(rng.normal(size=(200, 8))), unit(rng.normal(size=(200, 8)))
    g = np.arange(200)
    assert mmd_test(a, b, g, g, permutations=200).p_value > 0.05
    shifted = unit(rng.normal(size=(200, 8)) + np.r_[1.0, np.zeros(7)])
    res = mmd_test(a, shifted, g, g, permutations=200)
    assert res.drifted and res.p_value < 0.01


def test_novel_share_counts_ads_far_from_every_reference_ad():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 4))
    far = np.r_[rng.normal(size=(70, 4)), rng.normal(size=(30, 4)) + 8.0]  # 30 of 100 far away

    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    g = np.arange(300)
    assert novel_share(sq(ref, ref), sq(rng.normal(size=(100, 4)), ref), g) < 0.05
    assert 0.28 <= novel_share(sq(ref, ref), sq(far, ref), g) <= 0.35
    # a reference of near-duplicate pairs: without the group rule every fresh ad would look novel
    pairs = np.repeat(ref, 2, axis=0) + rng.normal(scale=1e-3, size=(600, 4))
    assert novel_share(sq(pairs, pairs), sq(rng.normal(size=(100, 4)), pairs), np.repeat(g, 2)) < 0.05


def test_psi():
    rng = np.random.default_rng(0)
    x = rng.beta(0.5, 5, 5000)
    assert psi(x, rng.beta(0.5, 5, 5000)) < 0.02
    assert psi(x, rng.beta(2, 2, 5000)) > 0.25
