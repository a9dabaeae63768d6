"""``adrisk score --engine spark``: the batch scoring job with Apache Spark doing the inference.

Two entry points share one worker function:

* ``run_spark_score(model_uri, input, output, ...)``: the file job. It *is* ``batch.score.run_score``
  (same reader, same row outcomes and output columns, same chunk manifest and ``--resume``), with each
  chunk's texts scored by Spark tasks instead of the local process. Only the texts travel to the
  executors and only the scores come back; the driver reads the input and writes the output.
* ``score_spark_dataframe(df, model_dir, ...)``: a Spark DataFrame in (a table on a cluster), the same
  rows plus the added columns out, lazily; write it with Spark's own writers.

How the model reaches the executors: the driver resolves the URI once (one registry download) into a
directory named after the weights' sha256 and ships it with ``SparkContext.addFile(dir,
recursive=True)``; every executor fetches it once and its Python workers open it through
``SparkFiles.get``. With ``ship_model=False`` the driver's path is used as is (shared storage such as
``/dbfs/...`` or NFS).

One model load per Python worker: ``model.pyfunc.cached_predictor`` keeps loaded predictors in a
module-level dict keyed by (model directory, weights sha256), and Spark reuses Python workers across
tasks (``spark.python.worker.reuse``, on by default), so only a worker's first task loads.

Threads: a task scores with ``spark.task.cpus`` intra-op threads (``TaskContext.cpus()``), so an
executor with C cores and C task slots runs C compute threads.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from batch.tables import ScoreError, file_format
from model.pyfunc import ADDED_COLUMNS, SCORE_PREFIX

logger = logging.getLogger(__name__)

INSTALL_PYSPARK = 'pip install "adrisk[spark]"'
INSTALL_JAVA = "apt-get install -y openjdk-17-jre-headless"
DEFAULT_MASTER = "local[*]"
DEFAULT_CHUNK_SIZE = 50_000  # rows per Spark job (and per resumable part): large, a job costs ~0.1-1 s
MIN_ROWS_PER_PARTITION = 64  # below this a task's overhead outweighs its scoring
WAVES = 2  # partitions per task slot: evens out texts of different lengths


def check_spark_available(need_java: bool = True) -> None:
    """Fail early, in one line with the install command, when pyspark or Java is missing.

    Raises:
        ScoreError: pyspark is not importable, or (``need_java``) no ``java`` on PATH / in JAVA_HOME.
    """
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ScoreError(f"--engine spark needs pyspark, which is not installed: {INSTALL_PYSPARK}") from None
    if not need_java:
        return
    home = os.environ.get("JAVA_HOME")
    java = Path(home, "bin", "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise ScoreError(
            f"--engine spark needs Java 17 or newer and found none (PATH, JAVA_HOME): {INSTALL_JAVA}"
        )


def get_spark(master: str | None = None, spark=None):
    """The SparkSession to use: ``spark`` if given; else the active session when no ``master`` is
    named (Databricks notebooks, ``spark-submit``); else a new session on ``master`` (default
    ``local[*]``) whose Python workers run this interpreter.

    Raises:
        ScoreError: pyspark or Java missing (see ``check_spark_available``).
    """
    if spark is not None:
        return spark
    check_spark_available(need_java=False)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    check_spark_available(need_java=True)
    # pyspark takes the workers' interpreter from PYSPARK_PYTHON (default "python3", which lacks this
    # environment's packages); spark.pyspark.python only reaches spark-submit launches
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master or DEFAULT_MASTER)
        .appName("adrisk-score")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
    )
    return builder.getOrCreate()


@dataclass(frozen=True)
class ShippedModel:
    """A model directory as the executors reach it: a ``SparkFiles`` name, or a shared path."""

    name: str
    shipped: bool
    sha256: str
    runtime: str = "auto"

    def local_dir(self) -> Path:
        """The directory on this machine (call on an executor)."""
        if not self.shipped:
            return Path(self.name)
        from pyspark import SparkFiles

        return Path(SparkFiles.get(self.name))


def _staged_copy(directory: Path, sha: str) -> Path:
    """``directory`` copied (hard-linked where possible) to
    ``<tmp>/adrisk-spark/adrisk-model-<weights sha12>-<adrisk.json sha12>``: a name per model *and*
    metadata (thresholds, calibration, ONNX variants, TF-IDF blend all live in ``adrisk.json`` or
    are checksummed there), so one SparkContext can ship several models and ship one model twice,
    and two artifacts with the same weights never share a staged copy."""
    from model.artifact import META_FILE, sha256_file

    root = Path(tempfile.gettempdir()) / "adrisk-spark"
    target = root / f"adrisk-model-{sha[:12]}-{sha256_file(directory / META_FILE)[:12]}"
    if (target / "adrisk.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        try:
            shutil.copytree(directory, tmp / "m", copy_function=os.link)
        except OSError:  # another file system: copy
            shutil.rmtree(tmp / "m", ignore_errors=True)
            shutil.copytree(directory, tmp / "m")
        try:
            os.rename(tmp / "m", target)
        except OSError:  # a concurrent job staged the same model first
            if not (target / "adrisk.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ship_model(
    spark, directory: str | os.PathLike[str], *, ship: bool = True, runtime: str = "auto"
) -> ShippedModel:
    """Make the artifact ``directory`` reachable from every executor (see the module docstring).

    Raises:
        ArtifactError: ``directory`` is not an adrisk artifact.
    """
    from model.artifact import load_meta, sha256_file

    directory = Path(directory).resolve()
    meta = load_meta(directory)
    sha = meta.weights_sha256 or sha256_file(directory / "model.safetensors")
    if not ship:
        return ShippedModel(str(directory), False, sha, runtime)
    staged = _staged_copy(directory, sha)
    spark.sparkContext.addFile(str(staged), recursive=True)
    return ShippedModel(staged.name, True, sha, runtime)


def task_threads(default: int = 1) -> int:
    """Intra-op threads for the current Spark task: its ``spark.task.cpus`` (``default`` outside a task)."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            return max(1, int(ctx.cpus()))
    except Exception:  # an old pyspark without TaskContext.cpus()
        pass
    return default


