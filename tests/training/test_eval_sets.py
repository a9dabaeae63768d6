"""Extra evaluation sets (training/eval_sets.py): loading, borrowed negatives, known-answer metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from model.schema import LabelSchema
from training.data import DataError, Split
from training.eval_sets import evaluate_eval_set, flagged_negatives, format_eval_sets, load_eval_set

SCHEMA = LabelSchema(labels=("adult_services", "trafficking_indicators", "scam"))


def _entry(path, **kw):
    base = dict(
        path=str(path),
        text_column="text",
        label_format="list",
        labels_column="labels",
        source_column="source",
        id_column="id",
        labels=["adult_services"],
        negatives_from_test=False,
    )
    return SimpleNamespace(**(base | kw))


def _test_split() -> Split:
    frame = pd.DataFrame(
        {
            "text": ["ipad", "sofa", "escort ad", "win a prize"],
            "source": ["craigslist_headings", "craigslist_headings", "backpage", "sms"],
            "id": ["a", "b", "c", "d"],
        }
    )
    y = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    for j, n in enumerate(SCHEMA.labels):
        frame[f"y.{n}"] = y[:, j]
    return Split("test", frame, y)


@pytest.fixture
def cross_site(tmp_path):
    p = tmp_path / "xs.jsonl"
    rows = [
        {"id": "x1", "text": "sexy massage", "labels": ["adult_services"], "source": "other"},
        {"id": "x2", "text": "nuru b2b", "labels": ["adult_services"], "source": "other"},
        {"id": "x3", "text": "sports massage", "labels": [], "source": "other"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def test_negatives_from_test_are_the_rows_negative_for_the_set_labels(cross_site):
    es = load_eval_set("cross_site", _entry(cross_site, negatives_from_test=True), SCHEMA, _test_split())
    assert es.borrowed_negatives == 3 and len(es.split) == 6  # the backpage (adult) row is not borrowed
    assert es.split.targets[:, 0].sum() == 2 and es.label_index == [0]
    with pytest.raises(DataError, match="test split"):
        load_eval_set("cross_site", _entry(cross_site, negatives_from_test=True), SCHEMA, None)
    with pytest.raises(DataError, match="not labels"):
        load_eval_set("cross_site", _entry(cross_site, labels=["adult"]), SCHEMA, None)


def test_metrics_recall_and_flagged_craigslist_share(cross_site):
    es = load_eval_set("cross_site", _entry(cross_site, negatives_from_test=True), SCHEMA, _test_split())
    # rows: x1, x2, x3 (benign massage), ipad, sofa, win a prize
    probs = np.zeros((6, 3))
    probs[:, 0] = [0.9, 0.2, 0.1, 0.6, 0.0, 0.0]
    m = evaluate_eval_set(es, probs, SCHEMA.labels, [0.5, 0.5, 0.5])
    assert m["eval.cross_site.adult_services.recall"] == 0.5
    assert m["eval.cross_site.source.craigslist_headings.adult_services.flagged_negatives"] == 0.5
    assert m["eval.cross_site.adult_services.flagged_negatives"] == 0.25
    assert not any(".scam." in k for k in m)  # only the set's labels are scored
    assert "cross_site" in format_eval_sets(m, ["cross_site"], SCHEMA.labels)


def test_flagged_negatives_skips_slices_without_negatives():
    m = flagged_negatives(np.array([[0.9], [0.1]]), np.array([[1], [0]]), ["a"], [0.5], "k", ["s1", "s2"])
    assert m == {"k.a.flagged_negatives": 0.0, "k.source.s2.a.flagged_negatives": 0.0}


def _gate_cfg(**floors):
    from training.config import GateConfig

    return GateConfig(eval_floors=floors)


def _gate_metrics(recall: float, cl_flagged: float) -> dict[str, float]:
    m = {"gate.macro.ap": 0.9}
    for lab in SCHEMA.labels:
        m |= {f"gate.{lab}.ap": 0.9, f"gate.{lab}.recall": 0.9, f"gate.{lab}.ece": 0.01}
    return m | {
        "eval.cross_site.adult_services.recall": recall,
        "eval.cross_site.source.craigslist_headings.adult_services.flagged_negatives": cl_flagged,
    }


def test_gate_rejects_a_challenger_that_loses_cross_site_recall():
    from training.gate import apply_gate

    g = _gate_cfg(
        **{
            "cross_site.adult_services.recall": 0.8,
            "cross_site.source.craigslist_headings.adult_services.flagged_negatives": 0.005,
        }
    )
    champion = _gate_metrics(0.85, 0.002)
    rows = apply_gate(_gate_metrics(0.60, 0.002), champion, SCHEMA.labels, g)
    failed = [r for r in rows if r.passed is False]
    assert [(r.slice, r.label, r.metric) for r in failed] == [("eval:cross_site", "adult_services", "recall")]
    assert failed[0].champion == 0.85 and failed[0].challenger == 0.60
    # the flagged share is a ceiling; a challenger within every bound passes them all
    rows = apply_gate(_gate_metrics(0.82, 0.010), champion, SCHEMA.labels, g)
    assert [r.metric for r in rows if r.passed is False] == ["flagged_negatives"]
    assert not [
        r for r in apply_gate(_gate_metrics(0.82, 0.001), champion, SCHEMA.labels, g) if r.passed is False
    ]
    # a first model (no champion) is held to the same floors; a metric that was not measured fails
    missing = {k: v for k, v in _gate_metrics(0.9, 0.0).items() if not k.startswith("eval.")}
    assert any(
        r.passed is False and r.slice == "eval:cross_site"
        for r in apply_gate(missing, None, SCHEMA.labels, g)
    )


def test_gate_metrics_add_the_extra_sets(cross_site):
    from training.retrain import gate_metrics

    es = load_eval_set("cross_site", _entry(cross_site), SCHEMA, None)

    class FakePredictor:  # scores "massage" ads as adult: recall 1/2 on the two positives
        labels = SCHEMA.labels
        meta = SimpleNamespace(threshold_vector=lambda: [0.5, 0.5, 0.5])

        def predict_proba(self, texts):
            return np.array([[0.9 if "sexy" in t else 0.1, 0.0, 0.0] for t in texts])

    gate = _test_split()
    m = gate_metrics(FakePredictor(), Split("gate", gate.frame, gate.targets), [es])
    assert m["eval.cross_site.adult_services.recall"] == 0.5 and "gate.adult_services.ap" in m
