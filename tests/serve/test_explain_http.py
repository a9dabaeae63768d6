"""``POST /v1/classify`` with ``"explain": true``: spans per flagged label, limits, plain shape unchanged."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture()
def all_flagged(tiny_predictor):
    """The tiny model with every threshold at 0, so every label is flagged and explained."""
    from model.predictor import Predictor

    meta = tiny_predictor.meta.model_copy(update={"thresholds": dict.fromkeys(tiny_predictor.labels, 0.0)})
    return Predictor(tiny_predictor.encoder, tiny_predictor.runtime, meta)


def test_explain_returns_spans_into_the_text_as_given(thread_server, all_flagged):
    texts = ["<b>Sweet</b> girl&nbsp;💋 in town\u200b, c\u200ball me", "plain words here"]
    with thread_server(predictor=all_flagged, max_explain_items=2) as srv:
        r = httpx.post(f"{srv.base}/v1/classify", json={"input": texts, "explain": True}, timeout=60)
        plain = httpx.post(f"{srv.base}/v1/classify", json={"input": texts}, timeout=60)
        too_many = httpx.post(
            f"{srv.base}/v1/classify", json={"input": texts * 2, "explain": True}, timeout=60
        )
        bad = httpx.post(f"{srv.base}/v1/classify", json={"input": "x", "explain": "yes"}, timeout=60)
    assert r.status_code == 200, r.text
    for text, res in zip(texts, r.json()["results"], strict=True):
        assert set(res["explanations"]) == set(all_flagged.labels)
        for spans in res["explanations"].values():
            assert 1 <= len(spans) <= 5
            assert [abs(s["score"]) for s in spans] == sorted((abs(s["score"]) for s in spans), reverse=True)
            for s in spans:
                assert 0 <= s["start"] < s["end"] <= len(text) and text[s["start"] : s["end"]].strip()
    # same scores as a plain request; the plain result shape has no explanations key
    assert plain.status_code == 200
    for a, b in zip(r.json()["results"], plain.json()["results"], strict=True):
        assert "explanations" not in b
        assert a["category_scores"] == pytest.approx(b["category_scores"], abs=1e-6)
    assert too_many.status_code == 413 and "with explain" in too_many.json()["error"]["message"]
    assert bad.status_code == 422 and "explain" in bad.json()["error"]["message"]
    assert "Sweet" not in too_many.text + bad.text


def test_predict_and_score_explain(tiny_artifact, tmp_path, capsys):
    """`adrisk predict --explain` adds explanations per JSON line; `adrisk score --explain` an explanations
    JSON column (null where the row was not scored). Thresholds are whatever the tiny model has, so the
    check is: every explained label is a flagged one, and spans index the text as given."""
    import json

    import pandas as pd

    from adrisk.cli import main

    text = "<b>hot</b> girls&nbsp;💋 c\u200ball now"
    assert main(["predict", "--model", str(tiny_artifact), "--explain", "--top-k", "2", text]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert set(line["explanations"]) == {n for n, on in line["categories"].items() if on}
    for spans in line["explanations"].values():
        assert len(spans) <= 2 and all(text[s["start"] : s["end"]].strip() for s in spans)

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in [text, None, "plain"]) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny_artifact),
                "--input",
                str(src),
                "--output",
                str(dst),
                "--explain",
                "--no-progress",
            ]
        )
        == 0
    )
    out = pd.read_json(dst, lines=True)
    assert out["explanations"].isna().tolist() == [False, True, False]
    first = json.loads(out["explanations"][0])
    flagged = {n for n in ("adult_services", "trafficking_indicators", "scam") if out[f"score_{n}"][0] >= 0.5}
    assert set(first) == flagged
