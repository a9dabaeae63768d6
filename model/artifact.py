"""The model artifact: one self-describing directory, loadable offline without MLflow.

Layout (file names are module constants)::

    <dir>/config.json          HF model config (id2label set from the label schema)
    <dir>/model.safetensors    weights (no pickles anywhere)
    <dir>/tokenizer*.json ...  tokenizer files
    <dir>/adrisk.json          ArtifactMeta: label schema, thresholds, calibration, provenance, metrics
    <dir>/onnx/                optional ONNX Runtime variants (see ``model.runtimes``; made by ``training.onnx_export``)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from model.identity_mask import IdentityMask
from model.normalize import NORMALIZATION_VERSION
from model.schema import LabelSchema

logger = logging.getLogger(__name__)

META_FILE = "adrisk.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """The directory is not a usable adrisk model artifact (missing files, bad ``adrisk.json``)."""


class ThresholdInfo(BaseModel):
    """How one label's threshold was chosen on validation data."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0.0, le=1.0)
    method: str = Field(
        description="'target_precision', 'max_f1' (target unreachable), 'max_flag_rate' (the cap raised "
        "it) or 'default'"
    )
    target_precision: float | None = None
    max_flag_rate: float | None = Field(
        default=None, description="cap on the share of validation negatives flagged (None: no cap)"
    )
    precision: float | None = Field(default=None, description="validation precision at the threshold")
    recall: float | None = Field(default=None, description="validation recall at the threshold")
    flagged_negatives: float | None = Field(
        default=None, description="share of validation negatives flagged at the threshold"
    )


class _Record(BaseModel):
    """A record another component writes into ``adrisk.json`` (the ONNX export and its gate): the fields
    ``model/`` reads are declared and typed; further measurements are kept as written. Serialised with
    the fields it was given only, so a file round-trips unchanged."""

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _given_fields(self, handler: Any) -> Any:
        data = handler(self)
        if not isinstance(self, BaseModel) or not isinstance(data, dict):  # a plain dict set by model_copy
            return data
        given = set(self.model_fields_set) | set(self.model_extra or {})
        return {k: v for k, v in data.items() if k in given}


class StudentInfo(_Record):
    """The distilled student a variant runs (``training/experiments/distill.py``)."""

    num_hidden_layers: int | None = None
    teacher_layers: list[int] | None = None
    weights_sha256: str | None = None


class RuntimeVariant(_Record):
    """One ONNX Runtime variant under ``<dir>/onnx/`` and what its accuracy gate measured."""

    file: str = Field(description="file name under onnx/")
    name: str | None = None
    sha256: str | None = Field(default=None, description="checked at load when present")
    precision: str = Field(
        default="", description="e.g. 'fp32', 'int8-dynamic, per-row', 'int8-static', 'int8-per-token'"
    )
    per_row: bool | None = Field(default=None, description="run each text alone (``runs_per_row``)")
    opset: int | None = None
    source_weights_sha256: str | None = Field(
        default=None, description="the model.safetensors it was exported from; checked at load"
    )
    exported_with: dict[str, str] = Field(default_factory=dict, description="library versions")
    student: StudentInfo | None = Field(default=None, description="set when it runs the distilled student")
    passed: bool = Field(
        default=False, description="passed the gate (only passing variants become the default)"
    )
    texts_per_s: float | None = None
    ap: dict[str, float | None] = Field(default_factory=dict)
    ap_delta: dict[str, float | None] = Field(default_factory=dict, description="variant minus torch fp32")
    ap_delta_interval: dict[str, list[float] | None] = Field(default_factory=dict)
    decision_delta: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    decision_max_abs: float | None = None
    decision_passed: bool | None = None
    max_abs_prob_diff: float | None = None
    batch_invariance_max_abs: float | None = None
    fp32_groups: list[str] | None = Field(default=None, description="mixed int8: the groups kept fp32")
    sensitivity: dict[str, float] | None = None

    @property
    def runs_per_row(self) -> bool:
        """Whether the runtime scores each text alone: ``per_row``, else (entries written before it was
        recorded) a dynamically quantised int8 precision."""
        if self.per_row is not None:
            return self.per_row
        return self.precision == "int8" or self.precision.startswith("int8-dynamic")


class TorchReference(_Record):
    """The fp32 torch reference the variants were gated against."""

    texts_per_s: float
    ap: dict[str, float | None] = Field(default_factory=dict)


