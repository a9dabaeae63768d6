"""The fine-tuning loop (our own, not the HF ``Trainer``: see README "Why our own loop").

One read top to bottom: length-grouped batches -> forward -> weighted loss -> backward -> clip ->
AdamW step -> linear warm-up/decay; validation macro average precision each epoch; early stopping;
best weights kept; a checkpoint every N steps so a killed run resumes exactly where it stopped
(model, optimizer, scheduler, torch RNG and position in the epoch's deterministic batch order).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score
from tqdm.auto import tqdm

from model.encoding import TextEncoder, length_sorted_batches
from model.schema import LabelSchema, ProblemType
from training.config import TrainConfig

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed (missing, or written under a different config)."""


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    global_step: int = 0
    bf16: bool = False  # whether forward/backward ran under bf16 autocast (train.bf16 and the CPU)


class FitData(NamedTuple):
    """``fit``'s data arguments in its order: ``fit(model, *data, cfg, ...)``."""

    encoder: TextEncoder
    train_ids: list[list[int]]
    train_y: np.ndarray
    val_ids: list[list[int]]
    val_y: np.ndarray
    schema: LabelSchema


def epoch_batches(lengths: np.ndarray, batch_size: int, group_size: int, seed: int) -> list[np.ndarray]:
    """Deterministic batch order for one epoch: shuffle, sort by length inside mega-batches of
    ``batch_size * group_size`` rows (little padding), then shuffle the batches.
    Same (lengths, seed) -> same batches, which is what makes mid-epoch resume exact."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    chunk = batch_size * group_size
    batches = []
    for s in range(0, len(perm), chunk):
        idx = perm[s : s + chunk]
        batches += [idx[b] for b in length_sorted_batches(lengths[idx], batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def loss_function(schema: LabelSchema, targets: np.ndarray, cfg: TrainConfig) -> torch.nn.Module:
    """BCE-with-logits (multi_label / binary) with per-label ``pos_weight = neg/pos`` capped at
    ``max_pos_weight``; cross-entropy with balanced class weights (capped) for multi_class."""
    pos = targets.sum(axis=0)
    if schema.problem_type is ProblemType.MULTI_CLASS:
        w = None
        if cfg.class_weighting:
            w = len(targets) / (len(pos) * np.maximum(pos, 1))
            w = torch.tensor(np.minimum(w, cfg.max_pos_weight), dtype=torch.float32)
        return torch.nn.CrossEntropyLoss(weight=w)
    pw = None
    if cfg.class_weighting:
        neg = len(targets) - pos
        pw = torch.tensor(np.clip(neg / np.maximum(pos, 1), 1.0, cfg.max_pos_weight), dtype=torch.float32)
    return torch.nn.BCEWithLogitsLoss(pos_weight=pw)


def _loss_targets(schema: LabelSchema, y: np.ndarray) -> torch.Tensor:
    if schema.problem_type is ProblemType.MULTI_CLASS:
        return torch.from_numpy(y.argmax(axis=1)).long()
    return torch.from_numpy(y).float()


@torch.inference_mode()
def predict_logits(model, encoder: TextEncoder, ids: list[list[int]], batch_size: int) -> np.ndarray:
    """(n, L) float32 logits for tokenised rows, length-sorted batches, eval mode."""
    was_training = model.training
    model.eval()
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    out = None
    for idx in length_sorted_batches(lengths, batch_size):
        x, m = encoder.pad([ids[i] for i in idx])
        logits = (
            model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m)).logits.float().numpy()
        )
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    model.train(was_training)
    return out


def macro_ap(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean average precision over labels that have both classes (rank-based: no calibration needed)."""
    aps = [
        average_precision_score(targets[:, j], logits[:, j])
        for j in range(targets.shape[1])
        if 0 < targets[:, j].sum() < len(targets)
    ]
    return float(np.mean(aps)) if aps else float("nan")


