"""The MLflow pyfunc flavour of an adrisk model.

Logged as *models from code* (``model/pyfunc_code.py`` calls ``mlflow.models.set_model``), so the
MLflow model holds no pickle: only this code reference and the artifact directory.

``predict`` takes a DataFrame with a ``text`` column (or a list of str / a Series) and returns a
DataFrame with one row per text: ``flagged`` (bool), one float column per label (calibrated
probability) and ``truncated`` (bool). Missing text (None / NaN) is an error that names the rows;
it is never scored as the string ``"nan"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from model.predictor import Predictor
from model.uri import PYFUNC_ARTIFACT_KEY, find_artifact_dir

TEXT_COLUMN = "text"


class InputError(ValueError):
    """The pyfunc input cannot be scored (wrong shape, missing or non-string text)."""


def texts_from_input(model_input: Any, column: str = TEXT_COLUMN) -> list[str]:
    """Extract the texts to score from a DataFrame / Series / list / str.

    Raises:
        InputError: no ``column``, or rows whose text is missing or not a string (rows named by position).
    """
    if isinstance(model_input, pd.DataFrame):
        if column not in model_input.columns:
            raise InputError(f"input DataFrame needs a '{column}' column; found {list(map(str, model_input.columns))}")
        values = model_input[column].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (list, tuple)):
        values = list(model_input)
    else:
        raise InputError(f"unsupported input type {type(model_input).__name__}; pass a DataFrame with '{column}'")
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))]
    if missing:
        raise InputError(f"text is missing (None/NaN) in rows {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    wrong = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if wrong:
        raise InputError(f"text must be a string; rows {wrong[:20]} are not")
    return values


def predictions_frame(predictor: Predictor, texts: list[str]) -> pd.DataFrame:
    """Score ``texts``: DataFrame with ``flagged``, one column per label, ``truncated``."""
    s = predictor.score(texts)
    data: dict[str, Any] = {"flagged": s.flagged.astype(bool)}
    for j, name in enumerate(predictor.labels):
        data[name] = s.probabilities[:, j].astype(float)
    data["truncated"] = s.truncated.astype(bool)
    return pd.DataFrame(data)


class AdriskPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around ``Predictor`` (artifact key ``adrisk_model``)."""

    def load_context(self, context) -> None:
        self.predictor = Predictor.load(find_artifact_dir(Path(context.artifacts[PYFUNC_ARTIFACT_KEY])))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return predictions_frame(self.predictor, texts_from_input(model_input))