def worker_predictor(model: ShippedModel, threads: int):
    """The predictor of this Python worker for ``model`` (loaded on the worker's first task, then cached)."""
    from model.pyfunc import cached_predictor

    return cached_predictor(
        model.local_dir(),
        num_threads=task_threads(threads),
        runtime=model.runtime,
        expected_sha256=model.sha256,
    )


def _probability_schema(n_labels: int) -> str:
    cols = ["id long"] + [f"p{j} double" for j in range(n_labels)] + [f"l{j} double" for j in range(n_labels)]
    return ", ".join([*cols, "flagged boolean", "truncated boolean"])


def _score_texts_fn(model: ShippedModel, threads: int, n_labels: int):
    """mapInPandas function: (id, text) batches -> (id, probabilities, logits, flagged, truncated)."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        predictor = worker_predictor(model, threads)
        for pdf in batches:
            s = predictor.score(pdf["text"].tolist())
            out: dict[str, object] = {"id": pdf["id"].to_numpy(dtype=np.int64)}
            for j in range(n_labels):
                out[f"p{j}"] = s.probabilities[:, j].astype(np.float64)
            for j in range(n_labels):
                out[f"l{j}"] = np.asarray(s.logits)[:, j].astype(np.float64)
            out["flagged"] = np.asarray(s.flagged, dtype=bool)
            out["truncated"] = np.asarray(s.truncated, dtype=bool)
            yield pd.DataFrame(out)

    return score


def _collect(df, progress: bool) -> pd.DataFrame:
    """``df.toPandas()``, reporting task progress from Spark's status tracker while it runs."""
    sc = getattr(df.sparkSession, "sparkContext", None)
    if not progress or sc is None:
        return df.toPandas()
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["df"] = df.toPandas()
        except BaseException as e:  # re-raised on the calling thread
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    last = 0.0
    while worker.is_alive():
        worker.join(timeout=1.0)
        if time.monotonic() - last >= 10 and worker.is_alive():
            last = time.monotonic()
            tracker = sc.statusTracker()
            done = total = 0
            for sid in tracker.getActiveStageIds():
                info = tracker.getStageInfo(sid)
                if info is not None:
                    done, total = done + info.numCompletedTasks, total + info.numTasks
            if total:
                logger.info("spark: %d/%d tasks done", done, total)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["df"]  # type: ignore[return-value]


