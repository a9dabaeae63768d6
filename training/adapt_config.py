"""The ``adapt:`` config section: unsupervised adaptation to a new site's unlabelled ads
(``training/adapt.py``). Kept apart from ``training/config.py`` so that the adaptation code can use
the loop (which imports the config) without an import circle."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MlmConfig(_Strict):
    """Continued masked-language-model pretraining of the encoder on the unlabelled texts, before
    fine-tuning (task-adaptive pretraining, Gururangan et al. 2020, "Don't Stop Pretraining")."""

    enabled: bool = True
    epochs: int = Field(3, ge=1, description="passes over the unlabelled texts")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0, description="encoder learning rate (the fresh MLM head: 10x)")
    mask_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens masked (BERT's 15%)")
    head_warmup_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of the steps in which only the fresh MLM head learns (the encoder frozen), "
        "so its first random gradients never reach the pretrained encoder",
    )


class SelfTrainingConfig(_Strict):
    """Self-training on the unlabelled texts with the model's own calibrated confident predictions
    (noisy student, Xie et al. 2020; class-balanced selection, Zou et al. 2018)."""

    enabled: bool = True
    rounds: int = Field(1, ge=1, description="teacher -> student rounds (each a full fine-tune)")
    pseudo_precision: float = Field(
        0.98,
        gt=0,
        le=1,
        description="a pseudo-positive needs a calibrated probability at which validation rows (and "
        "their short views) reach this precision",
    )
    max_missed_positives: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="a pseudo-negative needs a probability below which at most this share of the "
        "validation positives (and their short views) fall",
    )
    class_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="class balance: of the unlabelled rows the model assigns to a class (flagged / not "
        "flagged), at most this share, most confident first, become pseudo-labelled rows",
    )
    max_rows: int = Field(1000, ge=1, description="cap on pseudo-labelled rows per round")
    student: Literal["continue", "fresh"] = Field(
        "continue",
        description="continue: the teacher's weights, fine-tuned one epoch on the pseudo-labelled rows plus "
        "a replay sample of training rows (a fraction of a full fine-tune's cost); fresh: a new model from "
        "the adapted encoder on all training rows plus the pseudo-labelled ones (noisy student; a second "
        "full fine-tune)",
    )
    replay_ratio: int = Field(4, ge=0, description="continue: training rows replayed per pseudo-labelled row")
    learning_rate_scale: float = Field(
        0.5, gt=0, description="continue: the student's learning rate, times train.learning_rate"
    )
    keep_tolerance: float = Field(
        0.005,
        ge=0,
        description="the student replaces the teacher unless a label's validation AP, or its AP on the "
        "validation rows' short views, falls more than this below the teacher's",
    )
    distill_unsure: float = Field(
        1.0,
        ge=0,
        description="weight of a distillation loss on the entries a pseudo-labelled row leaves out (its "
        "unsure labels): there the student matches the teacher's probability, so a label with few or no "
        "pseudo-labels does not drift through the shared encoder (learning without forgetting, Li and "
        "Hoiem 2016); 0 leaves those entries out of the loss",
    )


class AdaptConfig(_Strict):
    """Adaptation to a new site: active when ``unlabelled_files`` names at least one file."""

    unlabelled_files: list[str] = Field(
        default_factory=list,
        description="JSONL / CSV / Parquet files of the new site's unlabelled ads (never labels)",
    )
    text_column: str = "text"
    mlm: MlmConfig = Field(default_factory=MlmConfig)
    self_training: SelfTrainingConfig = Field(default_factory=SelfTrainingConfig)

    @property
    def active(self) -> bool:
        return bool(self.unlabelled_files) and (self.mlm.enabled or self.self_training.enabled)
