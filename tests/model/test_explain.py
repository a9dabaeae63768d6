"""Explanations: offset map, units, known-answer attributions (occlusion and IG), probes. The deletion
test (the explainer's evaluation harness) is tested in tests/bench, the data-set ranking in
tests/training/test_explain_report.py; ``known_predictor`` is in tests/conftest.py."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model.encoding import CHARS_PER_TOKEN_CAP
from model.explain import Explainer, text_units
from model.normalize import normalize_text, normalize_with_offsets
from tests.conftest import probe_rows

ODD = [
    "",
    "   \n\t ",
    "<b>Full body massage</b>&nbsp;&amp; more <br/>call now",
    "ｈｏｔ ｇｉｒｌｓ in\u200btown, c\u200ball n\u200bow",
    "💋💋🔥🔥👅💦🍒🌹",
    "café massage",
    "cafe\u0301 massage",
    "&lt;b&gt;not a tag&lt;/b&gt; &#x1F48B; &#128139 &bogus; & < >",
    "\ud83d broken surrogate \u2764\ufe0f ﬁne ①",
    "\u1100\u1161\u11a8 hangul jamo \u0b47\u0b3e",
]


def _fuzz(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        "a",
        "B",
        " ",
        "\n",
        "&amp;",
        "&nbsp;",
        "<b>",
        "</i>",
        "<br/>",
        "\u200b",
        "\ufe0f",
        "💋",
        "ｈ",
        "e\u0301",
        "\u1100",
        "\u1161",
        "\u11a8",
        "&#x1F48B;",
        "&lt;b&gt;",
        "\ud83d",
        "ﬁ",
        "①",
        "&",
        "<",
    ]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def test_offset_map_returns_exactly_normalize_text_and_valid_spans():
    for text in ODD + _fuzz(500, seed=12):
        norm, off = normalize_with_offsets(text)
        assert norm == normalize_text(text), ascii(text)
        assert off.shape == (len(norm), 2)
        if len(norm):
            assert (off[:, 0] >= 0).all() and (off[:, 1] <= len(text)).all() and (off[:, 1] > off[:, 0]).all()
            assert (np.diff(off[:, 0]) >= 0).all()  # monotone: spans follow the original order


def test_offset_map_points_at_the_source_characters():
    text = "<i>x</i>&amp;💋 ｈｉ c\u200ball"
    norm, off = normalize_with_offsets(text)
    src = [text[a:b] for a, b in off]
    assert norm.startswith("x & kiss mark hi call")
    assert src[norm.index("&")] == "&amp;"
    assert {src[i] for i in range(norm.index("kiss"), norm.index("mark") + 4)} == {"💋"}
    assert src[norm.index("h")] == "ｈ"
    assert normalize_with_offsets(text)[0] == normalize_text(text)


def test_units_use_the_predictor_token_ids_and_index_the_original(tiny_predictor):
    enc = tiny_predictor.encoder
    for text in ODD:
        u = text_units(text, enc.tokenizer, enc.max_length)
        assert u.input_ids == enc.encode([text]).input_ids[0]
        for a, b in u.spans:
            assert text[a:b].strip()  # a unit never indexes pure white space
    u = text_units("💋💋 call", enc.tokenizer, enc.max_length)
    assert [tuple(s) for s in u.spans] == [
        (0, 1),
        (1, 2),
        (3, 7),
    ]  # each emoji is one unit, not its name's words


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_known_answer_attributions(known_predictor, method):
    text = "hello&nbsp;please <b>send</b> CASH by ｗｉｒｅ now 💋"
    ex = Explainer(known_predictor, method=method, ig_steps=4)
    out = ex.explain([text], labels=["scam", "adult_services"], top_k=3)[0]
    scam = out["scam"]
    assert [text[s.start : s.end] for s in scam] == ["CASH", "ｗｉｒｅ", "hello"]
    assert [round(s.score, 4) for s in scam] == [3.0, 2.0, -1.0]  # signed, strongest |score| first
    adult = out["adult_services"]
    assert text[adult[0].start : adult[0].end] == "💋" and adult[0].score == pytest.approx(4.0, abs=1e-4)


def test_explain_defaults_to_flagged_labels(known_predictor):
    ex = Explainer(known_predictor)
    flagged, benign = ex.explain(["wire the cash", "plain words only"])
    assert list(flagged) == ["scam"]  # sigmoid(5) >= 0.9; the other labels stay at sigmoid(0) = 0.5
    assert benign == {}


def test_bad_input_is_a_clear_error(tiny_predictor):
    ex = Explainer(tiny_predictor)
    with pytest.raises(TypeError, match="item 1"):
        ex.explain(["ok", 3], labels=["scam"])
    with pytest.raises(ValueError, match="unknown labels"):
        ex.explain(["ok"], labels=["nope"])
    with pytest.raises(ValueError, match="unknown explanation method"):
        Explainer(tiny_predictor, method="lime")


def test_predict_probe_offsets_index_the_original_text(tiny_predictor, probes):
    ex = Explainer(tiny_predictor)
    texts = []
    for row in probe_rows(probes, "predict"):
        v = row["value"]
        texts.extend(v if isinstance(v, list) else [v])
    texts = [t for t in texts if isinstance(t, str)]
    assert any("\u200b" in t for t in texts) and any("&nbsp;" in t for t in texts)
    out = ex.explain(texts, labels=list(tiny_predictor.labels), top_k=50)
    for text, res in zip(texts, out, strict=True):
        norm = normalize_text(text)
        cap = tiny_predictor.meta.max_length * CHARS_PER_TOKEN_CAP
        for spans in res.values():
            assert bool(spans) == bool(norm)  # every non-blank text has a unit inside the window
            for s in spans:
                piece = text[s.start : s.end]
                assert 0 <= s.start < s.end <= len(text) and piece.strip()
                # the highlighted original characters normalise to text the model saw (a word cut by
                # the window is highlighted up to the cut)
                assert normalize_text(piece) in norm[:cap]


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_with_a_tfidf_blend_attributions_cover_the_transformer_share(known_predictor, method):
    """Blended score = 0.5 * transformer logit + TF-IDF part: the transformer's attributions halve."""
    from model.blend import StackWeights
    from model.predictor import Predictor
    from model.schema import LabelSchema, ProblemType
    from training.baseline import TfidfBaseline
    from training.blend import blend_from_baseline
    from training.config import BaselineConfig

    labels = known_predictor.labels
    texts = ["send cash by wire", "sweet girl kiss", "sofa for sale", "cash now", "lamp and desk"] * 4
    y = np.array([[n == "scam" and "cash" in t for n in labels] for t in texts], dtype=np.uint8)
    y[-1] = 1  # every label has a positive
    schema = LabelSchema(labels=labels, problem_type=ProblemType.MULTI_LABEL)
    blend = blend_from_baseline(
        TfidfBaseline(schema, BaselineConfig(max_features_word=50, max_features_char=50)).fit(texts, y),
        labels,
    )
    blend.weights["scam"] = StackWeights(0.5, 1.0, 0.0)
    p = known_predictor
    blended = Predictor(p.encoder, p.runtime, p.meta, blend=blend)
    text = "hello&nbsp;please <b>send</b> CASH by ｗｉｒｅ now 💋"
    plain = Explainer(p, method=method, ig_steps=4).explain(
        [text], labels=["scam", "adult_services"], top_k=3
    )[0]
    half = Explainer(blended, method=method, ig_steps=4).explain(
        [text], labels=["scam", "adult_services"], top_k=3
    )[0]
    assert [s.score for s in half["scam"]] == pytest.approx([0.5 * s.score for s in plain["scam"]], abs=1e-4)
    assert [s.score for s in half["adult_services"]] == pytest.approx(
        [s.score for s in plain["adult_services"]], abs=1e-4
    )


def test_explainer_units_are_the_encoders_tokens_of_a_long_text(tiny_predictor):
    """A text longer than the window: the explainer's units cover exactly the tokens the model reads
    (the head), pointing at the text's own characters."""
    from model.encoding import TextEncoder

    tok, window = tiny_predictor.encoder.tokenizer, 24
    text = "Warehouse job. " + "Duties include lifting boxes. " * 12 + "Send a 50 dollar fee by gift card."
    enc = TextEncoder(tok, window).encode([text])
    assert enc.truncated == [True] and len(enc.input_ids[0]) == window
    u = text_units(text, tok, window)
    assert u.input_ids == enc.input_ids[0]
    words = " ".join(text[a:b] for a, b in u.spans[u.active])
    assert words.startswith("Warehouse job") and "card" not in words
