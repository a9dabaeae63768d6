"""Predictor behaviour on the probe rows marked `predict`, and on batching invariants."""

from __future__ import annotations

import numpy as np
import pytest

from model.normalize import normalize_text
from tests.conftest import expand_probe_input

pytestmark = []


def _by_kind(probes, kind):
    return [r for r in probes if r["kind"] == kind and "predict" in r["where"].split(",")]


def test_long_text_is_scored_and_marked_truncated(tiny_predictor, probes):
    for row in _by_kind(probes, "long-text"):
        [p] = tiny_predictor.predict([row["value"]])
        assert p.truncated is True
        assert all(0.0 <= v <= 1.0 for v in p.category_scores.values())


def test_empty_and_whitespace_scored_same_alone_or_in_batch(tiny_predictor, probes):
    for row in _by_kind(probes, "empty"):
        alone = tiny_predictor.predict_proba([row["value"]])[0]
        batch = tiny_predictor.predict_proba(["a long advertisement text " * 20, row["value"], "x"])[1]
        np.testing.assert_allclose(alone, batch, atol=1e-4)
        assert tiny_predictor.predict([row["value"]])[0].truncated is False


def test_batch_vs_single(tiny_predictor, probes):
    [row] = _by_kind(probes, "batch-vs-single")
    texts = row["value"]
    together = tiny_predictor.predict_proba(texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(tiny_predictor.predict_proba([t])[0], together[i], atol=1e-4)


def test_unicode_forms_score_identically(tiny_predictor, probes):
    [row] = _by_kind(probes, "unicode-forms")
    nfc, nfd = row["value"]
    assert nfc != nfd  # the probe really holds two encodings
    np.testing.assert_allclose(
        tiny_predictor.predict_proba([nfc]), tiny_predictor.predict_proba([nfd]), atol=1e-6
    )


def test_homoglyph_zero_width_normalised_to_plain(tiny_predictor, probes):
    [row] = _by_kind(probes, "homoglyph-zero-width")
    assert normalize_text(row["value"]) == "hot girls intown, call now"
    plain = tiny_predictor.predict_proba(["hot girls intown, call now"])
    np.testing.assert_allclose(tiny_predictor.predict_proba([row["value"]]), plain, atol=1e-6)


def test_html_entities_and_tags(tiny_predictor, probes):
    [row] = _by_kind(probes, "html")
    assert normalize_text(row["value"]) == "Full body massage & more call now"


def test_emoji_do_not_collapse_to_unknown(tiny_predictor, probes):
    [row] = _by_kind(probes, "emoji-only")
    enc = tiny_predictor.encoder.encode([row["value"]])
    unk = tiny_predictor.encoder.tokenizer.unk_token_id
    ids = enc.input_ids[0][1:-1]
    assert ids and unk not in ids
    other = tiny_predictor.encoder.encode(["🍒🍒"]).input_ids[0]
    assert other != enc.input_ids[0]


def test_non_string_item_names_index_not_content(tiny_predictor):
    with pytest.raises(TypeError, match="item 1") as e:
        tiny_predictor.predict(["secret ad text", None])
    assert "secret" not in str(e.value)


def test_results_in_input_order_and_flag_rule(tiny_predictor):
    texts = ["b" * 300, "a", "cheap rental flat", "", "z " * 40]
    scores = tiny_predictor.score(texts)
    solo = np.vstack([tiny_predictor.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(scores.probabilities, solo, atol=1e-4)
    thr = np.asarray(tiny_predictor.meta.threshold_vector())
    assert (scores.flagged == (scores.probabilities >= thr).any(axis=1)).all()


def test_probe_expansion_helper():
    assert expand_probe_input({"repeat": "ab", "times": 3}) == "ababab"
    assert expand_probe_input({"repeat_list": "ad", "times": 2}) == ["ad", "ad"]
