"""The MLflow pyfunc flavour of an adrisk model.

Logged as *models from code* (``model/pyfunc_code.py`` calls ``mlflow.models.set_model``) with
adrisk's ``model`` package as ``code_paths`` and pinned requirements (``model.registry``): the MLflow
model holds no pickle and loads where adrisk is not installed.

Input, every shape the README documents: a DataFrame with a ``text`` column (other columns are
ignored), a dict ``{"text": [...]}``, a list / tuple / Series / 1-d numpy array of texts, or one str;
a one-column DataFrame whose column is positional (``0`` or ``"0"``: what MLflow builds from a list
and what ``spark_udf`` passes) counts as the text. The logged signature has outputs only: MLflow's column-based input enforcement
would refuse a list (``Model is missing inputs ['text']``, quoting the data) or, with an optional
column, silently drop it, so the input reaches ``values_from_input`` unchanged.

Output, one row per input row in input order, the columns ``adrisk score`` adds
(``output_columns``): ``flagged`` (nullable bool), ``score_<label>`` (float64 calibrated probability),
``model_version`` (str) and ``error``: ``missing_text`` (None / NaN) or ``not_text`` (any other
non-string), with null scores; a row never fails the batch. Only the input's shape can fail (no
``text`` column or two of them, a 2-d array, an unsupported type): ``InputError``, an
``MlflowException`` (HTTP 400 under ``mlflow models serve``, no stack trace) whose message names
columns and types, never text.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.messages import describe_columns
from model.predictor import Predictor
from model.uri import PYFUNC_ARTIFACT_KEY, find_artifact_dir

TEXT_COLUMN = "text"
SCORE_PREFIX = "score_"
ADDED_COLUMNS = ("flagged", "model_version", "error")  # with score_<label> after flagged: output_columns
MISSING_TEXT = "missing_text"
NOT_TEXT = "not_text"


# MLflow is imported only when its classes are needed (``InputError``, ``AdriskPyfunc``): importing it
# costs seconds, paid otherwise by every `adrisk score` and every Spark Python worker that only scores.
_LAZY_LOCK = threading.Lock()


def __getattr__(name: str):  # PEP 562: InputError and AdriskPyfunc are defined on first use
    if name not in ("InputError", "AdriskPyfunc"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _LAZY_LOCK:
        if name not in globals():
            globals()[name] = _define_input_error() if name == "InputError" else _define_pyfunc()
    return globals()[name]


def _input_error(message: str) -> Exception:
    return __getattr__("InputError")(message)


def _define_input_error() -> type:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class InputError(MlflowException):
        """The input's shape cannot be scored (no text column, a 2-d array, an unsupported type).

        An ``MlflowException`` (INVALID_PARAMETER_VALUE), so ``mlflow models serve`` answers 400 without
        a stack trace. Its message is fixed at construction: MLflow's scoring server rewrites an
        exception's message to ``Failed to predict data '<the request data>'...``, which would echo ad
        text; that assignment is ignored here.
        """

        def __init__(self, message: str):
            self._fixed_message = message
            super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

        @property
        def message(self) -> str:
            return self._fixed_message

        @message.setter
        def message(self, value: str) -> None:  # see the class docstring
            pass

    InputError.__module__, InputError.__qualname__ = __name__, "InputError"
    return InputError


def output_columns(labels: Sequence[str]) -> list[str]:
    """The scoring columns in order: ``flagged``, ``score_<label>`` per label, ``model_version``, ``error``."""
    return ["flagged", *(SCORE_PREFIX + n for n in labels), "model_version", "error"]


def output_signature(labels: Sequence[str]):
    """The logged ``ModelSignature``: no input schema (see the module docstring), ``output_columns``
    as outputs (``flagged`` boolean, scores double, ``model_version`` and ``error`` string)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    cols = [
        ColSpec("boolean", "flagged", required=False),
        *(ColSpec("double", SCORE_PREFIX + n, required=False) for n in labels),
        ColSpec("string", "model_version"),
        ColSpec("string", "error", required=False),
    ]
    return ModelSignature(inputs=None, outputs=Schema(cols))  # type: ignore[arg-type]


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a row without text."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def row_error(value: Any) -> str | None:
    """``None`` for a str, ``missing_text`` for None/NaN/NA, ``not_text`` for anything else."""
    if isinstance(value, str):
        return None
    return MISSING_TEXT if is_missing(value) else NOT_TEXT


def values_from_input(model_input: Any, column: str = TEXT_COLUMN) -> list[Any]:
    """The per-row text values of any documented input shape (see the module docstring), unchecked:
    rows that are not str are reported by ``score_values``.

    Raises:
        InputError: no ``column`` in a DataFrame / dict, or more than one in a DataFrame; an array that
            is not 1-d; an unsupported type.
    """
    if isinstance(model_input, dict):
        if column not in model_input:
            raise _input_error(f"input needs a '{column}' key; found keys {describe_columns(model_input)}")
        model_input = model_input[column]
        if isinstance(model_input, str) or np.ndim(model_input) == 0:
            model_input = [model_input.item() if isinstance(model_input, np.ndarray) else model_input]
    if isinstance(model_input, pd.DataFrame):
        named = int((model_input.columns == column).sum()) if model_input.shape[1] else 0
        if named > 1:
            raise _input_error(
                f"input DataFrame has {named} columns named '{column}'; keep one "
                f"(columns: {describe_columns(model_input.columns)})"
            )
        if named:
            return model_input[column].tolist()
        only = model_input.columns[0] if model_input.shape[1] == 1 else None
        if only is not None and (not isinstance(only, str) or only.isdigit()):  # 0 or "0" (spark_udf)
            return model_input.iloc[:, 0].tolist()
        raise _input_error(
            f"input DataFrame needs a '{column}' column; found {describe_columns(model_input.columns)}"
        )
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 0:
            return [model_input.item()]
        if model_input.ndim != 1:
            raise _input_error(f"expected a 1-d array of texts, got an array of shape {model_input.shape}")
        return model_input.tolist()
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    if model_input is None or np.isscalar(model_input):
        return [model_input]
    raise _input_error(
        f"unsupported input type {type(model_input).__name__}; pass a DataFrame with a "
        f"'{column}' column, a list of str or a str"
    )


