"""``adrisk monitor`` end to end on the tiny model: exit codes, the verdict file and its schema, the
report, the MLflow run, reuse of ``adrisk score`` output, bad input (one line, exit 1, nothing
written), and ``adrisk retrain --when-stale`` acting on the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from adrisk.cli import main
from monitor.verdict import EXIT_CODES, Status, Verdict
from tests.conftest import DATA_DIR, REPO

N = 120


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    df = pd.read_json(DATA_DIR / "validation.jsonl", lines=True)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


def _write(df: pd.DataFrame, path: Path) -> str:
    df.to_json(path, orient="records", lines=True, force_ascii=False)
    return str(path)


def _monitor(artifact, current: str, reference: str | None, *extra: str) -> int:
    args = ["monitor", "--model", str(artifact), "--current", current, "--threads", "1", *extra]
    return main(args + (["--reference", reference] if reference else []))


def test_stable_window_exit_0_verdict_report_and_no_retrain(
    tiny_artifact, rows, tmp_path, monkeypatch, capsys
):
    ref = _write(rows[:N], tmp_path / "ref.jsonl")
    cur = _write(rows[N : 2 * N], tmp_path / "cur.jsonl")
    rc = _monitor(tiny_artifact, cur, ref, "--report", str(tmp_path / "rep"), "--mlflow", "on")
    out = capsys.readouterr()
    verdict = Verdict.model_validate_json((tmp_path / "rep" / "verdict.json").read_text())
    assert rc == 0 == verdict.exit_code and verdict.status is Status.STABLE and not verdict.retrain
    assert verdict.reference["rows"] == verdict.current["rows"] == N and verdict.reference["labelled"]
    assert set(verdict.drift) == {"text", "embedding", "scores"}
    assert set(verdict.prevalence) == set(verdict.performance) == set(verdict.drift["scores"])
    assert "stable (exit 0)" in out.out and "| adult_services |" in out.out
    page = (tmp_path / "rep" / "report.html").read_text()
    assert 'id="status">stable<' in page and "data:image/png;base64," in page
    for text in rows.text[:N]:  # the report names ads by id, never by text
        assert text not in page
    runs = mlflow.search_runs(experiment_names=["adrisk-monitor"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["adrisk.monitor.status"] == "stable"
    assert "drift.text.auc" in runs[0].data.metrics

    calls = []
    monkeypatch.setattr("training.retrain.retrain", lambda *a, **k: calls.append(k))
    rc = main(["retrain", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", "model_name=risky-ads",
               "--when-stale", str(tmp_path / "rep" / "verdict.json")])  # fmt: skip
    assert rc == 6 and calls == []
    assert "stable; no retrain" in capsys.readouterr().err


def test_drifted_window_exit_10_and_retrain_with_the_verdict(
    tiny_artifact, rows, tmp_path, monkeypatch, capsys
):
    from training.retrain import Outcome, RetrainResult

    ref = _write(rows[:N], tmp_path / "ref.jsonl")
    escort = rows[rows.source == "backpage_escort_ca_2018"].iloc[:N]  # one source only: prevalence 1
    cur = _write(escort, tmp_path / "cur.jsonl")
    verdict_path = tmp_path / "v" / "verdict.json"
    rc = _monitor(tiny_artifact, cur, ref, "--verdict", str(verdict_path))
    verdict = json.loads(verdict_path.read_text())
    assert rc == EXIT_CODES[Status.RETRAIN] == verdict["exit_code"] and verdict["retrain"] is True
    assert verdict["reasons"] and verdict["drift"]["text"]["drifted"]
    assert any(w.startswith("input drift") for w in verdict["warnings"])
    capsys.readouterr()

    calls = []

    def fake_retrain(cfg, **kwargs):
        calls.append(kwargs)
        return RetrainResult(Outcome.WOULD_PROMOTE)

    monkeypatch.setattr("training.retrain.retrain", fake_retrain)
    rc = main(["retrain", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", "model_name=risky-ads",
               "--dry-run", "--when-stale", str(verdict_path)])  # fmt: skip
    assert rc == 0 and len(calls) == 1
    assert calls[0]["verdict"]["status"] == "retrain" and calls[0]["verdict"]["reasons"] == verdict["reasons"]

    other = dict(verdict, model={**verdict["model"], "name": "another-model"})
    (tmp_path / "other.json").write_text(json.dumps(other))
    rc = main(
        [
            "retrain",
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            "--when-stale",
            str(tmp_path / "other.json"),
        ]
    )
    assert rc == 1 and "another-model" in capsys.readouterr().err and len(calls) == 1


def test_scored_file_is_not_scored_again(tiny_artifact, tiny_predictor, rows, tmp_path):
    from model.pyfunc import score_values
    from monitor.window import model_version_tag

    version = model_version_tag(None, tiny_predictor.meta.weights_sha256)
    cur = rows[N : 2 * N].reset_index(drop=True)
    scored = pd.concat([cur, score_values(tiny_predictor, cur.text.tolist(), version)], axis=1)
    path = tmp_path / "scored.parquet"
    scored.to_parquet(path)
    ref = _write(rows[:N], tmp_path / "ref.jsonl")
    _monitor(tiny_artifact, str(path), ref, "--verdict", str(tmp_path / "v.json"))
    assert json.loads((tmp_path / "v.json").read_text())["current"]["rescored"] is False


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "the file is empty"),
        ("one_ad", "needs at least 50 ads with text, found 1"),
        ("no_text_column", "no text column 'text'"),
        ("reference_not_found", "reference not found"),
        ("window_selects_none", "needs a time column"),
        ("missing_file", "not found"),
    ],
)
def test_bad_input_one_line_exit_1_nothing_written(case, message, tiny_artifact, rows, tmp_path, capsys):
    ref = _write(rows[:N], tmp_path / "ref.jsonl")
    cur = _write(rows[N : 2 * N], tmp_path / "cur.jsonl")
    extra: list[str] = []
    if case == "empty":
        (tmp_path / "empty.jsonl").write_text("")
        cur = str(tmp_path / "empty.jsonl")
    elif case == "one_ad":
        cur = _write(rows[:1], tmp_path / "one.jsonl")
    elif case == "no_text_column":
        cur = _write(rows[:N].rename(columns={"text": "body"}), tmp_path / "body.jsonl")
    elif case == "reference_not_found":
        ref = None  # a local model directory has no run recording its validation data
    elif case == "window_selects_none":
        extra = ["--window", "7d"]
    elif case == "missing_file":
        cur = str(tmp_path / "nope.jsonl")
    rc = _monitor(
        tiny_artifact,
        cur,
        ref,
        "--report",
        str(tmp_path / "rep"),
        "--verdict",
        str(tmp_path / "v.json"),
        *extra,
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "rep").exists() and not (tmp_path / "v.json").exists()
    assert all(t not in err[0] for t in rows.text[: 2 * N])  # never ad text
