"""The explainer's evaluation harness (bench/explain_faithfulness.py): the deletion test on a model with
a known answer, and span deletion."""

from __future__ import annotations

import random

from bench.explain_faithfulness import delete_spans, deletion_test
from model.explain import Explainer


def test_deletion_test_margin_on_known_model(known_predictor):
    rng = random.Random(3)
    filler = ["please", "send", "the", "money", "today", "friend", "call", "me", "later", "ok"]
    texts = []
    for _ in range(12):
        words = rng.sample(filler, 6) + ["cash", "wire"]
        rng.shuffle(words)
        texts.append(" ".join(words))
    ex = Explainer(known_predictor)
    f = deletion_test(ex, texts, "scam", k=2, draws=4, seed=0)
    assert f.n == len(texts)
    # top-2 deletion removes both cues (logit 5 -> 0); random pairs rarely do: a stated margin of 0.2
    assert f.margin > 0.2 and f.wins > 0.8
    assert f.drop_top > f.drop_random


def test_delete_spans_keeps_neighbours_apart():
    assert delete_spans("ab cd ef", [(3, 5)]) == "ab   ef"
    assert delete_spans("abcd", [(1, 2), (2, 3)]) == "a  d"