class GateRecord(_Record):
    """The gate's settings when the variants were gated (``training.onnx_export``)."""

    metric: str = "ap"
    tolerance: float | None = None
    confidence: float | None = None
    resamples: int | None = None
    reference: str | None = None
    n_texts: int | None = None
    num_threads: int | None = None
    batch_size: int | None = None
    max_tokens: int | None = None
    batch_invariance_tolerance: float | None = None
    decision_tolerance: float | None = None


class Runtimes(_Record):
    """``adrisk.json`` ``runtimes``: the ONNX variants, the torch reference, the gate, and the runtime
    ``Predictor.load(runtime="auto")`` serves (``default``: the fastest that passed, else torch)."""

    default: str = "torch"
    variants: dict[str, RuntimeVariant] = Field(default_factory=dict)
    torch: TorchReference | None = None
    gate: GateRecord | None = None


class BlendRecord(BaseModel):
    """``adrisk.json`` ``blend``: the TF-IDF blend's files (``model/blend.py``) with their sha256, and
    the labels it is used for."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(description="file name -> sha256")
    labels: list[str] = Field(default_factory=list)


class ArtifactMeta(BaseModel):
    """Contents of ``adrisk.json``.

    ``temperatures`` has one entry per label (multi_class: one shared value repeated), applied as
    ``sigmoid(logit / T)`` (or ``softmax(logits / T)``) before thresholds.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = "risky-ads"
    label_schema: LabelSchema
    thresholds: dict[str, float]
    threshold_info: dict[str, ThresholdInfo] = Field(default_factory=dict)
    temperatures: list[float]
    max_length: int = Field(gt=2, le=8192)
    normalization: str = NORMALIZATION_VERSION
    base_model: str = ""
    base_model_sha256: str | None = None
    weights_sha256: str | None = None
    data_fingerprint: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    runtimes: Runtimes = Field(
        default_factory=Runtimes,
        description="optional non-torch runtimes (ONNX variants) and their accuracy gate",
    )
    blend: BlendRecord | None = Field(
        default=None, description="optional TF-IDF blend (model/blend.py); written as {} when absent"
    )
    identity_mask: IdentityMask | None = Field(
        default=None,
        description="identity terms masked in training and so at inference (model/identity_mask.py); "
        "absent: texts are served unchanged",
    )

    @field_validator("blend", mode="before")
    @classmethod
    def _no_blend(cls, value: Any) -> Any:
        return None if value == {} else value

    @field_serializer("blend")
    def _blend_or_empty(self, value: BlendRecord | None) -> dict[str, Any]:
        return {} if value is None else value.model_dump()

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data: Any) -> Any:
        """Read files written by earlier versions. ``tail_tokens`` (head+tail windows, removed): 0, the
        head only, is how every model is served now and is dropped; a model trained with a tail is
        refused, as it would be served other tokens than it learnt from. A runtime variant with its own
        ``calibration`` (per-variant calibration, removed) is dropped, and the default falls back to
        torch if it was one: served with the model's calibration it would flag other texts."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        tail = data.pop("tail_tokens", 0)
        if tail:
            raise ValueError(
                f"tail_tokens={tail}: this model was trained with head+tail windows, which this "
                "adrisk no longer serves (docs/generalisation.md §7); retrain it"
            )
        runtimes = data.get("runtimes")
        if isinstance(runtimes, dict) and isinstance(runtimes.get("variants"), dict):
            variants = runtimes["variants"]
            own = sorted(n for n, v in variants.items() if isinstance(v, dict) and v.get("calibration"))
            if own:
                logger.warning("runtime variants %s need their own calibration (removed); not served", own)
                runtimes = runtimes | {"variants": {n: v for n, v in variants.items() if n not in own}}
                if runtimes.get("default") in own:
                    runtimes["default"] = "torch"
                data["runtimes"] = runtimes
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ArtifactMeta:
        labels = list(self.label_schema.labels)
        if sorted(self.thresholds) != sorted(labels):
            raise ValueError(f"thresholds {sorted(self.thresholds)} do not match labels {labels}")
        if len(self.temperatures) != len(labels):
            raise ValueError(f"{len(self.temperatures)} temperatures for {len(labels)} labels")
        if not all(math.isfinite(t) and t > 0 for t in self.temperatures):
            raise ValueError("temperatures must be finite and positive")
        bad = sorted(n for n, t in self.thresholds.items() if not (math.isfinite(t) and 0.0 <= t <= 1.0))
        if bad:
            raise ValueError(f"thresholds of {bad} must be probabilities in [0, 1]")
        return self

    @property
    def labels(self) -> tuple[str, ...]:
        return self.label_schema.labels

    def threshold_vector(self) -> list[float]:
        """Thresholds in label order."""
        return [self.thresholds[n] for n in self.labels]


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status`` on Linux; elsewhere set
    and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666`` less the umask (0644 under 022)."""
    return 0o666 & ~current_umask()


