"""The batch scoring job behind ``adrisk score``: score a CSV / JSONL / Parquet file of any size.

Rows are read in chunks (bounded memory), scored, and each chunk is written to a numbered part
file in ``<output>.partial/`` followed by an atomically rewritten ``manifest.json`` counting the
finished chunks. A killed run continues with ``resume=True`` from the first unfinished chunk (parts
past the manifest's count are discarded), so no row is lost or written twice. At the end the parts
are concatenated into a temporary file next to the output, renamed onto it, and the work directory
is removed: the output appears whole or not at all.

With ``workers > 1`` the chunks are scored by that many worker processes (spawned; each loads the
model once, single-threaded by default) while this process reads chunks, writes the parts in input
order and updates the manifest only over the finished prefix: output, resume and the lock behave as
with one worker, and the output is byte-identical to one worker at the same threads per process.

Output rows: the input columns in input order, plus ``flagged`` (nullable bool), ``score_<label>``
per label (calibrated probability, null when not scored), ``model_version`` and ``error``
(``missing_text`` for a null/absent text, ``not_text`` for a non-string value, else null; with
``on_bad_row="mark"``, ``invalid_json`` / ``not_an_object`` for a JSON Lines line that is not one JSON
object and ``wrong_field_count`` for a CSV row with more fields than the header, kept as a row whose
input columns are null).

A JSON Lines input is resumed by position: the manifest records how many bytes and lines the
finished chunks cover and their sha256, and a resume checks those bytes and continues after them. A
line fixed (or a bad-row mode chosen) after a run stopped at a bad line therefore resumes without
redoing a finished chunk; a change inside the finished lines is refused. CSV and Parquet inputs are
resumed only when their size and modification time are unchanged.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from batch.tables import (
    BAD_ROW_COLUMN,
    BAD_ROW_ERRORS,
    ON_BAD_ROW,
    InputChanged,
    ReadPosition,
    ScoreError,
    concatenate,
    estimate_rows,
    file_format,
    iter_chunks,
    iter_jsonl_chunks,
    to_arrow,
)
from model.artifact import write_json_atomic
from model.messages import describe_columns
from model.pyfunc import ADDED_COLUMNS, SCORE_PREFIX, score_values

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# One process already uses every core (the predictor's default threads are all usable CPUs), so one
# worker is the default; `--workers N` is for many-core machines where one process's threads stop
# scaling. The measurements behind it: docs/performance.md.
DEFAULT_WORKERS = 1
PART = "part-{:06d}.parquet"


@dataclass
class ScoreSummary:
    """Totals over the whole file (resumed runs included): rows, rows not scored, flagged per label."""

    rows: int = 0
    missing: int = 0
    bad_rows: int = 0
    flagged: int = 0
    flagged_per_label: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    model_version: str = ""
    output: str = ""

    def format(self) -> str:
        """Human-readable closing summary (several lines)."""
        rate = self.rows / self.seconds if self.seconds > 0 else float("nan")
        per = ", ".join(f"{k}={v}" for k, v in self.flagged_per_label.items())
        bad = f", {self.bad_rows} of them bad input lines kept with an error" if self.bad_rows else ""
        return (
            f"scored {self.rows} rows ({self.missing} without text{bad}) with model {self.model_version} "
            f"in {self.seconds:.1f}s ({rate:.1f} rows/s)\n"
            f"flagged {self.flagged}; per label: {per}\nwrote {self.output}"
        )


def score_frame(
    df: pd.DataFrame, predictor, text_column: str, model_version: str, explain: bool = False
) -> pd.DataFrame:
    """``df`` plus ``flagged``, ``score_<label>``, ``model_version`` and ``error`` columns (same rows, order);
    with ``explain``, also ``explanations``: a JSON string ``{label: [{start, end, score}]}`` of the flagged
    labels' top spans (``model.explain``; null for rows that were not scored).

    Rows read from a bad JSON Lines line or CSV row (``BAD_ROW_COLUMN`` set, ``on_bad_row="mark"``) are not scored
    and get that column's value as ``error``; the column itself is dropped.

    Raises:
        ScoreError: ``text_column`` missing, or an output column name already used by the input.
    """
    bad = None
    if BAD_ROW_COLUMN in df.columns:
        bad = df[BAD_ROW_COLUMN].to_numpy(dtype=object)
        df = df.drop(columns=[BAD_ROW_COLUMN])
        if text_column not in df.columns and not pd.isna(bad).any():  # only bad lines in this chunk
            df[text_column] = None
    if text_column not in df.columns:
        raise ScoreError(f"text column {text_column!r} not found; columns are {describe_columns(df.columns)}")
    labels = list(predictor.labels)
    extra = (EXPLANATIONS_COLUMN,) if explain else ()
    clash = [c for c in (*ADDED_COLUMNS, *(SCORE_PREFIX + n for n in labels), *extra) if c in df.columns]
    if clash:
        raise ScoreError(f"input already has output column(s) {clash}; rename them first")
    added = score_values(predictor, df[text_column].tolist(), model_version)  # the pyfunc's columns
    if bad is not None:
        marked = ~pd.isna(bad)
        added.loc[marked, "error"] = bad[marked]
    if explain:
        added[EXPLANATIONS_COLUMN] = _explanations(predictor, df[text_column].tolist(), added)
    return pd.concat([df.reset_index(drop=True), added], axis=1)


EXPLANATIONS_COLUMN = "explanations"


def _explanations(predictor, values: list, added: pd.DataFrame) -> pd.Series:
    from model.explain import Explainer

    explainer = Explainer(predictor)
    thresholds = predictor.meta.thresholds
    benign = predictor.meta.label_schema.benign_label
    out: list[str | None] = []
    for i, v in enumerate(values):
        if added["error"].iloc[i] is not pd.NA and pd.notna(added["error"].iloc[i]):
            out.append(None)
            continue
        names = [
            n for n in predictor.labels if n != benign and added[SCORE_PREFIX + n].iloc[i] >= thresholds[n]
        ]
        exp = explainer.explain_json([v], labels=names)[0] if names else {}
        out.append(json.dumps(exp))
    return pd.Series(pd.array(out, dtype="string"))


def _metadata_sha256(meta) -> str:
    """sha256 of the scoring model's metadata (``adrisk.json`` as loaded: thresholds, calibration, ONNX
    variants and TF-IDF blend with their checksums), for any predictor (local, workers, Spark)."""
    import hashlib

    return hashlib.sha256(meta.model_dump_json().encode("utf-8")).hexdigest()


def _model_version(ref, meta) -> str:
    if ref.version:
        return str(ref.version)
    return f"local:{meta.weights_sha256[:12]}" if meta.weights_sha256 else "local"


def run_score(
    model_uri: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    chunk_size: int = 1000,
    resume: bool = False,
    runtime: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    predictor: Any = None,
    model_version: str | None = None,
    explain: bool = False,
    workers: int | None = 1,
    on_bad_row: str = "error",
    torch_threads: int | None = None,
) -> ScoreSummary:
    """Score ``input_path`` into ``output_path`` (formats by extension), resumable chunk by chunk.
    One job per output at a time: two jobs sharing ``<output>.partial/`` would mix or delete each
    other's parts.

    Args:
        model_uri: anything ``model.uri.resolve_model`` accepts.
        text_column: the column holding the ad text.
        chunk_size: rows per chunk (memory is bounded by a chunk and its part file).
        resume: continue from ``<output>.partial/``; without it an existing work directory is an error.
        runtime: ``Predictor.load``'s runtime (``auto``, ``torch`` or an ONNX variant).
        threads: intra-op threads per scoring process (None: the predictor's default).
        progress: show a progress bar on stderr.
        predictor: an already loaded Predictor (tests), or ``batch.spark.SparkScorer`` (``--engine
            spark``); ``model_uri`` is then only recorded.
        model_version: the ``model_version`` value to write (default: the registry version, else
            ``local:<sha12>``).
        explain: add the ``explanations`` column (see ``score_frame``).
        workers: scoring processes (spawned; each loads the model once with ``threads``, default
            1, intra-op threads); None means 1 (see ``DEFAULT_WORKERS``). More than 1 needs a model
            directory: with ``predictor``, its ``directory``.
        torch_threads: the deprecated name of ``threads``.
        on_bad_row: a JSON Lines line that is not one JSON object, or a CSV row with more fields than
            the header: ``error`` stops the job naming its file line (and byte offset for JSON Lines;
            chunks before it are finished and kept for ``resume``); ``mark`` keeps it as a row with
            ``error`` ``invalid_json`` / ``not_an_object`` / ``wrong_field_count``.

    Returns:
        The totals over the whole file.

    Raises:
        ScoreError: bad arguments, a missing text column, a bad line (``on_bad_row="error"``), a work
            directory from another input or model, an existing work directory without ``resume``,
            or another job writing the same output.
    """
    from filelock import FileLock, Timeout

    if torch_threads is not None:
        logger.warning("run_score(torch_threads=...) is deprecated: call it threads")
        threads = torch_threads if threads is None else threads
    dst = Path(output_path)
    file_format(dst)
    dst.resolve().parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(output_lock_path(dst)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ScoreError(
            f"another adrisk score is writing {dst}; wait for it or choose another --output"
        ) from None
    try:
        return _run_score(
            model_uri,
            input_path,
            output_path,
            text_column=text_column,
            chunk_size=chunk_size,
            resume=resume,
            runtime=runtime,
            threads=threads,
            progress=progress,
            predictor=predictor,
            model_version=model_version,
            explain=explain,
            workers=workers,
            on_bad_row=on_bad_row,
        )
    finally:
        lock.release()  # the lock file stays (in the temp dir): unlinking it would let two jobs lock two inodes


def output_lock_path(output: Path) -> Path:
    """The lock a job holds while writing ``output``: in the temp directory, keyed by the output's
    absolute path (so nothing is left beside the output)."""
    import hashlib

    key = hashlib.sha256(str(output.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"adrisk-score-{key}.lock"


def _run_score(
    model_uri: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    chunk_size: int = 1000,
    resume: bool = False,
    runtime: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    predictor=None,
    model_version: str | None = None,
    explain: bool = False,
    workers: int | None = 1,
    on_bad_row: str = "error",
) -> ScoreSummary:
    """``run_score`` once the output's lock is held (same arguments and errors)."""
    from model.predictor import Predictor
    from model.uri import ModelRef, resolve_model

    src, dst = Path(input_path), Path(output_path)
    file_format(src), file_format(dst)
    if not src.is_file():
        raise ScoreError(f"input {src} not found")
    if chunk_size < 1:
        raise ScoreError("--chunk-size must be at least 1")
    if workers is not None and workers < 1:
        raise ScoreError("--workers must be at least 1")
    if on_bad_row not in ON_BAD_ROW:
        raise ScoreError(f"--on-bad-row must be one of {list(ON_BAD_ROW)}, got {on_bad_row!r}")
    if dst.is_dir():
        raise ScoreError(f"output {dst} is a directory; give a file path")
    if dst.exists() and dst.samefile(src):
        raise ScoreError("--output is the input file; write the scores to another path")
    work = dst.with_name(dst.name + ".partial")
    if (work / MANIFEST).exists() and not resume:
        raise ScoreError(f"{work} holds an unfinished run: pass --resume to continue it, or delete it")
    if work.exists() and not (work / MANIFEST).exists():
        shutil.rmtree(work)  # a run that died before finishing its first chunk: nothing to keep

    if workers is None:
        workers = DEFAULT_WORKERS
    with contextlib.ExitStack() as stack:
        if predictor is None:
            download = stack.enter_context(tempfile.TemporaryDirectory(prefix="adrisk-score-"))
            ref = resolve_model(model_uri, download)  # the directory lives while workers load from it
            if workers == 1:
                predictor = Predictor.load(ref.directory, runtime=runtime, num_threads=threads)
        else:
            if workers > 1 and predictor.directory is None:
                raise ScoreError("--workers > 1 needs a model directory to load in each worker")
            ref = ModelRef(
                uri=model_uri, directory=predictor.directory or Path("."), name=predictor.meta.name
            )
        pool = None
        if workers > 1:
            pool = stack.enter_context(_WorkerPool(workers, ref.directory, runtime, threads or 1))
        return _score_chunks(
            src,
            dst,
            work,
            ref,
            predictor,
            pool,
            text_column=text_column,
            chunk_size=chunk_size,
            resume=resume,
            progress=progress,
            model_version=model_version,
            explain=explain,
            on_bad_row=on_bad_row,
        )


_WORKER: dict = {}


def _worker_init(directory: str, runtime: str, threads: int) -> None:
    """Worker process start: load the predictor once (``threads`` intra-op threads)."""
    from model.predictor import Predictor

    _WORKER["predictor"] = Predictor.load(directory, runtime=runtime, num_threads=threads)


def _worker_score(chunk: pd.DataFrame, text_column: str, version: str, explain: bool) -> pd.DataFrame:
    return score_frame(chunk, _WORKER["predictor"], text_column, version, explain=explain)


class _WorkerPool:
    """``n`` spawned processes that score chunks; results are taken back in submission order.

    Workers never touch the output files: a killed job cannot leave a worker writing behind the
    resumed one. ``spawn`` (not fork): the parent's thread pools and locks are not inherited."""

    def __init__(self, n: int, directory: Path, runtime: str, threads: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.n = n
        self.runtime = runtime
        self.executor = ProcessPoolExecutor(
            n,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(str(directory), runtime, threads),
        )

    def submit(self, chunk: pd.DataFrame, text_column: str, version: str, explain: bool):
        return self.executor.submit(_worker_score, chunk, text_column, version, explain)

    def __enter__(self) -> _WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.executor.shutdown(wait=exc[0] is None, cancel_futures=True)


def _resume_from(
    manifest_path: Path, identity: dict, by_position: bool, summary: ScoreSummary
) -> tuple[int, ReadPosition | None]:
    """``(chunks done, input position after them)`` from a work directory's manifest, with its
    totals restored into ``summary``.

    Raises:
        ScoreError: the input, model or settings changed since the run started, or a JSON Lines run
            recorded no input position.
    """
    work = manifest_path.parent
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    changed = [k for k, v in identity.items() if manifest.get("identity", {}).get(k) != v]
    if changed:
        raise ScoreError(
            f"cannot resume {work}: {', '.join(changed)} changed since it started; delete it to start over"
        )
    done = int(manifest["chunks_done"])
    start = None
    if by_position and done:
        if "input_position" not in manifest:
            raise ScoreError(f"cannot resume {work}: it records no input position; delete it to start over")
        start = ReadPosition(**manifest["input_position"])
    saved = manifest["summary"]
    summary.rows, summary.missing, summary.flagged = saved["rows"], saved["missing"], saved["flagged"]
    summary.bad_rows = saved.get("bad_rows", 0)
    summary.flagged_per_label.update(saved["flagged_per_label"])
    summary.seconds = saved["seconds"]
    logger.info("resuming %s after %d chunks (%d rows)", work, done, summary.rows)
    return done, start


def _score_chunks(
    src: Path,
    dst: Path,
    work: Path,
    ref,
    predictor,
    pool: _WorkerPool | None,
    *,
    text_column: str,
    chunk_size: int,
    resume: bool,
    progress: bool,
    model_version: str | None,
    explain: bool,
    on_bad_row: str,
) -> ScoreSummary:
    """The chunk loop of ``_run_score`` (in this process, or on ``pool``)."""
    from concurrent.futures.process import BrokenProcessPool

    from model.artifact import load_meta

    meta = predictor.meta if predictor is not None else load_meta(ref.directory)
    version = model_version or _model_version(ref, meta)
    labels = list(meta.labels)
    stat = src.stat()
    by_position = file_format(src) == "jsonl"  # resumed by the position and hash of the scored lines
    identity = {
        "input": str(src.resolve()),
        **({} if by_position else {"input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}),
        "text_column": text_column,
        "chunk_size": chunk_size,
        "model_version": version,
        # same weights can come with other thresholds, ONNX variants or a TF-IDF blend (adrisk.json)
        "model_metadata_sha256": _metadata_sha256(meta),
        "labels": labels,
    }
    if explain:
        identity["explain"] = True

    manifest_path = work / MANIFEST
    summary = ScoreSummary(flagged_per_label=dict.fromkeys(labels, 0), model_version=version, output=str(dst))
    done, start = 0, None
    if resume and manifest_path.is_file():
        done, start = _resume_from(manifest_path, identity, by_position, summary)
    work.mkdir(parents=True, exist_ok=True)
    for stale in dst.parent.glob(
        f".{glob.escape(dst.name)}.tmp-*"
    ):  # final writes of killed runs (older adrisk)
        stale.unlink(missing_ok=True)
    for stale in work.glob("part-*.parquet*"):  # parts written after the last manifest update
        if stale.suffix != ".parquet" or int(stale.name[5:11]) >= done:
            stale.unlink()

    t0 = time.perf_counter() - summary.seconds
    from tqdm import tqdm

    def read() -> Iterator[tuple[int, pd.DataFrame, ReadPosition | None]]:
        """(chunk index, chunk, input position after it) from the first unfinished chunk on."""
        if not by_position:
            chunks = iter_chunks(src, chunk_size, on_bad_row=on_bad_row)
            yield from ((i, c, None) for i, c in enumerate(chunks) if i >= done)
            return
        try:
            chunks = iter_jsonl_chunks(src, chunk_size, on_bad_row=on_bad_row, start=start)
            yield from ((done + i, c, p) for i, (c, p) in enumerate(chunks))
        except InputChanged as e:
            raise ScoreError(f"cannot resume {work}: {e}; delete it to start over") from None

    def scored() -> Iterator[tuple[int, pd.DataFrame, ReadPosition | None]]:
        """(chunk index, scored frame, input position) in input order; with a pool, up to 2 chunks per
        worker in flight. A bad line stops the read only after every chunk before it is scored."""
        if pool is None:
            for i, chunk, position in read():
                yield i, score_frame(chunk, predictor, text_column, version, explain=explain), position
            return
        pending: deque = deque()
        try:
            try:
                for i, chunk, position in read():
                    pending.append((i, position, pool.submit(chunk, text_column, version, explain)))
                    while len(pending) >= 2 * pool.n:
                        j, p, fut = pending.popleft()
                        yield j, fut.result(), p
            except ScoreError:  # a bad line: the chunks before it are finished and kept for --resume
                while pending:
                    j, p, fut = pending.popleft()
                    yield j, fut.result(), p
                raise
            while pending:
                j, p, fut = pending.popleft()
                yield j, fut.result(), p
        except BrokenProcessPool as e:
            raise ScoreError(
                f"a scoring worker died ({e}); finished chunks are kept: rerun with --resume"
            ) from None

    with tqdm(
        total=estimate_rows(src),
        initial=summary.rows,
        unit="rows",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="scoring",
    ) as bar:
        for i, out, position in scored():
            part = work / PART.format(i)
            tmp = part.with_name(part.name + ".tmp")
            pq.write_table(to_arrow(out), tmp)
            os.replace(tmp, part)
            summary.rows += len(out)
            summary.missing += int(out["error"].notna().sum())
            summary.bad_rows += int(out["error"].isin(BAD_ROW_ERRORS).sum())
            summary.flagged += int(out["flagged"].fillna(False).sum())
            for name in labels:
                thr = meta.thresholds[name]
                summary.flagged_per_label[name] += int((out[SCORE_PREFIX + name] >= thr).sum())
            summary.seconds = time.perf_counter() - t0
            write_json_atomic(
                manifest_path,
                {
                    "identity": identity,
                    "chunks_done": i + 1,
                    **({"input_position": position.to_dict()} if position is not None else {}),
                    "summary": {
                        k: v for k, v in asdict(summary).items() if k not in ("model_version", "output")
                    },
                },
            )
            bar.update(len(out))

    parts = sorted(work.glob("part-*.parquet"))
    # The whole output is first written inside the work directory: a run killed during this write
    # leaves it there, where the resume overwrites it and the final rmtree removes it.
    tmp_out = work / f"output.tmp{dst.suffix}"
    try:
        concatenate(parts, tmp_out, file_format(dst))
        os.replace(tmp_out, dst)
    finally:
        tmp_out.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    logger.info("wrote %s (%d rows)", dst, summary.rows)
    return summary
