"""Finding the reference window: the data a model was validated (and calibrated, thresholded) on.

A registered model's MLflow run records each split it was trained with as a dataset input
(``training/pipeline.py``: source = the file's path, name = ``<split>-<fingerprint prefix>``), the
column mapping as ``data.*`` params, and the split's fingerprint in ``adrisk.json``
(``data_fingerprint``). The reference is the ``validation`` input's file, read with that mapping,
and accepted only when its fingerprint (``training.data.fingerprint``: normalised texts and targets
in order) equals the recorded one, so a file edited since training is never taken for it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from monitor.window import MonitorError, read_frame

logger = logging.getLogger(__name__)

REFERENCE_SPLIT = "validation"


@dataclass
class ReferenceSource:
    """Where the reference comes from: ``frame`` as read (None: read ``path``), its text and labels
    columns, and how it was found (``explicit`` or ``model run <id>``)."""

    path: str
    how: str
    text_column: str = "text"
    labels_column: str = "labels"
    label_format: str = "list"
    fingerprint: str | None = None
    frame: pd.DataFrame | None = None


def _candidates(source: str, tracking_uri: str | None) -> list[Path]:
    """The recorded path as given (relative to the working directory) and relative to the directory
    of a SQLite tracking store (where ``adrisk train`` usually ran)."""
    out = [Path(source)]
    if tracking_uri and tracking_uri.startswith("sqlite:///") and not Path(source).is_absolute():
        store = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
        out.append(store.parent / source)
    return out


def find_reference(
    run_id: str | None, model_uri: str, labels: tuple[str, ...], fingerprint: str | None
) -> ReferenceSource:
    """The reference of a model found through its MLflow run.

    Args:
        run_id: the model's run (``model.uri.ModelRef.run_id``); None for a local directory.
        model_uri: named in messages.
        labels: the model's labels (to fingerprint the file's targets).
        fingerprint: the validation fingerprint recorded in ``adrisk.json`` (None: the run's tag).

    Raises:
        MonitorError: no run, no validation input on it, a split made from one file, the file not
            found, or its fingerprint differing from the recorded one. The message says to give
            ``--reference``.
    """
    hint = "; give --reference FILE (e.g. the validation file the model was trained with)"
    if not run_id:
        raise MonitorError(
            f"reference not found: {model_uri} has no MLflow run to read its validation data from{hint}"
        )
    import mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception as e:  # MlflowException for a deleted run or a store that moved
        raise MonitorError(
            f"reference not found: cannot read run {run_id} of {model_uri} ({type(e).__name__}){hint}"
        ) from None
    sources = [
        json.loads(d.dataset.source).get("uri", "")
        for d in (run.inputs.dataset_inputs if run.inputs else [])
        if any(t.key == "mlflow.data.context" and t.value == REFERENCE_SPLIT for t in d.tags)
    ]
    if not sources or not sources[0]:
        raise MonitorError(
            f"reference not found: run {run_id} of {model_uri} records no {REFERENCE_SPLIT} data{hint}"
        )
    source = sources[-1]
    if "#" in source:
        raise MonitorError(
            f"reference not found: the {REFERENCE_SPLIT} split of {model_uri} was cut from {source.split('#')[0]} "
            f"at training time{hint}"
        )
    params = run.data.params
    expected = fingerprint or run.data.tags.get(f"adrisk.data.{REFERENCE_SPLIT}.fingerprint")
    path = next(
        (
            p
            for p in _candidates(
                source, run.data.tags.get("adrisk.tracking_uri") or mlflow.get_tracking_uri()
            )
            if p.is_file()
        ),
        None,
    )
    if path is None:
        raise MonitorError(
            f"reference not found: {source} (the {REFERENCE_SPLIT} data of {model_uri}) does not exist here{hint}"
        )
    text_column = params.get("data.text_column") or "text"
    labels_column = params.get("data.labels_column") or "labels"
    label_format = params.get("data.label_format") or "list"
    frame = read_frame(path, "reference")
    if expected:
        got = data_fingerprint(frame, labels, params, str(path))
        if got != expected:
            raise MonitorError(
                f"reference not found: {path} is not the {REFERENCE_SPLIT} data {model_uri} was calibrated on "
                f"(fingerprint {got[:12]} != {expected[:12]}: edited, or sampled at training time){hint}"
            )
    logger.info("reference: %s (the %s data of %s)", path, REFERENCE_SPLIT, model_uri)
    return ReferenceSource(
        str(path), f"model run {run_id}", text_column, labels_column, label_format, expected, frame
    )


def data_fingerprint(frame: pd.DataFrame, labels: tuple[str, ...], params: dict[str, str], where: str) -> str:
    """``training.data.fingerprint`` of ``frame`` read with the run's column mapping (``data.*`` params).

    Raises:
        MonitorError: the frame does not fit the mapping (a column missing, unknown labels).
    """
    from model.schema import LabelSchema
    from training.config import DataConfig
    from training.data import DataError, fingerprint, prepare_frame

    keys = ("text_column", "labels_column", "label_format", "source_column", "group_column", "id_column")
    mapping = {k: params[f"data.{k}"] for k in keys if params.get(f"data.{k}")}
    try:
        cfg = DataConfig(path=where, **mapping)
        prepared, _ = prepare_frame(frame, cfg, LabelSchema(labels=labels), where)
    except (DataError, ValueError) as e:
        raise MonitorError(f"reference {where}: {str(e).splitlines()[0]}") from None
    return fingerprint(prepared, labels)
