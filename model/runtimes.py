"""Runtimes: what computes logits for a padded batch, and how many threads it uses.

``TorchRuntime`` runs the artifact's ``model.safetensors``; ``OnnxRuntime`` runs one ONNX variant
recorded in ``adrisk.json`` (export and quantisation live in ``training/onnx_export.py``, the accuracy
gate that admits a variant in ``training/variant_gate.py``). ``select_runtime`` builds the one a
``Predictor`` asks for, and ``default_num_threads`` is the thread policy both use.

ONNX variants live under ``<artifact>/onnx/``::

    <dir>/onnx/model.fp32.onnx          fp32 graph (onnxruntime fuses it when it loads it)
    <dir>/onnx/model.int8.onnx          int8 dynamic quantisation of every weight MatMul, run per row
    <dir>/onnx/model.int8-static.onnx   int8 static quantisation (calibrated activation scales), batched
    <dir>/onnx/model.int8-token.onnx    int8 with one activation scale per token, batched
    <dir>/onnx/model.int8-mixed.onnx    int8 per token, but the layers measured most sensitive stay fp32
    <dir>/onnx/student.fp32.onnx, student.int8.onnx   a distilled student (<dir>/student/), if trained

A text's score must not depend on which texts share its batch. Dynamically quantised variants compute
one activation scale per tensor at run time, over the whole batch, so they run *per row*
(``per_row``): each text alone, at its own length. Static int8 carries its activation scales in the
graph (calibrated once at export) and per-token int8 computes one scale per token, so each row's
arithmetic is its own and both run batched like fp32: length-sorted, dynamically padded,
token-budgeted (``Predictor``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.artifact import ArtifactError, ArtifactMeta, RuntimeVariant, load_meta, sha256_file

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.int8.onnx"
INT8_MIXED_FILE = "model.int8-mixed.onnx"
INT8_STATIC_FILE = "model.int8-static.onnx"
INT8_TOKEN_FILE = "model.int8-token.onnx"
FP32_VARIANT = "onnx-fp32"
INT8_VARIANT = "onnx-int8"
INT8_MIXED_VARIANT = "onnx-int8-mixed"
INT8_STATIC_VARIANT = "onnx-int8-static"
INT8_TOKEN_VARIANT = "onnx-int8-token"
# A distilled student (training/experiments/distill.py): its torch weights under student/, its variants in onnx/.
STUDENT_DIR = "student"
STUDENT_FP32_FILE = "student.fp32.onnx"
STUDENT_INT8_FILE = "student.int8.onnx"
STUDENT_FP32_VARIANT = "student-onnx-fp32"
STUDENT_INT8_VARIANT = "student-onnx-int8"
ALL_FILES = (
    FP32_FILE,
    INT8_FILE,
    INT8_STATIC_FILE,
    INT8_TOKEN_FILE,
    INT8_MIXED_FILE,
    STUDENT_FP32_FILE,
    STUDENT_INT8_FILE,
)
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"


# The threads knob: ``threads`` in the config (``train.threads``), the server's settings and the CLI
# (``--threads``), and this environment variable; ``ADRISK_NUM_THREADS`` is its deprecated name.
NUM_THREADS_ENV = "ADRISK_THREADS"
DEPRECATED_NUM_THREADS_ENV = "ADRISK_NUM_THREADS"
# ONNX sessions made before a fork, held by the child so they are never destroyed there (destroying
# one joins worker threads that exist only in the parent, and hangs).
_INHERITED_SESSIONS: list[Any] = []


def default_num_threads() -> int:
    """Cores used when none are given: ``$ADRISK_THREADS`` (or its deprecated name
    ``$ADRISK_NUM_THREADS``) if set, else every CPU this process may run on
    (``os.sched_getaffinity``; at least 1). Every CPU measured fastest on an otherwise idle machine;
    set ``ADRISK_THREADS=1`` where adrisk shares the machine (a server beside a scoring job):
    docs/performance.md, "Thread and batch settings".
    """
    name = NUM_THREADS_ENV
    env = os.environ.get(NUM_THREADS_ENV, "").strip()
    if not env and os.environ.get(DEPRECATED_NUM_THREADS_ENV, "").strip():
        name, env = DEPRECATED_NUM_THREADS_ENV, os.environ[DEPRECATED_NUM_THREADS_ENV].strip()
        logger.warning("%s is deprecated: call it %s", DEPRECATED_NUM_THREADS_ENV, NUM_THREADS_ENV)
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            logger.warning("ignoring %s=%r (not an integer)", name, env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus)


class OnnxRuntime:
    """ONNX Runtime (CPUExecutionProvider only) over one variant recorded in the artifact.

    Args:
        directory: the model artifact directory.
        variant_info: the variant's entry of ``adrisk.json`` ``runtimes.variants`` (a
            ``RuntimeVariant``, or a mapping of its fields; needs ``file``; ``sha256`` and
            ``source_weights_sha256`` are checked when present).
        num_threads: cores to use; None uses ``default_num_threads()``. Every ``session.run`` gets
            one intra-op thread and ``num_threads`` of them go at once (``session.run`` releases the
            GIL and is thread-safe): a per-row (dynamic int8) variant runs that many rows at once; a
            batched variant splits each batch's rows into that many chunks (exact: the gate holds
            batched variants to batch invariance). On 2 cores two concurrent rows ran 1.86x the
            texts/s of one, and two half-batches beat one 2-thread batch. Inter-op threads are 1.
        verify: check the file's sha256 and that it was exported from this artifact's weights.

    Raises:
        ArtifactError: the ONNX file is missing, fails its checksum, was exported from other
            weights, or onnxruntime cannot load it (corrupted).
        ImportError: onnxruntime is not installed.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        variant_info: RuntimeVariant | Mapping[str, Any],
        *,
        num_threads: int | None = None,
        verify: bool = True,
    ):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("ONNX variants need onnxruntime: pip install onnxruntime") from e

        directory = Path(directory)
        try:
            info = RuntimeVariant.model_validate(
                variant_info if isinstance(variant_info, RuntimeVariant) else dict(variant_info)
            )
        except ValueError:
            raise ArtifactError(f"{directory}: ONNX variant entry has no valid 'file'") from None
        if not info.file:
            raise ArtifactError(f"{directory}: ONNX variant entry has no 'file'")
        path = directory / ONNX_DIR / info.file
        self.name = info.name or Path(info.file).stem
        self.path = path
        # where this variant's torch weights live inside the artifact (explanations by gradient)
        self.torch_subdir = STUDENT_DIR if info.student is not None else ""
        # Dynamic int8 computes activation scales per batch tensor at run time: run each text alone.
        self.per_row = info.runs_per_row
        if not path.is_file():
            raise ArtifactError(
                f"ONNX variant {self.name!r}: {path} not found "
                f"(re-run `adrisk export-onnx` or load with runtime='torch')"
            )
        if verify:
            expected = info.sha256
            if expected and sha256_file(path) != expected:
                raise ArtifactError(
                    f"ONNX variant {self.name!r}: {path} sha256 does not match adrisk.json "
                    f"(corrupted or replaced; re-run `adrisk export-onnx`)"
                )
            source = info.source_weights_sha256
            current = load_meta(directory).weights_sha256
            if source and current and source != current:
                raise ArtifactError(
                    f"ONNX variant {self.name!r} was exported from different weights than "
                    f"{directory}'s model.safetensors; re-run `adrisk export-onnx`"
                )
        self.num_threads = int(num_threads) if num_threads else default_num_threads()
        so = ort.SessionOptions()
        # One intra-op thread per session.run; ``num_threads`` runs go at once (rows, or a batch's
        # row chunks): on 2 cores two 1-thread runs of half a batch beat one 2-thread run of all of
        # it (docs/performance.md, "Row chunks").
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only
        # Idle intra-op threads sleep instead of spinning: spinning threads take CPU from the other
        # work on a shared machine (docs/performance.md, "Thread and batch settings").
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._options = so
        self._pid = os.getpid()
        self._rows_pool: Any = None  # made on first use, again after a fork (threads do not survive it)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ArtifactError(
                f"ONNX variant {self.name!r}: onnxruntime cannot load {path} "
                f"(corrupted? re-run `adrisk export-onnx`): {type(e).__name__}"
            ) from e
        names = {i.name for i in self.session.get_inputs()}
        if names != set(INPUT_NAMES):
            raise ArtifactError(
                f"ONNX variant {self.name!r}: inputs {sorted(names)}, expected {list(INPUT_NAMES)}"
            )

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids and mask -> (B, L) float32 logits.

        A ``per_row`` variant runs each row alone on its unmasked tokens (any padding side), so a
        row's logits do not depend on the other rows.
        """
        self._check_fork()
        input_ids = np.asarray(input_ids, dtype=np.int64)
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        if self.per_row and len(input_ids) > 0:
            rows = []
            for ids, mask in zip(input_ids, attention_mask, strict=True):
                keep = mask != 0
                rows.append(ids[keep] if keep.any() else ids[:1])  # all padding: keep one position
            return self.logits_rows(rows)
        k = min(self.num_threads, len(input_ids))
        if k <= 1:
            return self._run(input_ids, attention_mask)
        # A batched variant is batch-invariant (the gate checks it), so its rows can run as k chunks
        # at once, each cut to its own longest row.
        return np.vstack(
            list(
                self._pool().map(
                    lambda idx: self._run_trimmed(input_ids[idx], attention_mask[idx]),
                    np.array_split(np.arange(len(input_ids)), k),
                )
            )
        )

    def _run_trimmed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Run rows after dropping the trailing columns that are padding in every row."""
        used = np.flatnonzero(attention_mask.any(axis=0))
        width = int(used[-1]) + 1 if used.size else 1
        return self._run(input_ids[:, :width], attention_mask[:, :width])

    def _pool(self) -> Any:
        """``num_threads`` worker threads, made on first use (again after a fork)."""
        if self._rows_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._rows_pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="adrisk-onnx")
        return self._rows_pool

    def _check_fork(self) -> None:
        """In a process forked after this session was made, make the session again (once per
        process): onnxruntime's thread pool does not survive ``fork``. The parent's session is kept,
        never destroyed, in the child (its destructor would join threads the child does not have and
        hang: seen with onnxruntime 1.32)."""
        if self._pid != os.getpid():
            import onnxruntime as ort

            logger.info("forked process: loading ONNX variant %s again", self.name)
            _INHERITED_SESSIONS.append(self.session)  # never freed here: its destructor joins threads
            self.session = ort.InferenceSession(
                str(self.path), sess_options=self._options, providers=["CPUExecutionProvider"]
            )
            self._pid = os.getpid()
            self._rows_pool = None

    def logits_rows(self, rows: list[Any]) -> np.ndarray:
        """Unpadded token id sequences -> (n, L) float32 logits, each row run alone (see ``per_row``),
        ``num_threads`` rows at once, in row order. ``Predictor`` calls this directly for a per-row
        variant, with every text of the call at once (no padding, no waits at batch ends)."""
        self._check_fork()

        def one(ids: Any) -> np.ndarray:
            x = np.asarray(ids, dtype=np.int64)[None, :]
            return self._run(x, np.ones_like(x))

        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        if self.num_threads == 1 or len(rows) == 1:
            return np.vstack([one(r) for r in rows])
        return np.vstack(list(self._pool().map(one, rows)))

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self.session.run(
            [OUTPUT_NAME],
            {
                "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            },
        )[0]
        return np.asarray(out, dtype=np.float32)


class Runtime(Protocol):
    """Computes logits for a padded batch: (B, T) int64 ids and mask -> (B, L) float32 logits."""

    name: str

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class TorchRuntime:
    """PyTorch fp32 runtime over the artifact's ``model.safetensors`` (eval mode, ``inference_mode``).

    ``num_threads`` (if given) applies to this runtime's forward passes only: torch's process-wide
    thread count is set for the call and restored after it (0.1 us), so loading a predictor does not
    change the threads of other torch work in the process (training, another model).

    Fork safety: torch's intra-op pool (GNU OpenMP) does not survive ``fork``; a child that runs a
    parallel region on it after the parent did hangs forever. So in a process forked after this
    runtime was made, forward passes use 1 thread (a 1-thread region needs no pool), and torch's
    process-wide count is set to 1 in every forked child (``os.register_at_fork``). Use the "spawn"
    or "forkserver" start method for multi-threaded workers.
    """

    name = "torch"

    def __init__(self, directory: str | os.PathLike[str], num_threads: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification

        _register_torch_fork_handler()
        self._torch = torch
        self._pid = os.getpid()
        self.num_threads = int(num_threads) if num_threads else None
        self.model = AutoModelForSequenceClassification.from_pretrained(str(directory), local_files_only=True)
        self.model.eval()

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        previous = torch.get_num_threads()
        wanted = self.num_threads
        if self._pid != os.getpid():  # forked: the parent's OpenMP pool is unusable here
            wanted = 1
        if wanted and wanted != previous:
            torch.set_num_threads(wanted)
        try:
            with torch.inference_mode():
                out = self.model(
                    input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask)
                ).logits
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)
        return out.float().numpy()