class SparkScorer:
    """The part of ``Predictor`` that ``batch.score`` uses (``labels``, ``meta``, ``directory``,
    ``score``), computed by Spark tasks: ``score(texts)`` sends the texts out in partitions sized from
    their number and the cluster's task slots and returns ``model.predictor.Scores`` in input order.

    Args:
        spark: the SparkSession.
        model: the shipped model (``ship_model``).
        meta: the model's ``ArtifactMeta``.
        directory: the model directory on the driver.
        partitions: fixed partitions per job (None: sized per job).
        progress: log Spark's task progress every 10 s.
    """

    def __init__(
        self,
        spark,
        model: ShippedModel,
        meta,
        directory: Path,
        *,
        partitions: int | None = None,
        progress: bool = True,
    ):
        self.spark = spark
        self.model = model
        self.meta = meta
        self.directory = directory
        self.partitions = partitions
        self.progress = progress
        try:
            self.task_cpus = max(1, int(spark.sparkContext.getConf().get("spark.task.cpus", "1")))
        except Exception:  # Spark Connect: no SparkContext; the session conf holds it
            self.task_cpus = max(1, int(spark.conf.get("spark.task.cpus", "1")))
        self.jobs = 0

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    def task_slots(self) -> int:
        """Tasks the cluster runs at once: default parallelism (cores) / ``spark.task.cpus``."""
        try:
            cores = int(self.spark.sparkContext.defaultParallelism)
        except Exception:  # Spark Connect: no SparkContext
            cores = int(self.spark.conf.get("spark.default.parallelism", "2"))
        return max(1, cores // self.task_cpus)

    def partitions_for(self, n: int) -> int:
        """Partitions for ``n`` texts: ``WAVES`` per task slot, none under ``MIN_ROWS_PER_PARTITION`` rows."""
        if self.partitions:
            return max(1, min(self.partitions, n))
        return max(1, min(math.ceil(n / MIN_ROWS_PER_PARTITION), WAVES * self.task_slots()))

    def score(self, texts: Sequence[str]):
        """Scores of ``texts`` (all str) in input order, as ``Predictor.score`` returns them."""
        from model.predictor import Scores

        texts = list(texts)
        n, n_labels = len(texts), len(self.labels)
        if n == 0:
            empty = np.zeros((0, n_labels))
            return Scores(empty, empty.copy(), np.zeros(0, bool), np.zeros(0, bool))
        pdf = pd.DataFrame({"id": np.arange(n, dtype=np.int64), "text": texts})
        sdf = self.spark.createDataFrame(pdf, schema="id long, text string").repartition(
            self.partitions_for(n)
        )
        scored = sdf.mapInPandas(
            _score_texts_fn(self.model, self.task_cpus, n_labels), schema=_probability_schema(n_labels)
        )
        out = _collect(scored, self.progress).sort_values("id", kind="stable")
        self.jobs += 1
        if len(out) != n or not np.array_equal(out["id"].to_numpy(), np.arange(n)):
            raise RuntimeError(f"spark returned {len(out)} scored rows for {n} texts")
        probs = out[[f"p{j}" for j in range(n_labels)]].to_numpy(dtype=np.float64)
        logits = out[[f"l{j}" for j in range(n_labels)]].to_numpy(dtype=np.float64)
        return Scores(
            logits, probs, out["flagged"].to_numpy(dtype=bool), out["truncated"].to_numpy(dtype=bool)
        )


def _version_of(version: str | None, meta) -> str:
    """The ``model_version`` value ``adrisk score`` writes: the registry version, else ``local:<sha12>``."""
    if version:
        return str(version)
    return f"local:{meta.weights_sha256[:12]}" if meta.weights_sha256 else "local"


def prepare_scorer(
    model_uri: str,
    spark,
    *,
    ship: bool = True,
    runtime: str = "auto",
    partitions: int | None = None,
    progress: bool = True,
) -> tuple[SparkScorer, str, float]:
    """Resolve ``model_uri`` on the driver (one download), ship it, and return (scorer, model_version,
    seconds spent). The registry version is the ``model_version`` when the URI names one."""
    from model.artifact import load_meta
    from model.uri import resolve_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adrisk-spark-dl-") as download:
        ref = resolve_model(model_uri, download)
        meta = load_meta(ref.directory)
        shipped = ship_model(spark, ref.directory, ship=ship, runtime=runtime)
    directory = Path(tempfile.gettempdir()) / "adrisk-spark" / shipped.name if ship else Path(shipped.name)
    scorer = SparkScorer(spark, shipped, meta, directory, partitions=partitions, progress=progress)
    return scorer, _version_of(ref.version, meta), time.perf_counter() - t0


def run_spark_score(
    model_uri: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    resume: bool = False,
    master: str | None = None,
    spark=None,
    partitions: int | None = None,
    runtime: str = "auto",
    ship: bool = True,
    progress: bool = True,
    on_bad_row: str = "error",
):
    """``adrisk score --engine spark``: ``batch.score.run_score`` with the texts scored on Spark.

    Same inputs, outputs, row outcomes (``error``), resume and locking as the local job; see the
    module docstring for the session, the model's way to the executors and threads.

    Args:
        master: Spark master for a new session (default ``local[*]``); None with an active session
            uses that session.
        spark: an existing SparkSession (wins over ``master``).
        chunk_size: rows per Spark job and per resumable part.
        partitions: fixed partitions per job (default: sized from the rows and the task slots).
        ship: ship the model with ``SparkContext.addFile`` (False: executors read the driver's
            path, which must be on shared storage).
        on_bad_row: as ``run_score``.

    Returns:
        ``batch.score.ScoreSummary``.

    Raises:
        ScoreError: as ``run_score``; pyspark or Java missing (one line with the install command).
    """
    from batch.score import run_score

    src, dst = Path(input_path), Path(output_path)
    file_format(src), file_format(dst)  # cheap checks before a JVM starts
    if not src.is_file():
        raise ScoreError(f"input {src} not found")
    session = get_spark(master, spark)
    scorer, version, _ = prepare_scorer(
        model_uri, session, ship=ship, runtime=runtime, partitions=partitions, progress=progress
    )
    logger.info(
        "spark: %d task slots, %d cpus per task, model %s", scorer.task_slots(), scorer.task_cpus, version
    )
    return run_score(
        model_uri,
        src,
        dst,
        text_column=text_column,
        chunk_size=chunk_size,
        resume=resume,
        progress=progress,
        predictor=scorer,
        model_version=version,
        on_bad_row=on_bad_row,
    )


def output_struct_fields(labels: Sequence[str]):
    """The Spark fields the job adds, in order: ``flagged`` boolean, ``score_<label>`` double,
    ``model_version`` string, ``error`` string (all nullable), as ``adrisk score`` writes them."""
    from pyspark.sql.types import BooleanType, DoubleType, StringType, StructField

    return [
        StructField("flagged", BooleanType(), True),
        *(StructField(SCORE_PREFIX + n, DoubleType(), True) for n in labels),
        StructField("model_version", StringType(), True),
        StructField("error", StringType(), True),
    ]


def score_spark_dataframe(
    df,
    model_dir: str | os.PathLike[str],
    *,
    text_column: str = "text",
    model_version: str | None = None,
    ship: bool = True,
    runtime: str = "auto",
):
    """``df`` (a Spark DataFrame) plus the scoring columns, lazily (nothing runs until an action).

    Rows keep their columns; a null text gives ``error = missing_text``, a text column that is not a
    string column gives ``not_text`` on every row; scores are null on those rows.

    Raises:
        ScoreError: no ``text_column``, or ``df`` already has an output column.
    """
    from pyspark.sql.types import StructType

    from batch.score import score_frame
    from model.artifact import load_meta

    if text_column not in df.columns:
        raise ScoreError(f"text column {text_column!r} not found; columns are {list(df.columns)[:20]}")
    meta = load_meta(model_dir)
    labels = list(meta.labels)
    clash = [c for c in (*ADDED_COLUMNS, *(SCORE_PREFIX + n for n in labels)) if c in df.columns]
    if clash:
        raise ScoreError(f"input already has output column(s) {clash}; rename them first")
    spark = df.sparkSession
    shipped = ship_model(spark, model_dir, ship=ship, runtime=runtime)
    version = model_version or _version_of(None, meta)
    schema = StructType([*df.schema.fields, *output_struct_fields(labels)])
    task_cpus = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        predictor = worker_predictor(shipped, task_cpus)
        for pdf in batches:
            yield score_frame(pdf, predictor, text_column, version)

    return df.mapInPandas(score, schema=schema)