HEAD_PREFIXES = ("classifier", "bert.pooler", "pooler")  # parameters not in the base checkpoint's encoder


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm; the new head (pooler, classifier) at
    ``learning_rate * head_learning_rate_multiplier``."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        head = name.startswith(HEAD_PREFIXES)
        decay = p.ndim >= 2 and "LayerNorm" not in name
        groups.setdefault((head, decay), []).append(p)
    return [
        {
            "params": ps,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr": cfg.learning_rate * (cfg.head_learning_rate_multiplier if head else 1.0),
        }
        for (head, decay), ps in sorted(groups.items())
    ]


def bf16_supported() -> bool:
    """True where oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` with the fused kernel (one multi-tensor kernel per step, as the HF
    Trainer's default ``adamw_torch_fused``) where torch has it for the parameters' device and dtype,
    else ``foreach`` (multi-tensor), never the per-tensor for-loop (its step measured 4-11x the fused
    one's on MiniLM-L6: issue 14, ``bench/train_step_profile.py``). Same update rule (Loshchilov &
    Hutter 2019), so results agree to rounding. A checkpoint's saved group options (``fused``,
    ``foreach``) win on ``--resume``."""
    groups = param_groups(model, cfg)
    try:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)
    except (RuntimeError, TypeError):  # a torch or device without the fused CPU kernel
        return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.learning_rate, foreach=True)


def freeze_encoder(model, frozen: bool) -> None:
    """Stop (``frozen``) or restart gradients for every parameter outside the head: the linear-probe
    phase of LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution"). AdamW leaves parameters without a gradient untouched, decay included."""
    for name, p in model.named_parameters():
        if not name.startswith(HEAD_PREFIXES):
            p.requires_grad_(not frozen)


