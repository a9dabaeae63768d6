"""`adrisk score --link` and `adrisk link`: the link pass over a scored file, from the command line."""

from __future__ import annotations

import json

import pandas as pd

from tests.signals.test_linking import BASE_A


def test_cli_score_link_and_extract(tmp_path, tiny_artifact, capsys):
    from adrisk.cli import main

    rows = [
        BASE_A.format(phone="415-555-0101", name="Kim"),
        BASE_A.format(phone="415 555 0101", name="Ana"),
        None,
    ]
    src = tmp_path / "in.jsonl"
    pd.DataFrame({"id": [1, 2, 3], "text": rows}).to_json(src, orient="records", lines=True)
    out = tmp_path / "out.csv"
    args = [
        "score",
        "--model",
        str(tiny_artifact),
        "--input",
        str(src),
        "--output",
        str(out),
        "--link",
        "--no-progress",
        "--workers",
        "1",
    ]
    assert main(args) == 0
    df = pd.read_csv(out)
    assert list(df.columns[-4:]) == ["contacts", "persona_id", "template_id", "template_size"]
    assert df["persona_id"].tolist()[:2] == [0, 0] and df["template_size"].tolist() == [2, 2, 1]
    assert (tmp_path / "out.clusters.csv").is_file() and (tmp_path / "out.csv.report.html").is_file()
    # a kill during the link pass leaves the scored output whole: --resume --link reruns only the link pass
    assert main([*args, "--resume"]) == 0
    again = pd.read_csv(out)
    pd.testing.assert_frame_equal(again, df)
    # `adrisk link` on the scored file is the same pass: same ids, same columns (recomputed, not appended)
    assert main(["link", str(out), "--similarity", "0.5"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), df)
    assert main(["link", str(tmp_path / "missing.csv")]) == 1
    capsys.readouterr()
    assert main(["extract", "call 415-555-0123", "nothing"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"contacts": [{"type": "phone", "value": "+14155550123", "start": 5, "end": 17}]},
        {"contacts": []},
    ]