def publish_modes(directory: str | os.PathLike[str]) -> None:
    """Give every file under ``directory`` at least the umask's mode (``umask_file_mode``) and every
    directory at least ``0o777`` less the umask.

    Libraries that write through ``mkstemp`` (transformers' ``save_pretrained`` writes
    ``model.safetensors`` 0600) would otherwise leave a model only its writer can read, and MLflow
    copies that mode into mlruns and every download.
    """
    file_bits, dir_bits = umask_file_mode(), 0o777 & ~current_umask()
    for root, dirs, files in os.walk(directory):
        for name, bits in [(n, dir_bits) for n in dirs] + [(n, file_bits) for n in files]:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and (st.st_mode | bits) != st.st_mode:
                os.chmod(p, stat.S_IMODE(st.st_mode) | bits)
    st = os.stat(directory)
    if (st.st_mode | dir_bits) != st.st_mode:
        os.chmod(directory, stat.S_IMODE(st.st_mode) | dir_bits)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (readers never see half a file).

    The file gets the umask's mode (0644 under umask 022), as a plain ``open`` would, not
    ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_meta(directory: str | os.PathLike[str], meta: ArtifactMeta) -> Path:
    """Write ``adrisk.json`` into ``directory``; fills ``weights_sha256`` from the weights file.

    Saving the metadata completes an artifact: every file in it is given the umask's mode too
    (``publish_modes``), whatever wrote it.

    Raises:
        pydantic.ValidationError: ``meta`` (updated without validation) does not validate.
    """
    directory = Path(directory)
    publish_modes(directory)
    # validated again: a model_copy(update=...) (a dict for ``runtimes``, say) is not, and what is
    # written must load
    meta = ArtifactMeta.model_validate(meta.model_dump(mode="json", warnings=False))
    weights = directory / WEIGHTS_FILE
    if weights.exists():
        meta = meta.model_copy(update={"weights_sha256": sha256_file(weights)})
    out = directory / META_FILE
    write_json_atomic(out, meta.model_dump(mode="json"))
    return out


def load_meta(directory: str | os.PathLike[str]) -> ArtifactMeta:
    """Read and validate ``adrisk.json``.

    Raises:
        ArtifactError: the directory or ``adrisk.json`` is missing, or the file is invalid.
    """
    directory = Path(directory)
    path = directory / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an adrisk model directory: {META_FILE} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        meta = ArtifactMeta.model_validate(data)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"invalid {path}: {e}") from e
    if meta.format_version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {meta.format_version}; this adrisk reads up to {FORMAT_VERSION}"
        )
    return meta


def verify_weights(directory: str | os.PathLike[str], meta: ArtifactMeta) -> None:
    """Check ``model.safetensors`` against ``meta.weights_sha256``.

    Raises:
        ArtifactError: weights missing or their sha256 differs from the recorded one.
    """
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights} not found")
    if meta.weights_sha256 and sha256_file(weights) != meta.weights_sha256:
        raise ArtifactError(f"{weights}: sha256 does not match adrisk.json (corrupted or replaced weights)")


def save_artifact(directory: str | os.PathLike[str], model: Any, tokenizer: Any, meta: ArtifactMeta) -> Path:
    """Write a complete model artifact: the Hugging Face model (``config.json``, ``model.safetensors``,
    with ``id2label`` from ``meta``'s labels), its tokenizer, and ``adrisk.json`` last (with the
    weights' sha256), so a directory holding ``adrisk.json`` always holds the rest. The one ``save``
    that training, tests and benchmarks use.

    Args:
        model: a ``transformers`` ``PreTrainedModel`` (saved with safetensors; never a pickle).
        tokenizer: the matching ``PreTrainedTokenizerBase``.

    Raises:
        ArtifactError: the model's label count differs from ``meta``'s label schema.
    """
    directory = Path(directory)
    n = getattr(getattr(model, "config", None), "num_labels", None)
    if n is not None and n != len(meta.labels):
        raise ArtifactError(f"model has {n} outputs but the label schema has {len(meta.labels)} labels")
    model.config.id2label = dict(enumerate(meta.labels))
    model.config.label2id = {name: i for i, name in enumerate(meta.labels)}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).unlink(missing_ok=True)  # a half-written directory is not a model
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return save_meta(directory, meta)
