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
