"""The gate's pure rules with known answers: no training, no MLflow."""

from __future__ import annotations

from training.config import GateConfig
from training.gate import apply_gate, format_gate_table

LABELS = ("adult_services", "scam")


def metrics(
    macro: float,
    ap: dict[str, float],
    recall: dict[str, float],
    ece: float = 0.02,
    sources: dict[str, dict[str, tuple[float, int, int]]] | None = None,
) -> dict[str, float]:
    """Gate-set metrics in the pipeline's key format; ``sources``: source -> label -> (ap, n, support)."""
    out = {"gate.macro.ap": macro}
    for lab in LABELS:
        out |= {f"gate.{lab}.ap": ap[lab], f"gate.{lab}.recall": recall[lab], f"gate.{lab}.ece": ece}
    for src, per in (sources or {}).items():
        for lab, (a, n, pos) in per.items():
            out |= {
                f"gate.source.{src}.{lab}.ap": a,
                f"gate.source.{src}.{lab}.n": n,
                f"gate.source.{src}.{lab}.support": pos,
            }
    return out


def by_key(rows):
    return {(r.slice, r.label, r.metric): r for r in rows}


def test_first_model_floors():
    g = GateConfig(min_macro_ap=0.6, min_ap={"scam": 0.9})
    rows = by_key(
        apply_gate(
            metrics(0.7, {"adult_services": 0.5, "scam": 0.95}, {"adult_services": 0.5, "scam": 0.5}),
            None,
            LABELS,
            g,
        )
    )
    assert rows[("all", "macro", "ap")].passed is True
    assert rows[("all", "scam", "ap")].passed is True and rows[("all", "scam", "ap")].champion is None
    assert rows[("all", "adult_services", "ap")].passed is None  # no floor: reported only
    assert not any(k[2] == "recall" for k in rows)  # recall drops need a champion
    rows = by_key(
        apply_gate(
            metrics(0.55, {"adult_services": 0.5, "scam": 0.85}, {"adult_services": 0.5, "scam": 0.5}),
            None,
            LABELS,
            g,
        )
    )
    assert rows[("all", "macro", "ap")].passed is False and rows[("all", "scam", "ap")].passed is False


def test_challenger_within_tolerances_passes_and_one_drop_fails():
    g = GateConfig(ap_tolerance=0.01, macro_ap_tolerance=0.0, max_recall_drop=0.05, max_ece=0.1)
    champ = metrics(0.80, {"adult_services": 0.90, "scam": 0.70}, {"adult_services": 0.8, "scam": 0.6})
    ok = metrics(0.80, {"adult_services": 0.895, "scam": 0.71}, {"adult_services": 0.76, "scam": 0.6})
    assert not [r for r in apply_gate(ok, champ, LABELS, g) if r.passed is False]
    worse = metrics(
        0.80, {"adult_services": 0.88, "scam": 0.71}, {"adult_services": 0.74, "scam": 0.6}, ece=0.2
    )
    failed = {(r.label, r.metric) for r in apply_gate(worse, champ, LABELS, g) if r.passed is False}
    assert failed == {
        ("adult_services", "ap"),
        ("adult_services", "recall"),
        ("adult_services", "ece"),
        ("scam", "ece"),
    }
    row = by_key(apply_gate(worse, champ, LABELS, g))[("all", "adult_services", "ap")]
    assert abs(row.delta - (-0.02)) < 1e-12


def test_source_slices_without_a_ranking_task_are_skipped():
    g = GateConfig(per_source_ap_tolerance=0.05)
    src = {"sms": {"scam": (0.90, 100, 10), "adult_services": (float("nan"), 100, 0)}}
    champ = metrics(
        0.8, {"adult_services": 0.9, "scam": 0.9}, {"adult_services": 0.8, "scam": 0.8}, sources=src
    )
    chall = metrics(
        0.8,
        {"adult_services": 0.9, "scam": 0.9},
        {"adult_services": 0.8, "scam": 0.8},
        sources={"sms": {"scam": (0.80, 100, 10), "adult_services": (float("nan"), 100, 0)}},
    )
    rows = by_key(apply_gate(chall, champ, LABELS, g))
    assert rows[("sms", "scam", "ap")].passed is False
    assert ("sms", "adult_services", "ap") not in rows  # no positives in the slice: nothing to rank


def test_missing_challenger_metric_fails_and_table_shows_it():
    g = GateConfig()
    champ = metrics(0.8, {"adult_services": 0.9, "scam": 0.9}, {"adult_services": 0.8, "scam": 0.8})
    chall = dict(champ)
    del chall["gate.scam.ap"]
    rows = apply_gate(chall, champ, LABELS, g)
    assert by_key(rows)[("all", "scam", "ap")].passed is False
    table = format_gate_table(rows)
    assert table.splitlines()[0].split() == [
        "slice",
        "label",
        "metric",
        "champion",
        "challenger",
        "delta",
        "rule",
        "result",
    ]
    assert "FAIL" in table


