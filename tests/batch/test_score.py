"""``adrisk score``: formats, missing text, atomic output, stop + resume, what a resume refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batch.score import ScoreError, run_score

LABELS = ("adult_services", "trafficking_indicators", "scam")
SCORE_COLS = [f"score_{n}" for n in LABELS]


def _frame(n: int) -> pd.DataFrame:
    texts = [
        None if i % 11 == 5 else f"ad {i}: " + ("sweet girl incall " if i % 3 else "flat for rent ") * (i % 5)
        for i in range(n)
    ]
    return pd.DataFrame(
        {"id": range(n), "text": texts, "source": ["web" if i % 2 else "app" for i in range(n)]}
    )


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path, index=False)
    return path


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


@pytest.mark.parametrize(
    "fmt_in, fmt_out", [("csv", "jsonl"), ("jsonl", "parquet"), ("parquet", "csv"), ("csv", "csv")]
)
def test_score_formats_missing_text_and_order(tmp_path, tiny_predictor, fmt_in, fmt_out):
    df = _frame(230)
    src = _write(df, tmp_path / f"in.{fmt_in}")
    dst = tmp_path / f"out.{fmt_out}"
    summary = run_score("tiny", src, dst, chunk_size=40, predictor=tiny_predictor, progress=False)
    out = _read(dst)
    assert list(out.columns) == ["id", "text", "source", "flagged", *SCORE_COLS, "model_version", "error"]
    assert out["id"].tolist() == list(range(230))  # every row, in input order
    missing = df["text"].isna().to_numpy()
    assert (out["error"].fillna("") == np.where(missing, "missing_text", "")).all()
    assert out.loc[missing, SCORE_COLS].isna().all().all() and out.loc[missing, "flagged"].isna().all()
    texts = df.loc[~missing, "text"].tolist()
    np.testing.assert_allclose(
        out.loc[~missing, SCORE_COLS].to_numpy(dtype=float), tiny_predictor.predict_proba(texts), atol=1e-6
    )
    assert out.loc[~missing, "flagged"].astype(bool).tolist() == [
        p.flagged for p in tiny_predictor.predict(texts)
    ]
    assert (out["model_version"].astype(str).str.startswith("local:")).all()
    assert summary.rows == 230 and summary.missing == int(missing.sum())
    assert not (tmp_path / f"out.{fmt_out}.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name])  # no temp files left


def test_score_errors(tmp_path, tiny_predictor):
    src = _write(_frame(10), tmp_path / "in.csv")
    with pytest.raises(
        ScoreError, match=r"text column 'body' not found; columns are \['id', 'text', 'source'\]"
    ):
        run_score(
            "tiny", src, tmp_path / "out.csv", text_column="body", predictor=tiny_predictor, progress=False
        )
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(ScoreError, match="unknown format"):
        run_score("tiny", src, tmp_path / "out.xlsx", predictor=tiny_predictor, progress=False)
    clash = _frame(10).assign(flagged=1)
    with pytest.raises(ScoreError, match="flagged"):
        run_score(
            "tiny",
            _write(clash, tmp_path / "clash.csv"),
            tmp_path / "o.csv",
            predictor=tiny_predictor,
            progress=False,
        )


def test_score_stopped_and_resumed_equals_uninterrupted(tmp_path, tiny_predictor):
    """A job stopped after 3 chunks keeps them; without ``resume`` the unfinished run is protected;
    the resume scores the rest, each row once, as one uninterrupted run would. (A SIGKILLed
    ``adrisk score``: test_score_workers.py, and during the final write: test_score_kill.py.)"""
    n, chunk = 300, 20
    src = _write(_frame(n), tmp_path / "in.csv")
    expected_path = tmp_path / "expected.csv"
    run_score("tiny", src, expected_path, chunk_size=chunk, predictor=tiny_predictor, progress=False)

    dst = tmp_path / "out.csv"
    manifest = tmp_path / "out.csv.partial" / "manifest.json"
    with pytest.raises(_Stopped):
        run_score(
            "tiny", src, dst, chunk_size=chunk, predictor=_StopsAfter(tiny_predictor, 3), progress=False
        )
    assert json.loads(manifest.read_text())["chunks_done"] == 3
    assert not dst.exists()  # no half-written output

    with pytest.raises(ScoreError, match="--resume"):
        run_score("tiny", src, dst, chunk_size=chunk, predictor=tiny_predictor, progress=False)

    summary = run_score(
        "tiny", src, dst, chunk_size=chunk, predictor=tiny_predictor, progress=False, resume=True
    )
    assert summary.rows == n
    got, expected = pd.read_csv(dst), pd.read_csv(expected_path)
    assert got["id"].tolist() == list(range(n))  # nothing lost, nothing twice
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-6)
    assert dst.read_bytes() == expected_path.read_bytes()
    assert not manifest.parent.exists()


def test_score_non_string_text_is_marked_not_scored(tmp_path, tiny_predictor):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "flat for rent"}\n{"text": 42}\n{"other": 1}\n{"text": ""}\n', encoding="utf-8")
    run_score("tiny", src, tmp_path / "out.jsonl", predictor=tiny_predictor, progress=False)
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert out["error"].fillna("").tolist() == ["", "not_text", "missing_text", ""]
    assert out["text"].tolist()[:2] == ["flat for rent", "42"]  # a mixed-type column is kept as text
    assert out.loc[[1, 2], SCORE_COLS].isna().all().all()
    assert out.loc[[0, 3], SCORE_COLS].notna().all().all()  # the empty string is scored like any text


def test_resume_refuses_a_model_whose_metadata_changed(tmp_path, tiny_artifact, tiny_predictor):
    """Same weights, other adrisk.json (thresholds here; an ONNX export or a TF-IDF blend alike): the
    rows already written came from another model, so resuming onto them is refused. (The job stops
    in-process after 3 chunks; a real kill and resume: test_score_killed_and_resumed_equals_uninterrupted.)"""
    import shutil

    from model.artifact import META_FILE
    from tests.conftest import same_weights_other_metadata

    d = tmp_path / "model"
    shutil.copytree(tiny_artifact, d)
    src = _write(_frame(200), tmp_path / "in.csv")
    dst = tmp_path / "out.csv"
    with pytest.raises(_Stopped):
        run_score(str(d), src, dst, chunk_size=20, predictor=_StopsAfter(tiny_predictor, 3), progress=False)
    assert json.loads((tmp_path / "out.csv.partial" / "manifest.json").read_text())["chunks_done"] == 3
    other = same_weights_other_metadata(tiny_artifact, tmp_path / "other")
    shutil.copyfile(other / META_FILE, d / META_FILE)  # the same model directory, other metadata
    with pytest.raises(ScoreError, match="changed since it started") as e:
        run_score(str(d), src, dst, chunk_size=20, resume=True, progress=False)
    assert "model" in str(e.value) and not dst.exists()


class _Stopped(Exception):
    pass


class _StopsAfter:
    """``predictor`` that raises ``_Stopped`` on the call after ``calls`` (a job stopped mid-way)."""

    def __init__(self, predictor, calls: int):
        self._predictor, self._left = predictor, calls

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def score(self, *args, **kwargs):
        if self._left == 0:
            raise _Stopped
        self._left -= 1
        return self._predictor.score(*args, **kwargs)
