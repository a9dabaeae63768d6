"""QA break-it tests for ``adrisk score``: files whose chunks disagree on columns, ragged CSV rows,
and output paths that would destroy the input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from batch.score import ScoreError, run_score


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt_out", ["csv", "parquet", "jsonl"])
def test_jsonl_chunks_with_different_key_order_keys_and_types(tmp_path, tiny_predictor, fmt_out):
    # each JSONL chunk is read on its own: key order, key sets and value types can differ between
    # chunks. CSV output used to shift columns under the header; Parquet output failed at the end.
    rows = (
        [{"text": f"ad a{i}", "id": i, "a": 1} for i in range(3)]
        + [{"id": i, "text": f"ad b{i}", "b": "x"} for i in range(3, 6)]
        + [{"text": f"ad c{i}", "id": f"id-{i}", "a": "one"} for i in range(6, 9)]
    )
    src = _jsonl(tmp_path / "in.jsonl", rows)
    dst = tmp_path / f"out.{fmt_out}"
    run_score("tiny", src, dst, chunk_size=3, progress=False, predictor=tiny_predictor)
    if fmt_out == "csv":
        out = pd.read_csv(dst, dtype=str)
    elif fmt_out == "parquet":
        out = pd.read_parquet(dst)
    else:
        out = pd.read_json(dst, lines=True, dtype=False)
    assert list(out.columns[:4]) == ["text", "id", "a", "b"]
    assert out["text"].tolist() == [r["text"] for r in rows]
    assert [str(x) for x in out["id"]] == [str(r["id"]) for r in rows]
    assert out["flagged"].notna().all()
    assert out["error"].isna().all()
    assert not (tmp_path / f"out.{fmt_out}.partial").exists()


def test_csv_row_longer_than_header_is_refused_not_shifted(tmp_path, tiny_predictor):
    # pandas makes the extra leading fields of the first data row an index: every column shifts
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,secret listing,extra,more\n2,ok\n", encoding="utf-8")
    with pytest.raises(ScoreError, match="more fields than the header") as e:
        run_score("tiny", src, tmp_path / "out.csv", progress=False, predictor=tiny_predictor)
    assert "secret listing" not in str(e.value)


def test_output_that_is_the_input_or_a_directory_is_refused(tmp_path, tiny_predictor):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,ad one\n", encoding="utf-8")
    before = src.read_bytes()
    with pytest.raises(ScoreError, match="input file"):
        run_score("tiny", src, tmp_path / "." / "in.csv", progress=False, predictor=tiny_predictor)
    assert src.read_bytes() == before
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ScoreError, match="directory"):
        run_score("tiny", src, tmp_path / "dir.csv", progress=False, predictor=tiny_predictor)
    assert not (tmp_path / "dir.csv.partial").exists()


def test_missing_text_column_error_does_not_quote_a_headerless_first_row(tmp_path, tiny_predictor):
    src = tmp_path / "in.csv"
    src.write_text("1,secret listing call me\n2,other\n", encoding="utf-8")  # no header row
    with pytest.raises(ScoreError, match="not found") as e:
        run_score("tiny", src, tmp_path / "out.csv", progress=False, predictor=tiny_predictor)
    assert "secret listing" not in str(e.value) and "header" in str(e.value)
    src.write_text("id,body\n1,ad\n", encoding="utf-8")
    with pytest.raises(ScoreError, match=r"\['id', 'body'\]"):  # real column names are still listed
        run_score("tiny", src, tmp_path / "out.csv", progress=False, predictor=tiny_predictor)


def test_jsonl_with_a_byte_order_mark_is_scored(tmp_path, tiny_predictor):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"text": "ad one", "id": 1}).encode() + b"\n"
    )  # was a ValueError
    run_score("tiny", src, tmp_path / "out.csv", progress=False, predictor=tiny_predictor)
    assert pd.read_csv(tmp_path / "out.csv")["text"].tolist() == ["ad one"]


@pytest.mark.parametrize(
    "name,body",
    [
        ("in.jsonl", '{"text": "a"}\n[1, 2]\n"secret listing"\n'),  # was TypeError
        ("in.jsonl", '{"text": "secret listing", "x"\n'),  # was ValueError
        ("in.csv", ""),  # was EmptyDataError
        ("in.csv", 'id,text\n1,"secret listing\n'),  # was ParserError
    ],
)
def test_malformed_jsonl_and_csv_are_score_errors(tmp_path, tiny_predictor, name, body):
    src = tmp_path / name
    src.write_text(body, encoding="utf-8")
    with pytest.raises(ScoreError, match="not valid|not an object") as e:
        run_score("tiny", src, tmp_path / "out.csv", progress=False, predictor=tiny_predictor)
    assert "secret listing" not in str(e.value)


def test_second_job_on_the_same_output_is_refused_while_one_runs(tmp_path, tiny_predictor):
    # two jobs started together share <output>.partial/: parts of different inputs got mixed, or
    # one job deleted the other's work directory mid-run
    import subprocess
    import sys

    from filelock import FileLock

    from batch.score import output_lock_path

    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,ad one\n", encoding="utf-8")
    dst = tmp_path / "out.csv"
    with FileLock(str(output_lock_path(dst))):  # what a running job holds
        code = (
            "from batch.score import run_score, ScoreError\n"
            f"try: run_score('m', {str(src)!r}, {str(dst)!r}, progress=False, predictor=object())\n"
            "except ScoreError as e: print('refused:', e)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "refused: another adrisk score is writing" in out.stdout, out.stdout + out.stderr
    assert not dst.exists()
    run_score("m", src, dst, progress=False, predictor=tiny_predictor)  # free again afterwards
    assert dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]