def test_ap_delta_interval_known_answers():
    """The ONNX/student AP gate's equivalence test (training.variant_gate.ap_delta_interval)."""
    import numpy as np
    import pytest

    from training.variant_gate import ap_delta_interval, intervals_pass

    rng = np.random.default_rng(0)
    y = np.zeros((400, 2), dtype=int)
    y[:60, 0] = 1  # label 0: 60 positives; label 1: none (AP undefined)
    ref = np.column_stack([y[:, 0] * 0.5 + rng.random(400), rng.random(400)])
    same = ap_delta_interval(ref, ref.copy(), y, ["a", "b"], n_resamples=50)
    assert same == {"a": (0.0, 0.0), "b": None}
    assert intervals_pass(same, 0.005)
    noisy = ref + np.column_stack([rng.normal(0, 0.3, 400), np.zeros(400)])
    iv = ap_delta_interval(noisy, ref, y, ["a", "b"], n_resamples=200)
    lo, hi = iv["a"]
    assert lo < hi and hi - lo > 0.01  # a different ranker: the delta varies with the sample of texts
    assert not intervals_pass(iv, 0.005)
    assert ap_delta_interval(noisy, ref, y, ["a", "b"], n_resamples=200) == iv  # seeded: reproducible
    # the rule: every defined interval inside +-tolerance
    assert intervals_pass({"a": (-0.004, 0.005), "b": None}, 0.005)
    assert not intervals_pass({"a": (-0.0051, 0.0), "b": None}, 0.005)
    with pytest.raises(ValueError, match="confidence"):
        ap_delta_interval(ref, ref, y, ["a", "b"], confidence=1.0)
    with pytest.raises(ValueError, match="shapes"):
        ap_delta_interval(ref[:10], ref, y, ["a", "b"])


def test_own_thresholds_are_held_to_the_target_and_the_reference_recall():
    """With its own thresholds a variant lands at another precision for the same target: it passes
    while precision stays at the target and recall does not fall; a recall loss fails it."""
    import numpy as np

    from training.variant_gate import decision_deltas, decisions_pass

    y = np.zeros((1000, 1), dtype=int)
    y[:200] = 1

    def flags(tp, fp):
        p = np.zeros((1000, 1))
        p[:tp] = 0.9
        p[200 : 200 + fp] = 0.9
        return p

    ref = flags(100, 5)  # precision 0.952, recall 0.50
    kw = dict(ref_thresholds=[0.5], target_precision=[0.9])
    more = decision_deltas(flags(110, 12), ref, y, [0.5], ["a"], **kw)  # precision 0.902, recall 0.55
    assert more["a"]["precision"] > 0 and decisions_pass(more)
    assert not decisions_pass(decision_deltas(flags(110, 12), ref, y, [0.5], ["a"]))  # two-sided: fails
    fewer = decision_deltas(flags(80, 2), ref, y, [0.5], ["a"], **kw)  # recall 0.40
    assert fewer["a"]["recall"] < -0.02 and not decisions_pass(fewer)
    loose = decision_deltas(flags(110, 30), ref, y, [0.5], ["a"], **kw)  # precision 0.786 < target
    assert not decisions_pass(loose)


def test_the_gate_refuses_a_variant_that_ranks_alike_but_flags_differently():
    """AP is rank-only: a variant whose probabilities are a monotone squash of the reference's has the
    same AP but flags fewer ads at the same threshold; the decision deltas catch it."""
    import numpy as np

    from training.variant_gate import DECISION_TOLERANCE, ap_deltas, decision_deltas, decisions_pass

    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < 0.3).astype(int)
    ref = np.clip(0.5 * y + 0.5 * rng.random((400, 2)), 0, 1)
    squashed = ref**3  # same order, lower scale
    labels = ["a", "b"]
    assert max(abs(d) for d in ap_deltas(squashed, ref, y, labels).values()) < 1e-12
    dec = decision_deltas(squashed, ref, y, [0.5, 0.5], labels)
    assert dec["a"]["recall"] < -DECISION_TOLERANCE and dec["b"]["recall"] < -DECISION_TOLERANCE
    assert not decisions_pass(dec)
    same = decision_deltas(ref, ref, y, [0.5, 0.5], labels)
    assert all(row[m] == 0.0 for row in same.values() for m in ("precision", "recall"))
    assert decisions_pass(same)
    # few flagged: moving one flagged text of 20 (precision -0.05) is within the two-text allowance
    few = np.zeros((400, 1))
    few[:20, 0] = 0.9
    y1 = np.zeros((400, 1), dtype=int)
    y1[:19, 0] = 1
    moved = few.copy()
    moved[18, 0], moved[25, 0] = 0.1, 0.9  # a true positive drops below, a negative rises above
    one = decision_deltas(moved, few, y1, [0.5], ["a"])
    assert one["a"]["precision"] < -DECISION_TOLERANCE and one["a"]["precision_allowed"] == 2 / 20
    assert decisions_pass(one)
    # undefined where nothing is flagged or a label has no positives
    none = decision_deltas(ref, ref, np.zeros_like(y), [2.0, 0.5], labels)
    assert none["a"]["precision"] is None and none["a"]["recall"] is None and none["b"]["recall"] is None
    # a variant that flags nothing where the reference flags many, on a label without positives
    # (precision and recall both undefined): the number flagged still fails it
    silent = decision_deltas(ref * 0.0, ref, np.zeros_like(y), [0.5, 0.5], labels)
    assert silent["a"]["precision"] is None and silent["a"]["flagged"] == -1.0
    assert not decisions_pass(silent)