def _atomic_torch_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(
    model,
    encoder: TextEncoder,
    train_ids: list[list[int]],
    train_y: np.ndarray,
    val_ids: list[list[int]],
    val_y: np.ndarray,
    schema: LabelSchema,
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path,
    config_digest: str,
    resume: bool = False,
    on_metrics: Callable[[dict, int], None] | None = None,
    group_ids: np.ndarray | None = None,
    group_dro_eta: float = 0.01,
    teacher_logits: np.ndarray | None = None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 2.0,
    ordinal: np.ndarray | None = None,
    ordinal_weight: float = 0.0,
) -> FitResult:
    """Fine-tune ``model`` in place and load the best validation weights into it at the end.

    Args:
        train_ids / val_ids: token id lists (from ``TextEncoder.encode``); train_y / val_y: (n, L) 0/1.
        checkpoint_dir: where ``last.pt`` and ``best.safetensors`` live.
        config_digest: written into checkpoints; resuming under another config is refused.
        resume: continue from ``checkpoint_dir/last.pt``.
        on_metrics: called with (metrics dict, step) for per-step loss and per-epoch validation.
        group_ids: (n,) int group of each train row: the loss becomes group DRO's
            (``training.domain.GroupDRO``, Sagawa et al. 2020) with step size ``group_dro_eta``.
        teacher_logits: (n, L) a teacher's logits for the train rows: knowledge distillation, the
            loss becomes ``(1 - distill_alpha) * loss + distill_alpha * distillation_loss`` at
            temperature ``distill_temperature`` (``training.distill``; Hinton et al. 2015).
        ordinal: (n,) float ordinal value of each train row (NaN: none), learnt by a training-only
            ordinal head (``training.ordinal``) whose loss is added times ``ordinal_weight`` (> 0).

    Raises:
        CheckpointError: ``resume`` without a usable checkpoint.
        ValueError: ``teacher_logits`` together with ``group_ids``, or not one row per train row;
            ``ordinal`` not one value per train row, or not non-negative integers.
    """
    if teacher_logits is not None:
        if group_ids is not None:
            raise ValueError("distillation and group DRO cannot be combined in one fit")
        if len(teacher_logits) != len(train_ids):
            raise ValueError(f"{len(teacher_logits)} teacher logit rows for {len(train_ids)} train rows")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    lengths = np.fromiter((len(x) for x in train_ids), dtype=np.int64, count=len(train_ids))
    steps_per_epoch = len(epoch_batches(lengths, cfg.batch_size, cfg.length_group_size, seed))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = make_optimizer(model, cfg)
    ordinal_head = None
    if ordinal is not None and ordinal_weight > 0:
        from training.ordinal import OrdinalHead, ordinal_levels

        if len(ordinal) != len(train_ids):
            raise ValueError(f"{len(ordinal)} ordinal values for {len(train_ids)} train rows")
        ordinal_head = OrdinalHead(model.config.hidden_size, ordinal_levels(ordinal))
        optimizer.add_param_group(  # a new head: the classifier head's learning rate, no decay
            {
                "params": list(ordinal_head.parameters()),
                "lr": cfg.learning_rate * cfg.head_learning_rate_multiplier,
                "weight_decay": 0.0,
            }
        )
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps
    )
    loss_fn = loss_function(schema, train_y, cfg)
    dro = None
    if group_ids is not None:
        from training.domain import GroupDRO

        dro = GroupDRO(int(np.max(group_ids)) + 1, group_dro_eta)
        loss_fn.reduction = "none"  # per-row losses, combined by group DRO

    state = {
        "epoch": 0,
        "batch": 0,
        "global_step": 0,
        "best_score": -1.0,
        "best_epoch": -1,
        "bad_epochs": 0,
        "history": [],
    }
    last = checkpoint_dir / LAST_CHECKPOINT
    if resume:
        if not last.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {last}")
        try:
            ck = torch.load(last, weights_only=True)
            if not isinstance(ck, dict) or "config_digest" not in ck:
                raise ValueError("not an adrisk checkpoint")
        except Exception as e:  # truncated / garbage file: torch's own message misleads (weights_only=False)
            raise CheckpointError(
                f"--resume: {last} is unreadable ({type(e).__name__}); it is corrupt or "
                f"truncated: delete {checkpoint_dir} to start over"
            ) from None
        if ck["config_digest"] != config_digest:
            raise CheckpointError(f"--resume: {last} was written under a different config")
        model.load_state_dict(ck["model"])
        if ordinal_head is not None:
            try:
                ordinal_head.load_state_dict(ck["ordinal_head"])
            except (KeyError, RuntimeError):
                raise CheckpointError(
                    f"--resume: {last} has no ordinal head of {ordinal_head.levels} levels "
                    f"(the data's ordinal column changed): delete {checkpoint_dir} to start over"
                ) from None
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
        if dro is not None and state.get("dro_q"):
            dro.load_state(state["dro_q"])
        logger.info(
            "resumed at epoch %d, batch %d (step %d)", state["epoch"], state["batch"], state["global_step"]
        )
    else:
        torch.manual_seed(seed)

    def save_checkpoint() -> None:
        if dro is not None:
            state["dro_q"] = dro.state()
        _atomic_torch_save(
            {
                "model": model.state_dict(),
                **({"ordinal_head": ordinal_head.state_dict()} if ordinal_head is not None else {}),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
                "config_digest": config_digest,
            },
            last,
        )

    bf16 = cfg.bf16 is not False and bf16_supported()
    if cfg.bf16 is True and not bf16:
        logger.warning("train.bf16: this CPU has no bfloat16 support (AVX512-BF16/AMX); training in fp32")
    logger.info("forward/backward in %s (train.bf16=%s)", "bf16 autocast" if bf16 else "fp32", cfg.bf16)
    model.train()
    bar = tqdm(
        total=total_steps,
        initial=state["global_step"],
        desc="distil" if teacher_logits is not None else "fine-tune",
        unit="step",
        mininterval=2.0 if sys.stderr.isatty() else 60.0,
        dynamic_ncols=True,
    )  # a log file gets a line a minute
    clipped = list(model.parameters())
    if ordinal_head is not None:
        ordinal_head.attach(model)
        clipped += list(ordinal_head.parameters())
    try:
        stopped_early = False
        freeze_encoder(model, state["global_step"] < cfg.linear_probe_steps)
        ema = None
        ordinal_ema = None  # the auxiliary term alone, logged apart so train.loss stays comparable
        while (
            state["epoch"] < cfg.epochs
            and state["global_step"] < total_steps
            and state["bad_epochs"] < cfg.early_stopping_patience
        ):
            batches = epoch_batches(lengths, cfg.batch_size, cfg.length_group_size, seed + state["epoch"])
            for b in range(state["batch"], len(batches)):
                idx = batches[b]
                x, m = encoder.pad([train_ids[i] for i in idx])  # (B, T) int64
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # logits: (B, L)
                    logits = model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m)).logits
                loss = loss_fn(logits.float(), _loss_targets(schema, train_y[idx]))
                if teacher_logits is not None:
                    from training.distill import distillation_loss

                    soft = distillation_loss(
                        logits.float(),
                        torch.from_numpy(teacher_logits[idx]),
                        distill_temperature,
                        schema.problem_type is ProblemType.MULTI_CLASS,
                    )
                    loss = (1.0 - distill_alpha) * loss + distill_alpha * soft
                if dro is not None:
                    loss = dro.loss(
                        loss.mean(dim=1) if loss.ndim == 2 else loss, torch.from_numpy(group_ids[idx])
                    )
                aux = None
                if ordinal_head is not None:
                    aux = ordinal_head.loss(ordinal[idx])
                    ordinal_ema = (
                        aux.item() if ordinal_ema is None else 0.95 * ordinal_ema + 0.05 * aux.item()
                    )
                    aux = ordinal_weight * aux
                (loss if aux is None else loss + aux).backward()
                torch.nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                state["batch"] = b + 1
                if state["global_step"] == cfg.linear_probe_steps:  # LP-FT: the probe phase ends
                    freeze_encoder(model, False)
                ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
                bar.update(1)
                bar.set_postfix(  # refresh=False: the bar's own mininterval decides when a line is written
                    epoch=state["epoch"] + 1,
                    loss=f"{ema:.4f}",
                    lr=f"{scheduler.get_last_lr()[0]:.2e}",
                    refresh=False,
                )
                if on_metrics and state["global_step"] % 50 == 0:
                    logged = {"train.loss": ema, "train.lr": scheduler.get_last_lr()[0]}
                    if ordinal_ema is not None:
                        logged["train.ordinal_loss"] = ordinal_ema
                    on_metrics(logged, state["global_step"])
                if state["global_step"] % cfg.checkpoint_every_steps == 0:
                    save_checkpoint()
                if state["global_step"] >= total_steps:
                    break
            # end of epoch (or of max_steps): validate, keep the best weights, maybe stop early
            score = macro_ap(predict_logits(model, encoder, val_ids, cfg.eval_batch_size), val_y)
            epoch_metrics = {
                "validation.macro_ap": score,
                "train.loss_ema": float(ema or 0.0),
                "epoch": state["epoch"] + 1,
            }
            state["history"].append(epoch_metrics)
            logger.info("epoch %d: validation macro AP %.4f", state["epoch"] + 1, score)
            if on_metrics:
                on_metrics({"epoch.validation.macro_ap": score}, state["epoch"] + 1)
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=state["epoch"] + 1, bad_epochs=0)
                save_file(
                    {k: v.contiguous() for k, v in model.state_dict().items()},
                    str(checkpoint_dir / BEST_WEIGHTS),
                )
            else:
                state["bad_epochs"] += 1
            state["epoch"] += 1
            state["batch"] = 0
            if state["bad_epochs"] >= cfg.early_stopping_patience:
                stopped_early = True
                logger.info("early stopping: no validation gain for %d epochs", state["bad_epochs"])
            save_checkpoint()
            if stopped_early:
                break
        bar.close()
    finally:
        freeze_encoder(model, False)
        if ordinal_head is not None:
            ordinal_head.detach()  # training-only: the served model is the classifier alone
    model.load_state_dict(load_file(str(checkpoint_dir / BEST_WEIGHTS)))
    model.eval()
    return FitResult(
        state["best_score"], state["best_epoch"], state["history"], stopped_early, state["global_step"], bf16
    )
