"""``adrisk score --engine spark`` on a real local Spark (local[2]): same rows and columns as the local
job, row-level errors, resume after a killed job, one model load per Python worker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batch.score import ScoreError, run_score
from tests.conftest import DATA_DIR

pytest.importorskip("pyspark", reason='the Spark engine is the optional extra: pip install "adrisk[spark]"')

from batch.spark import (  # noqa: E402
    INSTALL_JAVA,
    INSTALL_PYSPARK,
    SparkScorer,
    check_spark_available,
    get_spark,
    prepare_scorer,
    run_spark_score,
    score_spark_dataframe,
)

pytestmark = pytest.mark.slow  # a JVM and Spark jobs: seconds each
DATA = DATA_DIR / "test.jsonl"
SCORES = ["score_adult_services", "score_trafficking_indicators", "score_scam"]


@pytest.fixture(scope="module")
def spark():
    session = get_spark("local[2]")
    yield session
    session.stop()


def _rows(n: int) -> list[dict]:
    """``n`` rows of risky-ads-v1 test (id, text) plus rows without usable text, in mixed places."""
    rows = []
    if DATA.is_file():
        with open(DATA, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                rows.append({"id": str(r.get("id", len(rows))), "text": r["text"]})
                if len(rows) == n:
                    break
    rows += [{"id": f"synthetic-{i}", "text": f"room {i} for rent, call now"} for i in range(n - len(rows))]
    rows.insert(3, {"id": "null", "text": None})
    rows.insert(7, {"id": "empty", "text": ""})
    rows.insert(11, {"id": "number", "text": 42})
    rows.insert(13, {"id": "no-text-key"})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False)


def _plain(values) -> list:
    return [None if pd.isna(v) else v for v in values]


def _assert_same_output(spark_out: pd.DataFrame, local_out: pd.DataFrame) -> None:
    assert list(spark_out.columns) == list(local_out.columns)
    assert spark_out["id"].tolist() == local_out["id"].tolist()
    for col in ("flagged", "error", "model_version"):
        assert _plain(spark_out[col]) == _plain(local_out[col]), col
    np.testing.assert_allclose(
        spark_out[SCORES].to_numpy(float), local_out[SCORES].to_numpy(float), atol=1e-6
    )


def test_spark_job_writes_what_adrisk_score_writes(spark, tmp_path, tiny_artifact):
    src = _write_jsonl(tmp_path / "in.jsonl", _rows(40))
    run_score(str(tiny_artifact), src, tmp_path / "local.jsonl", progress=False, runtime="torch")
    summary = run_spark_score(
        str(tiny_artifact), src, tmp_path / "spark.jsonl", spark=spark, progress=False, runtime="torch"
    )
    local, out = _read(tmp_path / "local.jsonl"), _read(tmp_path / "spark.jsonl")
    _assert_same_output(out, local)
    errors = dict(zip(out["id"], out["error"], strict=True))
    assert (errors["null"], errors["number"], errors["no-text-key"]) == (
        "missing_text",
        "not_text",
        "missing_text",
    )
    assert pd.isna(errors["empty"]) and out[SCORES].notna().sum().min() == 41  # 40 texts + the empty one
    assert summary.rows == 44 and summary.missing == 3


def _with_static_int8(tiny_artifact, directory: Path) -> Path:
    """A copy of the tiny artifact with a statically quantised int8 variant (no gate: scores only)."""
    import shutil

    from model.artifact import load_meta, save_meta, sha256_file
    from model.predictor import Predictor
    from model.runtimes import FP32_FILE, INT8_STATIC_FILE, INT8_STATIC_VARIANT, ONNX_DIR
    from training.onnx_export import export_fp32, quantize_int8_static

    shutil.copytree(tiny_artifact, directory)
    onnx = directory / ONNX_DIR
    export_fp32(directory, onnx / FP32_FILE)
    encoder = Predictor.load(directory, runtime="torch", num_threads=1).encoder
    calibration = encoder.encode([r["text"] for r in _rows(30) if isinstance(r.get("text"), str)]).input_ids
    quantize_int8_static(onnx / FP32_FILE, onnx / INT8_STATIC_FILE, calibration)
    info = {"file": INT8_STATIC_FILE, "sha256": sha256_file(onnx / INT8_STATIC_FILE), "per_row": False}
    meta = load_meta(directory)
    save_meta(directory, meta.model_copy(update={"runtimes": {"variants": {INT8_STATIC_VARIANT: info}}}))
    return directory


def test_spark_job_equals_adrisk_score_with_batched_int8(spark, tmp_path, tiny_artifact):
    """Static int8 runs batched: Spark's partitions put other rows in a batch than the local job does,
    and the scores still agree (its activation scales are constants of the graph)."""
    from model.runtimes import INT8_STATIC_VARIANT

    model = str(_with_static_int8(tiny_artifact, tmp_path / "model"))
    src = _write_jsonl(tmp_path / "in.jsonl", _rows(40))
    run_score(model, src, tmp_path / "local.jsonl", progress=False, runtime=INT8_STATIC_VARIANT)
    run_spark_score(
        model, src, tmp_path / "spark.jsonl", spark=spark, progress=False, runtime=INT8_STATIC_VARIANT
    )
    _assert_same_output(_read(tmp_path / "spark.jsonl"), _read(tmp_path / "local.jsonl"))


def test_killed_job_resumes_with_each_row_exactly_once(spark, tmp_path, tiny_artifact, monkeypatch):
    src = _write_jsonl(tmp_path / "in.jsonl", _rows(40))
    dst = tmp_path / "out.parquet"
    real_score, calls = SparkScorer.score, {"n": 0}

    def dies_on_third_chunk(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the driver is killed while chunk 3 runs on Spark
        return real_score(self, texts)

    monkeypatch.setattr(SparkScorer, "score", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_spark_score(
            str(tiny_artifact), src, dst, spark=spark, chunk_size=10, progress=False, runtime="torch"
        )
    assert not dst.exists() and (tmp_path / "out.parquet.partial" / "manifest.json").is_file()
    monkeypatch.setattr(SparkScorer, "score", real_score)
    with pytest.raises(ScoreError, match="--resume"):
        run_spark_score(str(tiny_artifact), src, dst, spark=spark, chunk_size=10, progress=False)
    run_spark_score(
        str(tiny_artifact), src, dst, spark=spark, chunk_size=10, progress=False, resume=True, runtime="torch"
    )
    out = pd.read_parquet(dst)
    assert out["id"].tolist() == [r["id"] for r in _rows(40)]  # every row once, in input order
    run_score(
        str(tiny_artifact), src, tmp_path / "local.parquet", progress=False, chunk_size=10, runtime="torch"
    )
    _assert_same_output(out, pd.read_parquet(tmp_path / "local.parquet"))


def test_dataframe_api_keeps_rows_and_gives_row_errors(spark, tiny_artifact, tiny_predictor):
    texts = ["cheap rental flat", None, "", "hot petite girls 24/7 incall"]
    df = spark.createDataFrame(pd.DataFrame({"id": [1, 2, 3, 4], "text": texts}), "id long, text string")
    out = score_spark_dataframe(df, tiny_artifact, runtime="torch").toPandas().sort_values("id")
    assert list(out.columns) == ["id", "text", "flagged", *SCORES, "model_version", "error"]
    assert [None if pd.isna(e) else e for e in out["error"]] == [None, "missing_text", None, None]
    ok = out["error"].isna().to_numpy()
    np.testing.assert_allclose(
        out.loc[ok, SCORES].to_numpy(float),
        tiny_predictor.predict_proba([t for t in texts if t is not None]),
        atol=1e-6,
    )
    assert out.loc[~ok, SCORES].isna().all().all()


def test_one_model_load_per_python_worker_and_threads_from_task_cpus(spark, tiny_artifact):
    scorer, _, _ = prepare_scorer(str(tiny_artifact), spark, runtime="torch", progress=False)
    texts = [f"flat {i} for rent" for i in range(64)]
    scorer.partitions = 8  # 8 tasks over 2 task slots, then 8 more: workers are reused across tasks and jobs
    scorer.score(texts)
    model = scorer.model

    def report(_):
        import os

        from batch.spark import worker_predictor
        from model.pyfunc import predictor_loads

        predictor = worker_predictor(model, 1)
        yield os.getpid(), predictor_loads(model.local_dir()), predictor.runtime.num_threads

    seen = spark.sparkContext.parallelize(range(8), 8).mapPartitions(report).collect()
    assert {loads for _, loads, _ in seen} == {1}  # every worker loaded the model once, however many tasks
    assert {threads for _, _, threads in seen} == {1}  # spark.task.cpus is 1


def test_partitions_follow_rows_and_task_slots(spark, tiny_artifact):
    scorer, version, _ = prepare_scorer(str(tiny_artifact), spark, progress=False)
    assert scorer.task_slots() == 2 and version.startswith("local:")
    assert scorer.partitions_for(10) == 1  # a small input is not split into near-empty tasks
    assert scorer.partitions_for(3285) == 4  # two waves per task slot


def test_missing_java_or_pyspark_is_one_line_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ScoreError) as e:
        check_spark_available()
    assert INSTALL_JAVA in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(ScoreError) as e:
        check_spark_available()
    assert INSTALL_PYSPARK in str(e.value) and "\n" not in str(e.value)


def test_staging_follows_the_whole_artifact_not_only_its_weights(tiny_artifact, tmp_path, monkeypatch):
    """Two artifacts with identical weights but different metadata must not share a staged copy
    (a make-demo model once got the thresholds and no blend of an earlier one with the same weights)."""
    import tempfile

    from batch.spark import ship_model
    from tests.conftest import same_weights_other_metadata

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    shipped: list[str] = []

    class _Context:
        def addFile(self, path, recursive=False):  # noqa: N802 - pyspark's name
            shipped.append(path)

    class _Spark:
        sparkContext = _Context()

    other = same_weights_other_metadata(tiny_artifact, tmp_path / "other")
    ship_model(_Spark(), tiny_artifact)
    ship_model(_Spark(), other)
    first, second = (json.loads((Path(p) / "adrisk.json").read_text()) for p in shipped)
    assert first["thresholds"] != second["thresholds"]
    assert second["thresholds"] == json.loads((other / "adrisk.json").read_text())["thresholds"]
