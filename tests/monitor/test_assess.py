"""``assess`` on scored windows without a model (synthetic calibrated scores and embeddings): a
prevalence shift is estimated without labels and read as ``retrain``; ads unlike the reference make
it ``labels_needed``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitor.run import assess
from monitor.verdict import Status
from monitor.window import Window
from tests.conftest import DATA_DIR


def _window(df: pd.DataFrame, rng, axis: int = 0) -> Window:
    y = df.labels.apply(lambda x: "scam" in x).to_numpy(float)[:, None]
    s = np.where(y[:, 0] > 0, rng.normal(2.0, 1, len(df)), rng.normal(0, 1, len(df)))
    lr = np.exp(2.0 * s - 2.0)
    base = 0.05
    p = (base * lr / (base * lr + 1 - base))[:, None]  # calibrated under a 5% prior
    e = rng.normal(scale=0.3, size=(len(df), 16))
    e[:, axis] += 1.0  # embeddings around one direction
    return Window(
        ids=df.id.tolist(),
        texts=df.text.tolist(),
        probs=p,
        labels=y,
        embeddings=e / np.linalg.norm(e, axis=1, keepdims=True),
    )


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    df = pd.read_json(DATA_DIR / "test.jsonl", lines=True)
    return df[df.source.isin(["uci_sms_spam", "craigslist_headings"])].sample(frac=1.0, random_state=0)


def test_prevalence_shift_is_estimated_without_labels(pool):
    rng = np.random.default_rng(0)
    scam = pool[pool.labels.apply(lambda x: "scam" in x)]
    other = pool[~pool.index.isin(scam.index)]
    ref = _window(pd.concat([scam[:25], other[:475]]), rng)  # 5% scam
    cur = _window(pd.concat([scam[25:50], other[475:575]]), rng)  # 20% scam
    a = assess(ref, cur, ("scam",), [0.5])
    p = a.prevalence["scam"]
    assert (
        p["changed"] and abs(p["em"] - 0.2) < 0.06 and abs(p["em"] - 0.2) < abs(p["mean_probability"] - 0.2)
    )
    perf = a.performance["scam"]["precision"]
    assert abs(perf["estimated"] - perf["realised"]) < abs(perf["reference"] - perf["realised"]) + 0.05
    assert a.status is Status.RETRAIN


def test_ads_unlike_the_reference_need_labels(pool):
    rng = np.random.default_rng(1)
    ref = _window(pool[:400], rng)
    cur = _window(pool[400:600], rng, axis=1)  # every current embedding in another direction
    cur.texts = ["".join(chr(97 + rng.integers(26)) if c.isalpha() else c for c in t) for t in cur.texts]
    a = assess(ref, cur, ("scam",), [0.5])
    assert a.drift["embedding"]["novel_share"] > 0.8 and a.drift["text"]["drifted"]
    assert a.status is Status.LABELS_NEEDED and any("unlike any reference ad" in r for r in a.reasons)
    assert any(w.startswith("input drift") for w in a.warnings)


def test_estimates_move_to_the_em_prior_only_when_the_prevalence_signal_fires(pool):
    """The same 5% -> 20% window read with the default prevalence rule (x1.25: fires) and with a rule
    it cannot meet (x10): the estimates take the EM prior only where the verdict reports the change."""
    from monitor.verdict import MonitorSettings

    rng = np.random.default_rng(0)
    scam = pool[pool.labels.apply(lambda x: "scam" in x)]
    other = pool[~pool.index.isin(scam.index)]
    ref = _window(pd.concat([scam[:25], other[:475]]), rng)
    cur = _window(pd.concat([scam[25:50], other[475:575]]), rng)
    fired = assess(ref, cur, ("scam",), [0.5])
    quiet = assess(ref, cur, ("scam",), [0.5], settings=MonitorSettings(prevalence_ratio=10.0))
    lo, _ = quiet.prevalence["scam"]["ratio_interval"]
    assert fired.prevalence["scam"]["changed"] and not quiet.prevalence["scam"]["changed"] and lo > 1
    moved, kept = fired.performance["scam"]["recall"], quiet.performance["scam"]["recall"]
    assert moved["estimated"] != kept["estimated"]
    assert abs(moved["estimated"] - moved["realised"]) < abs(kept["estimated"] - kept["realised"])


def _nested_window(df: pd.DataFrame, adult_share: float, rng) -> Window:
    """Two nested labels: a quarter of the adult ads carry trafficking indicators, and no other ad does.
    The model's adult probability is sharp; its trafficking probability is weak evidence times it."""
    n = len(df)
    adult = rng.random(n) < adult_share
    traffic = adult & (rng.random(n) < 0.25)
    p_adult = 1 / (1 + np.exp(-np.where(adult, rng.normal(4, 1, n), rng.normal(-4, 1, n))))
    p_traffic = p_adult / (1 + np.exp(-np.where(traffic, rng.normal(0.5, 1, n), rng.normal(-1.5, 1, n))))
    return Window(
        ids=df.id.tolist(),
        texts=df.text.tolist(),
        probs=np.column_stack([p_adult, p_traffic]),
        labels=np.column_stack([adult, traffic]).astype(float),
    )


def test_a_nested_label_is_estimated_within_its_parent(pool):
    """Three times the adult ads, the same share of trafficking among them: trafficking's prevalence
    triples, its prior within adult ads does not move, and its precision and recall are estimated
    within 0.05 (an EM on trafficking's own marginal reads the extra adult ads as trafficking
    evidence and moves its posteriors)."""
    rng = np.random.default_rng(3)
    ads = pd.read_json(DATA_DIR / "test.jsonl", lines=True)  # texts only: the labels are drawn here
    ref = _nested_window(ads, 0.1, rng)
    cur = _nested_window(ads, 0.3, rng)
    a = assess(ref, cur, ("adult_services", "trafficking_indicators"), [0.5, 0.3])
    t = a.prevalence["trafficking_indicators"]
    lo, hi = t["within"]["ratio_interval"]
    assert t["within"]["parent"] == "adult_services" and lo < 1 < hi
    assert t["changed"] and 2 < t["ratio"] < 4.5
    for metric in ("precision", "recall"):
        m = a.performance["trafficking_indicators"][metric]
        assert abs(m["estimated"] - m["realised"]) < 0.05, (metric, m)