def score_values(predictor, values: Sequence[Any], model_version: str) -> pd.DataFrame:
    """The ``output_columns`` for ``values`` (one row each, same order): str values are scored, the
    others get ``row_error``'s value and null ``flagged`` / scores. ``predictor`` is a ``Predictor``
    (or anything with ``labels`` and ``score(texts) -> Scores``)."""
    labels = list(predictor.labels)
    n = len(values)
    errors = [row_error(v) for v in values]
    idx = np.fromiter((i for i, e in enumerate(errors) if e is None), dtype=np.int64)
    probs = np.full((n, len(labels)), np.nan)
    flagged = pd.array([pd.NA] * n, dtype="boolean")
    if len(idx):
        s = predictor.score([values[i] for i in idx])
        probs[idx] = s.probabilities
        flagged[idx] = s.flagged
    out = pd.DataFrame({"flagged": flagged})
    for j, name in enumerate(labels):
        out[SCORE_PREFIX + name] = probs[:, j]
    out["model_version"] = model_version
    out["error"] = pd.array(errors, dtype="string")
    return out


_PREDICTORS: dict[tuple, Predictor] = {}
_LOADS: Counter = Counter()
_PREDICTORS_LOCK = threading.Lock()


def cached_predictor(
    directory: str | Path,
    *,
    num_threads: int | None = None,
    runtime: str = "auto",
    expected_sha256: str | None = None,
) -> Predictor:
    """This process's Predictor for an artifact directory, loaded once: a module-level cache keyed
    by (directory, the weights sha256 its ``adrisk.json`` records, the sha256 of ``adrisk.json``
    itself, threads, runtime), so a directory whose model or metadata was replaced is loaded again. Spark and MLflow reuse Python workers across tasks;
    this makes their later tasks skip the load.

    Raises:
        ArtifactError: not an artifact, weights failing their checksum, or a sha256 other than
            ``expected_sha256``.
    """
    from model.artifact import META_FILE, ArtifactError, load_meta, sha256_file

    directory = Path(directory).resolve()
    sha = load_meta(directory).weights_sha256 or ""
    if expected_sha256 and sha != expected_sha256:
        raise ArtifactError(
            f"{directory}: weights sha256 {sha[:12]} is not the expected {expected_sha256[:12]}"
        )
    # adrisk.json too: thresholds, ONNX variants and the TF-IDF blend can change with the same weights
    key = (str(directory), sha, sha256_file(directory / META_FILE), num_threads, runtime)
    with _PREDICTORS_LOCK:
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            predictor = Predictor.load(directory, runtime=runtime, num_threads=num_threads)
            _PREDICTORS[key] = predictor
            _LOADS[(str(directory), sha)] += 1
    return predictor


def predictor_loads(directory: str | Path) -> int:
    """How many times this process loaded ``directory`` (any sha) through ``cached_predictor``."""
    d = str(Path(directory).resolve())
    return sum(v for (path, _), v in _LOADS.items() if path == d)


def _spark_task_cpus() -> int | None:
    """``spark.task.cpus`` when running inside a Spark task (e.g. ``mlflow.pyfunc.spark_udf``), else None."""
    if "pyspark" not in sys.modules:
        return None
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        return max(1, int(ctx.cpus())) if ctx is not None else None
    except Exception:  # an older pyspark without TaskContext.cpus()
        return None


def _define_pyfunc() -> type:
    import mlflow.pyfunc

    class AdriskPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
        """pyfunc wrapper around ``Predictor`` (artifact key ``adrisk_model``); see the module docstring.

        ``model_version`` is ``local:<first 12 hex of the weights sha256>`` (what ``adrisk score`` writes
        for a model directory; a pyfunc does not know its registry version). Inside a Spark task the
        runtime uses ``spark.task.cpus`` threads.
        """

        def load_context(self, context) -> None:
            directory = find_artifact_dir(Path(context.artifacts[PYFUNC_ARTIFACT_KEY]))
            self.predictor = cached_predictor(directory, num_threads=_spark_task_cpus())
            sha = self.predictor.meta.weights_sha256
            self.model_version = f"local:{sha[:12]}" if sha else "local"

        def predict(self, context, model_input, params=None) -> pd.DataFrame:
            out = score_values(self.predictor, values_from_input(model_input), self.model_version)
            if os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() == "true":
                # `mlflow models serve` writes float NaN as the bare token NaN, which strict JSON parsers
                # refuse: a row without a score gets null there
                for col in out.columns[out.columns.str.startswith(SCORE_PREFIX)]:
                    out[col] = out[col].astype(object).where(out[col].notna(), None)
            return out

    AdriskPyfunc.__module__, AdriskPyfunc.__qualname__ = __name__, "AdriskPyfunc"
    return AdriskPyfunc
