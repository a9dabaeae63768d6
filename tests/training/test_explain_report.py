"""``adrisk evaluate --explain-report``: ranked tokens per label and source (known answers on a
bag-of-words model), table + plot files."""

from __future__ import annotations

import json

import pytest

from model.explain import Explainer
from training.explain_report import aggregate_attributions


def test_explain_report_via_evaluate(tiny_artifact, tmp_path, capsys):
    from adrisk.cli import main

    rows = [
        {"text": f"please call me 💋 now {i}", "labels": ["adult_services"], "source": "escort"}
        for i in range(4)
    ]
    rows += [
        {"text": f"please wire the cash today {i}", "labels": ["scam"], "source": "sms"} for i in range(4)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "rep"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_artifact),
                "--data",
                str(data),
                "--explain-report",
                str(out),
                "--explain-limit",
                "6",
            ]
        )
        == 0
    )
    assert "explain report (6 rows)" in capsys.readouterr().out
    import pandas as pd

    table = pd.read_csv(out / "explain_report.csv")
    assert set(table["label"]) == {"adult_services", "trafficking_indicators", "scam"}
    assert set(table["source"]) == {"*"}  # "please" is in 6 texts overall, at most 4 per source
    assert set(table["token"]) == {"please"}
    assert (table["texts"] >= 5).all()  # min_count: only tokens seen in at least 5 texts rank
    for _, g in table.groupby(["label", "source"]):
        assert g["rank"].tolist() == list(range(1, len(g) + 1))
        assert g["total"].is_monotonic_decreasing
    assert (out / "explain_report.png").stat().st_size > 1000


def test_aggregate_ranks_the_shortcut_per_label_and_source(known_predictor):
    texts = [
        "send CASH now",
        "cash please friend",
        "the cash is here",
        "hello 💋 friend",
        "💋 hello there",
        "hi 💋 hello",
    ]
    sources = ["jobs", "jobs", "jobs", "escort", "escort", "escort"]
    ex = Explainer(known_predictor)
    df = aggregate_attributions(
        texts, ex.attribute(texts), known_predictor.labels, sources, top_n=3, min_count=2
    )
    top = df[(df.label == "scam") & (df.source == "jobs") & (df["rank"] == 1)]
    assert top.token.tolist() == ["cash"] and top.total.iloc[0] == pytest.approx(9.0, abs=1e-4)
    adult = df[(df.label == "adult_services") & (df.source == "*")]
    assert adult.token.iloc[0] == "💋" and adult.texts.iloc[0] == 3
    bottom = df[(df.label == "scam") & (df.source == "escort")]
    assert bottom.token.iloc[-1] == "hello"  # negative contributions rank last
