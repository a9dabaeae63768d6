"""Distillation (``distill.enabled``), an experiment: a shallower copy of the fine-tuned model,
trained to match its logits. Its student has not passed the runtime gate yet (docs/performance.md).

The student keeps the teacher's tokenizer, embeddings, pooler and classifier and a subset of its
transformer layers (``distill.layers``, default every other layer: 1, 3, 5 of MiniLM-L6's six), as
DistilBERT initialises from every other BERT layer (Sanh et al., "DistilBERT, a distilled version of
BERT", 2019; the layer choice of MiniLM, Wang et al. 2020, is another option). It is then trained by
``DistillationFineTuner``, the loop with its one extension point (``compute_loss``) overridden, on the
teacher's training rows with the loss

    (1 - alpha) * hard-label loss + alpha * T^2 * soft loss(student / T, teacher / T)

(Hinton et al., "Distilling the Knowledge in a Neural Network", 2015): the soft loss is BCE against
the teacher's sigmoid probabilities for multi-label/binary schemas, KL divergence against its softmax
for multi-class. The student is saved under ``<artifact>/student/`` and becomes ONNX runtime variants
(``student-onnx-fp32``, ``student-onnx-int8``) through ``training.onnx_export.add_onnx_variants``:
the same tokenizer, TF-IDF blend, calibration temperatures, thresholds and accuracy gate as the
teacher's own variants, so ``runtimes.default`` is a student only where the student passed the gate.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.runtimes import STUDENT_DIR
from model.schema import ProblemType
from training.config import Config
from training.loop import LAST_CHECKPOINT, FineTuner, FitData, FitResult, predict_logits

logger = logging.getLogger(__name__)

__all__ = [
    "STUDENT_DIR",
    "DistillationFineTuner",
    "add_student",
    "build_student",
    "check_layers",
    "distil_student",
    "distillation_loss",
]
_LAYER_KEY = re.compile(r"^(.*\.layer\.)(\d+)(\..*)$")


def build_student(teacher: Any, layers: Sequence[int]) -> Any:
    """A copy of ``teacher`` with only the transformer layers ``layers`` (teacher indices, in order).

    Args:
        teacher: a ``transformers`` encoder ``...ForSequenceClassification`` model whose config has
            ``num_hidden_layers`` and whose layer weights are named ``...layer.<i>...`` (BERT, RoBERTa,
            MiniLM, XLM-R, ELECTRA).
        layers: distinct teacher layer indices, ascending, each < ``num_hidden_layers``.

    Returns:
        A new model of the teacher's class with ``num_hidden_layers = len(layers)``; every weight
        copied from the teacher (student layer j = teacher layer ``layers[j]``), in the teacher's
        train/eval mode.

    Raises:
        ValueError: ``layers`` is empty, unsorted, repeats or is out of range, or the teacher's
            weights do not map onto the student (an architecture without ``layer.<i>`` names).
    """
    layers = check_layers(layers, int(teacher.config.num_hidden_layers))
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    config.adrisk_teacher_layers = layers  # saved in the student's config.json
    student = type(teacher)(config)
    new_index = {t: s for s, t in enumerate(layers)}
    state = {}
    mapped = 0
    for key, value in teacher.state_dict().items():
        m = _LAYER_KEY.match(key)
        if m and ".encoder." in f".{m.group(1)}":
            t = int(m.group(2))
            if t not in new_index:
                continue
            key = f"{m.group(1)}{new_index[t]}{m.group(3)}"
            mapped += 1
        state[key] = value.detach().clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if not mapped or missing or unexpected:  # no per-layer weights: e.g. ALBERT's shared layer
        raise ValueError(
            f"the teacher's weights do not map onto a {len(layers)}-layer student "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return student.train(teacher.training)


def check_layers(layers: Sequence[int], num_hidden_layers: int) -> list[int]:
    """Validate ``distill.layers`` against a teacher depth, before any training time is spent.

    Args:
        layers: teacher layer indices the student keeps.
        num_hidden_layers: the teacher's depth (its config's ``num_hidden_layers``).

    Returns:
        The indices as a list of ints.

    Raises:
        ValueError: empty, unsorted, repeated, or outside ``[0, num_hidden_layers)``.
    """
    n = int(num_hidden_layers)
    out = [int(i) for i in layers]
    if not out or out != sorted(set(out)) or out[0] < 0 or out[-1] >= n:
        raise ValueError(f"distill.layers must be distinct ascending indices in [0, {n}), got {out}")
    return out


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, multi_class: bool
) -> torch.Tensor:
    """Soft-target loss of Hinton et al. (2015), scaled by T^2 so its gradients match the hard loss's.

    Args:
        student_logits, teacher_logits: (B, L) float.
        temperature: T > 0; both logit sets are divided by it.
        multi_class: softmax KL divergence (batch mean) if True, else per-label BCE against the
            teacher's sigmoid probabilities (mean over B and L).

    Returns:
        A scalar tensor.
    """
    t = float(temperature)
    s, z = student_logits / t, teacher_logits / t
    if multi_class:
        loss = torch.nn.functional.kl_div(
            torch.log_softmax(s, dim=-1), torch.log_softmax(z, dim=-1), log_target=True, reduction="batchmean"
        )
    else:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s, torch.sigmoid(z))
    return loss * (t * t)


class DistillationFineTuner(FineTuner):
    """The fine-tuning loop with the distillation objective: ``compute_loss`` is
    ``(1 - alpha) * FineTuner.compute_loss + alpha * distillation_loss`` against the teacher's logits
    of the same rows (Hinton et al. 2015), as setfit's ``DistillationSetFitTrainer`` extends its trainer.

    Args:
        student, data, cfg, seed: as ``FineTuner``.
        teacher_logits: (n, L) the teacher's logits of ``data.train_ids``.
        alpha: weight of the soft loss in [0, 1]; ``temperature``: T > 0 for both logit sets.

    Raises:
        ValueError: ``teacher_logits`` is not one row per training row.
    """

    progress_label = "distil"

    def __init__(
        self,
        student: Any,
        data: FitData,
        cfg: Any,
        seed: int,
        teacher_logits: np.ndarray,
        alpha: float,
        temperature: float,
    ):
        if len(teacher_logits) != len(data.train_ids):
            raise ValueError(f"{len(teacher_logits)} teacher logit rows for {len(data.train_ids)} train rows")
        super().__init__(student, data, cfg, seed)
        self.teacher_logits = teacher_logits
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def compute_loss(self, logits: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        hard = super().compute_loss(logits, rows)
        soft = distillation_loss(
            logits.float(),
            torch.from_numpy(self.teacher_logits[rows]).to(logits.device),
            self.temperature,
            self.data.schema.problem_type is ProblemType.MULTI_CLASS,
        )
        return (1.0 - self.alpha) * hard + self.alpha * soft


def distil_student(
    teacher: Any,
    data: FitData,
    cfg: Config,
    checkpoint_dir: Path,
    *,
    resume: bool = False,
    on_metrics: Callable[[dict, int], object] | None = None,
) -> tuple[Any, FitResult]:
    """Build the student from ``teacher`` and train it on the teacher's logits (see module docstring).

    Args:
        teacher: the fine-tuned model (eval mode; not modified).
        data: the teacher's ``training.loop.FitData`` (encoder, training rows, validation rows on
            which the student's best epoch is chosen by macro AP, label schema).
        cfg: the run's ``training.config.Config`` (``seed``, ``train`` settings, ``distill`` options;
            its digest guards the student's checkpoints).
        checkpoint_dir: the student's own checkpoints (a killed run resumes the student there).

    Returns:
        (student model in eval mode, its ``training.loop.FitResult``).

    Raises:
        ValueError: bad ``distill.layers``. CheckpointError (``training.loop``): ``resume`` with a
            student checkpoint from another config or data.
    """
    d = cfg.distill
    student = build_student(teacher, d.layers)
    logger.info(
        "distilling a %d-layer student (teacher layers %s) from the %d-layer model",
        len(d.layers),
        list(d.layers),
        teacher.config.num_hidden_layers,
    )
    teacher_logits = predict_logits(
        teacher, data.encoder, data.train_ids, cfg.train.eval_batch_size
    )  # (n, L)
    train_cfg = cfg.train.model_copy(
        update={
            k: v for k, v in {"epochs": d.epochs, "learning_rate": d.learning_rate}.items() if v is not None
        }
    )
    tuner = DistillationFineTuner(student, data, train_cfg, cfg.seed, teacher_logits, d.alpha, d.temperature)
    result = tuner.fit(checkpoint_dir, cfg.digest(), resume=resume, on_metrics=on_metrics)
    return student, result


def add_student(
    teacher: Any,
    data: FitData,
    cfg: Config,
    artifact_dir: Path,
    checkpoint_dir: Path,
    *,
    resume: bool = False,
) -> FitResult:
    """The pipeline's distillation step: distil a student from the fine-tuned ``teacher``
    (``distil_student``), save it under ``<artifact_dir>/student/`` and log ``student.*`` metrics to the
    active MLflow run; ``training.onnx_export.add_onnx_variants`` then exports and gates it.

    Args:
        resume: continue the student from ``checkpoint_dir`` where a checkpoint is there (a killed
            run may have stopped before the student started).

    Returns:
        The student's ``FitResult``.
    """
    import mlflow

    student, result = distil_student(
        teacher,
        data,
        cfg,
        checkpoint_dir,
        resume=resume and (checkpoint_dir / LAST_CHECKPOINT).is_file(),
        on_metrics=lambda m, step: mlflow.log_metrics({f"student.{k}": v for k, v in m.items()}, step=step),
    )
    student.save_pretrained(str(artifact_dir / STUDENT_DIR), safe_serialization=True)
    mlflow.log_metrics(
        {"student.validation.macro_ap": result.best_score, "student.train.steps": result.global_step}
    )
    return result