_fork_handler_registered = False


def _torch_single_thread_in_child() -> None:
    import torch

    torch.set_num_threads(1)


def _register_torch_fork_handler() -> None:
    """Once per process: every child forked from now on runs torch with 1 intra-op thread."""
    global _fork_handler_registered
    if not _fork_handler_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_torch_single_thread_in_child)
        _fork_handler_registered = True


def _torch_runtime(directory: Path, num_threads: int | None) -> TorchRuntime:
    try:
        return TorchRuntime(directory, num_threads)
    except Exception as e:  # truncated / garbage weights, a config that does not fit them
        raise ArtifactError(f"{directory}: cannot load the model weights ({type(e).__name__}: {e})") from e


def select_runtime(directory: Path, meta: ArtifactMeta, runtime: str, num_threads: int | None) -> Runtime:
    """Build the runtime named by ``runtime`` (see ``Predictor.load``)."""
    if runtime == "torch":
        return _torch_runtime(directory, num_threads)
    if runtime == "auto":
        if meta.runtimes.default == "torch":
            return _torch_runtime(directory, num_threads)
        runtime = meta.runtimes.default
    variants = meta.runtimes.variants
    if runtime not in variants:
        raise ValueError(f"unknown runtime {runtime!r}; this model has: {['torch', *variants]}")
    return OnnxRuntime(directory, variants[runtime], num_threads=num_threads)
