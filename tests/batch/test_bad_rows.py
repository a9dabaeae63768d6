"""A bad line in a JSONL backlog: its file line is named, ``--on-bad-row mark`` keeps going with the row
marked, and ``--resume`` continues after either (finished chunks are neither refused nor redone)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from batch.score import MANIFEST, ScoreError, run_score

N, CHUNK, BAD_LINE = 30, 10, 26  # the bad line sits in the third chunk
SECRET = "secret ad text"


class CountingPredictor:
    """The tiny predictor, counting the texts it scores (to see which chunks a resume redoes)."""

    def __init__(self, predictor):
        self._p = predictor
        self.meta, self.labels, self.directory = predictor.meta, predictor.labels, predictor.directory
        self.scored = 0

    def score(self, texts):
        self.scored += len(texts)
        return self._p.score(texts)


def _backlog(path: Path, bad: str | None) -> Path:
    lines = [json.dumps({"id": i, "text": f"ad {i}: sweet girl incall"}) for i in range(N)]
    if bad is not None:
        lines[BAD_LINE - 1] = bad
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _chunks_done(dst: Path) -> int:
    return json.loads((dst.with_name(dst.name + ".partial") / MANIFEST).read_text())["chunks_done"]


@pytest.mark.parametrize(
    "bad, what",
    [('{"id": 25, "text": "' + SECRET + '" oops}', "not valid JSON"), (f'["{SECRET}", 25]', "a JSON array")],
    ids=["invalid-json", "array"],
)
def test_bad_jsonl_line_error_names_the_file_line_not_the_chunk_position(tmp_path, tiny_predictor, bad, what):
    src = _backlog(tmp_path / "in.jsonl", bad)
    offset = src.read_bytes().index(bad.encode())
    dst = tmp_path / "out.jsonl"
    with pytest.raises(ScoreError) as e:
        run_score("tiny", src, dst, chunk_size=CHUNK, predictor=tiny_predictor, progress=False)
    msg = str(e.value)
    assert f"line {BAD_LINE}" in msg and f"byte {offset}" in msg and what in msg
    assert "--on-bad-row mark" in msg and SECRET not in msg
    assert _chunks_done(dst) == (BAD_LINE - 1) // CHUNK  # every chunk before the bad line is finished


def test_on_bad_row_mark_keeps_the_row_and_resume_continues(tmp_path, tiny_predictor):
    src = _backlog(tmp_path / "in.jsonl", '{"text": oops')
    dst = tmp_path / "out.parquet"
    with pytest.raises(ScoreError):
        run_score("tiny", src, dst, chunk_size=CHUNK, predictor=tiny_predictor, progress=False)
    done = _chunks_done(dst)
    counting = CountingPredictor(tiny_predictor)
    summary = run_score(
        "tiny", src, dst, chunk_size=CHUNK, predictor=counting, progress=False, resume=True, on_bad_row="mark"
    )
    assert counting.scored == N - done * CHUNK - 1  # finished chunks not redone; the bad row not scored
    out = pd.read_parquet(dst)
    assert len(out) == N and summary.rows == N and summary.bad_rows == 1
    bad = out.iloc[BAD_LINE - 1]
    assert bad["error"] == "invalid_json" and pd.isna(bad["text"]) and pd.isna(bad["score_scam"])
    assert out.drop(index=BAD_LINE - 1)["id"].tolist() == [i for i in range(N) if i != BAD_LINE - 1]
    assert out.drop(index=BAD_LINE - 1)["error"].isna().all()
    assert out["error"].value_counts().to_dict() == {"invalid_json": 1}


def test_resume_after_fixing_the_bad_line_continues_without_redoing_chunks(tmp_path, tiny_predictor):
    src = _backlog(tmp_path / "in.jsonl", "[1, 2]")
    dst = tmp_path / "out.csv"
    with pytest.raises(ScoreError, match="array"):
        run_score("tiny", src, dst, chunk_size=CHUNK, predictor=tiny_predictor, progress=False)
    done = _chunks_done(dst)
    _backlog(src, None)  # the user fixes the line in place (size and mtime change)
    counting = CountingPredictor(tiny_predictor)
    run_score("tiny", src, dst, chunk_size=CHUNK, predictor=counting, progress=False, resume=True)
    assert counting.scored == N - done * CHUNK
    fresh = tmp_path / "fresh.csv"
    run_score("tiny", src, fresh, chunk_size=CHUNK, predictor=tiny_predictor, progress=False)
    assert dst.read_text() == fresh.read_text()


def test_resume_refuses_when_a_finished_line_changed(tmp_path, tiny_predictor):
    src = _backlog(tmp_path / "in.jsonl", "not json")
    dst = tmp_path / "out.jsonl"
    with pytest.raises(ScoreError):
        run_score("tiny", src, dst, chunk_size=CHUNK, predictor=tiny_predictor, progress=False)
    src.write_text(src.read_text().replace('"ad 3:', '"ad three:'), encoding="utf-8")
    with pytest.raises(ScoreError, match="changed"):
        run_score("tiny", src, dst, chunk_size=CHUNK, predictor=tiny_predictor, progress=False, resume=True)


def test_on_bad_row_is_checked(tmp_path, tiny_predictor):
    src = _backlog(tmp_path / "in.jsonl", None)
    with pytest.raises(ScoreError, match="on-bad-row"):
        run_score(
            "tiny", src, tmp_path / "o.jsonl", predictor=tiny_predictor, progress=False, on_bad_row="skip"
        )


@pytest.mark.slow
def test_bad_line_with_workers_finishes_every_chunk_before_it(tmp_path, tiny_artifact):
    """With worker processes, chunks before the bad line may still be in flight when it is read: they
    are finished and counted before the job stops."""
    src = _backlog(tmp_path / "in.jsonl", "{")
    dst = tmp_path / "out.jsonl"
    with pytest.raises(ScoreError, match=f"line {BAD_LINE}"):
        run_score(str(tiny_artifact), src, dst, chunk_size=4, workers=2, threads=1, progress=False)
    assert _chunks_done(dst) == (BAD_LINE - 1) // 4


def _csv_backlog(path: Path) -> Path:
    rows = [f'{i},"ad {i}: sweet girl incall"' for i in range(N)]
    rows[BAD_LINE - 1] = f"{BAD_LINE - 1},{SECRET},an unquoted comma"  # one field too many
    path.write_text("id,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_bad_csv_row_names_its_line_and_mark_keeps_it(tmp_path, tiny_predictor):
    src = _csv_backlog(tmp_path / "in.csv")
    with pytest.raises(ScoreError) as e:
        run_score("tiny", src, tmp_path / "o.csv", chunk_size=CHUNK, predictor=tiny_predictor, progress=False)
    msg = str(e.value)
    assert (
        f"line {BAD_LINE + 1}" in msg and "--on-bad-row mark" in msg and SECRET not in msg
    )  # +1: the header
    dst = tmp_path / "marked.csv"
    run_score("tiny", src, dst, chunk_size=CHUNK, predictor=tiny_predictor, progress=False, on_bad_row="mark")
    out = pd.read_csv(dst, dtype=str, keep_default_na=False, na_values=[""])
    assert len(out) == N and out["id"].tolist()[: BAD_LINE - 1] == [str(i) for i in range(BAD_LINE - 1)]
    bad = out.iloc[BAD_LINE - 1]
    assert bad["error"] == "wrong_field_count" and pd.isna(bad["text"]) and pd.isna(bad["score_scam"])
    assert out["error"].value_counts().to_dict() == {"wrong_field_count": 1}
    assert SECRET not in dst.read_text()
