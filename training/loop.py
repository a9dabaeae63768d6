"""The fine-tuning loop (our own, not the HF ``Trainer``: see docs/training.md, "Why our own loop").

One read top to bottom: length-grouped batches -> forward -> loss -> backward -> clip -> AdamW step ->
linear warm-up/decay; validation macro average precision each epoch; early stopping; best weights
kept; a checkpoint every N steps so a killed run resumes exactly where it stopped (model, optimizer,
scheduler, torch RNG and position in the epoch's deterministic batch order).

Under ``torchrun`` (``WORLD_SIZE > 1``) the same loop runs data-parallel (``training/distributed.py``):
each rank trains on its share of every global batch through ``DistributedDataParallel``, validation
is sharded and gathered, and rank 0 alone writes checkpoints. On CUDA (one GPU per process, or the
one GPU of a single process) batches come from pinned memory and forward/backward run under bf16
autocast (fp16 with a gradient scaler where the GPU has no bf16); the model returns to the CPU after
the loop.

``FineTuner.compute_loss`` is the loop's one extension point, as in the HF ``Trainer``: a subclass
that changes the objective (``training.experiments.distill.DistillationFineTuner``) overrides it and
nothing else.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score
from tqdm.auto import tqdm

from model.encoding import TextEncoder, length_sorted_batches
from model.schema import LabelSchema, ProblemType
from training import distributed
from training.config import TrainConfig
from training.distributed import Dist

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
    world_size: int = 1  # processes that trained (torchrun); the global batch is train.batch_size


class FitData(NamedTuple):
    """What the loop trains on: the encoder (for padding), tokenised train rows (``TextEncoder.encode``
    ids) with (n, L) 0/1 targets, the validation rows the best epoch is chosen on, and the label schema."""

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
        pw = torch.from_numpy(pos_weight(pos, len(targets) - pos, cfg))
    return torch.nn.BCEWithLogitsLoss(pos_weight=pw)


def pos_weight(pos: np.ndarray, neg: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """(L,) float32 BCE ``pos_weight``: ``neg/pos`` per label from (L,) counts, clipped to
    [1, ``cfg.max_pos_weight``]."""
    return np.clip(neg / np.maximum(pos, 1), 1.0, cfg.max_pos_weight).astype(np.float32)


def _loss_targets(schema: LabelSchema, y: np.ndarray) -> torch.Tensor:
    if schema.problem_type is ProblemType.MULTI_CLASS:
        return torch.from_numpy(y.argmax(axis=1)).long()
    return torch.from_numpy(y).float()


@torch.inference_mode()
def predict_logits(model, encoder: TextEncoder, ids: list[list[int]], batch_size: int) -> np.ndarray:
    """(n, L) float32 logits for tokenised rows, length-sorted batches, eval mode (on the model's device)."""
    was_training = model.training
    model.eval()
    dev = getattr(model, "device", None)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    for idx in length_sorted_batches(lengths, batch_size):
        x, m = encoder.pad([ids[i] for i in idx])
        xt, mt = torch.from_numpy(x), torch.from_numpy(m)
        if dev is not None and dev.type != "cpu":
            xt, mt = xt.to(dev), mt.to(dev)
        out[idx] = model(input_ids=xt, attention_mask=mt).logits.float().cpu().numpy()
    model.train(was_training)
    return out


def label_aps(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(L,) average precision per label of (n, L) scores against (n, L) 0/1 targets (scikit-learn);
    nan where a label lacks a class (rank-based: logits or probabilities give the same)."""
    return np.array(
        [
            average_precision_score(targets[:, j], logits[:, j])
            if 0 < targets[:, j].sum() < len(targets)
            else np.nan
            for j in range(targets.shape[1])
        ]
    )


def macro_ap(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean average precision over labels that have both classes (rank-based: no calibration needed)."""
    aps = label_aps(logits, targets)
    aps = aps[~np.isnan(aps)]
    return float(np.mean(aps)) if len(aps) else float("nan")


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
    else ``foreach`` (multi-tensor), never the per-tensor for-loop (several times slower per step:
    docs/performance.md). Same update rule (Loshchilov & Hutter 2019), so results agree to rounding.
    A checkpoint's saved group options (``fused``, ``foreach``) win on ``--resume``."""
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


def _new_state() -> dict[str, Any]:
    return {
        "epoch": 0,
        "batch": 0,
        "global_step": 0,
        "best_score": -1.0,
        "best_epoch": -1,
        "bad_epochs": 0,
        "history": [],
    }


def _read_checkpoint(last: Path, config_digest: str) -> dict[str, Any]:
    """The checkpoint at ``last``, checked to be adrisk's and written under ``config_digest``.

    Raises:
        CheckpointError: missing, unreadable (corrupt or truncated) or written under another config.
    """
    if not last.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {last}")
    try:
        ck = torch.load(last, weights_only=True, map_location="cpu")
        if not isinstance(ck, dict) or "config_digest" not in ck:
            raise ValueError("not an adrisk checkpoint")
    except Exception as e:  # truncated / garbage file: torch's own message misleads (weights_only=False)
        raise CheckpointError(
            f"--resume: {last} is unreadable ({type(e).__name__}); it is corrupt or "
            f"truncated: delete {last.parent} to start over"
        ) from None
    if ck["config_digest"] != config_digest:
        raise CheckpointError(f"--resume: {last} was written under a different config")
    return ck


def training_device(d: Dist) -> str:
    """Where the loop trains: the rank's GPU under NCCL, else the GPU when CUDA is present, else the CPU."""
    if d.active:
        return d.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _autocast_dtype(cfg: TrainConfig, device: str) -> torch.dtype | None:
    """The autocast dtype of forward/backward (None: fp32). CPU: bf16 per ``_use_bf16``. CUDA: unless
    ``train.bf16`` is false, bf16 where the GPU has it, else fp16 (with a gradient scaler)."""
    if not device.startswith("cuda"):
        return torch.bfloat16 if _use_bf16(cfg) else None
    if cfg.bf16 is False:
        return None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    logger.info("forward/backward in %s autocast on %s", dtype, device)
    return dtype


def _use_bf16(cfg: TrainConfig) -> bool:
    """Whether forward/backward run under bf16 autocast: ``train.bf16`` and what this CPU supports."""
    bf16 = cfg.bf16 is not False and bf16_supported()
    if cfg.bf16 is True and not bf16:
        logger.warning("train.bf16: this CPU has no bfloat16 support (AVX512-BF16/AMX); training in fp32")
    logger.info("forward/backward in %s (train.bf16=%s)", "bf16 autocast" if bf16 else "fp32", cfg.bf16)
    return bf16


class FineTuner:
    """Fine-tune one model on one ``FitData`` (see module docstring).

    Args:
        model: a ``transformers`` ``...ForSequenceClassification`` model, fine-tuned in place.
        data: the encoder, tokenised train and validation rows ((n, L) 0/1 targets) and label schema.
        cfg: the ``train`` section of the config.
        seed: seeds torch and the per-epoch batch order (epoch ``e`` uses ``seed + e``).

    Subclasses override ``compute_loss`` (and may set ``progress_label``); nothing else.
    """

    progress_label = "fine-tune"

    def __init__(self, model: Any, data: FitData, cfg: TrainConfig, seed: int):
        self.model = model
        self.data = data
        self.cfg = cfg
        self.seed = seed
        self.loss_fn = loss_function(data.schema, data.train_y, cfg)

    def compute_loss(self, logits: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """The scalar loss of one batch (the mean over its rows: under torchrun the loop weights each
        rank's loss by its share of the global batch).

        Args:
            logits: (B, L) the model's logits for the batch (bf16 under autocast; on the training device).
            rows: (B,) int indices of the batch's rows in ``data.train_ids`` / ``data.train_y``.

        Returns:
            A scalar tensor; the loop backpropagates it and logs its moving average as ``train.loss``.
        """
        y = _loss_targets(self.data.schema, self.data.train_y[rows]).to(logits.device)
        return self.loss_fn(logits.float(), y)

    def fit(
        self,
        checkpoint_dir: Path,
        config_digest: str,
        *,
        resume: bool = False,
        on_metrics: Callable[[dict, int], object] | None = None,
        dist: Dist | None = None,
    ) -> FitResult:
        """Train, then load the best validation weights into the model (eval mode, on the CPU).

        Args:
            checkpoint_dir: where ``last.pt`` and ``best.safetensors`` live.
            config_digest: written into checkpoints; resuming under another config is refused.
            resume: continue from ``checkpoint_dir/last.pt``.
            on_metrics: called with (metrics dict, step) for per-step loss and per-epoch validation.
            dist: this process's place in a ``torchrun`` job (``training.distributed.setup()``); None
                or one process: the single-process loop. Every rank calls ``fit``; rank 0 alone
                writes checkpoints and ends with the best weights (the others keep their last ones).

        Raises:
            CheckpointError: ``resume`` without a usable checkpoint.
        """
        cfg, model, data = self.cfg, self.model, self.data
        d = self.dist = dist or distributed.SINGLE
        self.device = training_device(d)
        if self.device != "cpu":
            model.to(self.device)
            self.loss_fn.to(self.device)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        lengths = np.fromiter((len(x) for x in data.train_ids), dtype=np.int64, count=len(data.train_ids))
        steps_per_epoch = len(epoch_batches(lengths, cfg.batch_size, cfg.length_group_size, self.seed))
        total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)

        from transformers import get_linear_schedule_with_warmup

        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps
        )
        last = checkpoint_dir / LAST_CHECKPOINT
        if resume:
            state = self._resume(last, config_digest)
        else:
            state = _new_state()
            torch.manual_seed(self.seed + d.rank)  # each rank its own dropout draws
            if d.active and d.is_main:  # a stale checkpoint must not be taken for this run's on a restart
                last.unlink(missing_ok=True)

        def save_checkpoint() -> None:
            rngs = distributed.gather(torch.get_rng_state(), d)  # every rank, rank 0 writes
            if not d.is_main:
                return
            ck = {
                "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": rngs[0],
                "state": state,
                "config_digest": config_digest,
            }
            if d.active:
                ck["torch_rng_ranks"] = rngs
            if self.device.startswith("cuda"):
                ck["cuda_rng"] = torch.cuda.get_rng_state()
            _atomic_torch_save(ck, last)

        self.autocast = _autocast_dtype(cfg, self.device)
        self.bf16 = self.autocast is torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast is torch.float16 else None
        model.train()
        # torchrun: rank 0's bar only; nothing passed on rank 0, so TQDM_DISABLE still applies
        bar_off: dict[str, Any] = {} if d.is_main else {"disable": True}
        bar = tqdm(
            total=total_steps,
            initial=state["global_step"],
            desc=self.progress_label,
            unit="step",
            mininterval=2.0 if sys.stderr.isatty() else 60.0,
            dynamic_ncols=True,
            **bar_off,
        )  # a log file gets a line a minute
        stopped_early = False
        ema: float | None = None
        try:
            freeze_encoder(model, state["global_step"] < cfg.linear_probe_steps)
            self.net = distributed.wrap(model, d)  # DDP over the parameters that train now
            while (
                state["epoch"] < cfg.epochs
                and state["global_step"] < total_steps
                and state["bad_epochs"] < cfg.early_stopping_patience
            ):
                batches = epoch_batches(
                    lengths, cfg.batch_size, cfg.length_group_size, self.seed + state["epoch"]
                )
                for b in range(state["batch"], len(batches)):
                    loss = self._step(batches[b])
                    state["global_step"] += 1
                    state["batch"] = b + 1
                    if state["global_step"] == cfg.linear_probe_steps:  # LP-FT: the probe phase ends
                        freeze_encoder(model, False)
                        self.net = distributed.wrap(model, d)
                    ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                    lr = self.scheduler.get_last_lr()[0]
                    bar.update(1)
                    # refresh=False: the bar's own mininterval decides when a line is written
                    bar.set_postfix(
                        epoch=state["epoch"] + 1, loss=f"{ema:.4f}", lr=f"{lr:.2e}", refresh=False
                    )
                    if on_metrics and state["global_step"] % 50 == 0:
                        on_metrics({"train.loss": ema, "train.lr": lr}, state["global_step"])
                    if state["global_step"] % cfg.checkpoint_every_steps == 0:
                        save_checkpoint()
                    if state["global_step"] >= total_steps:
                        break
                # end of epoch (or of max_steps): validate, keep the best weights, maybe stop early
                stopped_early = self._end_epoch(state, ema, checkpoint_dir, on_metrics)
                save_checkpoint()
                if stopped_early:
                    break
            bar.close()
        finally:
            freeze_encoder(model, False)
            self.net = model
        if d.is_main:  # the other ranks' models are not used after the loop
            model.load_state_dict(load_file(str(checkpoint_dir / BEST_WEIGHTS)))
        if self.device != "cpu":
            model.to("cpu")
        model.eval()
        return FitResult(
            state["best_score"],
            state["best_epoch"],
            state["history"],
            stopped_early,
            state["global_step"],
            self.bf16,
            d.world_size,
        )

    def _resume(self, last: Path, config_digest: str) -> dict[str, Any]:
        """Load ``last`` into the model, optimizer, scheduler and RNGs (this rank's generator where the
        run had as many processes); returns the loop state it was saved with."""
        d = self.dist
        ck = self._load_checkpoint(last, config_digest)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        rngs = ck.get("torch_rng_ranks")  # one per rank, from a run on as many processes
        torch.set_rng_state(rngs[d.rank] if rngs and len(rngs) == d.world_size else ck["torch_rng"])
        if "cuda_rng" in ck and self.device.startswith("cuda"):
            torch.cuda.set_rng_state(ck["cuda_rng"])
        state: dict[str, Any] = ck["state"]
        logger.info(
            "resumed at epoch %d, batch %d (step %d)", state["epoch"], state["batch"], state["global_step"]
        )
        return state

    def _load_checkpoint(self, last: Path, config_digest: str) -> dict[str, Any]:
        """``_read_checkpoint`` on rank 0, sent to every rank (other machines need no copy of it)."""
        d = self.dist
        ck: dict[str, Any] | str | None = None
        if d.is_main:
            try:
                ck = _read_checkpoint(last, config_digest)
            except CheckpointError as e:
                ck = str(e)  # every rank raises it
        ck = distributed.broadcast(ck, d)
        if isinstance(ck, str) or ck is None:
            raise CheckpointError(ck or f"--resume: no checkpoint at {last}")
        return ck

    def _step(self, batch: np.ndarray) -> float:
        """One optimizer step on the global batch ``batch`` (train row indices); returns the loss of
        this process's rows (under torchrun: this rank's share, weighted so that DDP's average of the
        ranks' gradients is the gradient of the whole batch's mean loss)."""
        d, dev = self.dist, self.device
        rows, weight = batch, 1.0
        if d.active:
            rows = distributed.shard(batch, d)
            weight = len(rows) * d.world_size / len(batch)
            if not len(rows):  # a last batch smaller than the world: a zero-weight row keeps DDP in step
                rows = batch[:1]
        x, m = self.data.encoder.pad([self.data.train_ids[i] for i in rows])  # (B, T) int64
        xt, mt = torch.from_numpy(x), torch.from_numpy(m)
        if dev != "cpu":
            xt = xt.pin_memory().to(dev, non_blocking=True)
            mt = mt.pin_memory().to(dev, non_blocking=True)
        dtype = self.autocast or torch.bfloat16  # (ignored when disabled)
        with torch.autocast(dev.split(":")[0], dtype=dtype, enabled=self.autocast is not None):
            logits = self.net(input_ids=xt, attention_mask=mt).logits  # (B, L)
        loss = self.compute_loss(logits, rows)
        scaled = loss * weight if weight != 1.0 else loss
        if self.scaler is not None:  # fp16 on a GPU without bf16
            self.scaler.scale(scaled).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(list(self.model.parameters()), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            scaled.backward()
            torch.nn.utils.clip_grad_norm_(list(self.model.parameters()), self.cfg.grad_clip)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.item())

    def _end_epoch(
        self,
        state: dict[str, Any],
        ema: float | None,
        checkpoint_dir: Path,
        on_metrics: Callable[[dict, int], object] | None,
    ) -> bool:
        """Validate, save the weights if they are the best so far, advance the epoch; True to stop early."""
        data, d = self.data, self.dist
        if d.active:  # each rank scores its share of validation; every rank gets the same score
            parts = distributed.gather(
                predict_logits(
                    self.model, data.encoder, data.val_ids[d.rank :: d.world_size], self.cfg.eval_batch_size
                ),
                d,
            )
            val_logits = np.zeros((len(data.val_ids), data.val_y.shape[1]), dtype=np.float32)
            for r, part in enumerate(parts):
                val_logits[r :: d.world_size] = part
        else:
            val_logits = predict_logits(self.model, data.encoder, data.val_ids, self.cfg.eval_batch_size)
        score = macro_ap(val_logits, data.val_y)
        epoch = state["epoch"] + 1
        state["history"].append(
            {"validation.macro_ap": score, "train.loss_ema": float(ema or 0.0), "epoch": epoch}
        )
        logger.info("epoch %d: validation macro AP %.4f", epoch, score)
        if on_metrics:
            on_metrics({"epoch.validation.macro_ap": score}, epoch)
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
            if d.is_main:
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                    str(checkpoint_dir / BEST_WEIGHTS),
                )
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["batch"] = 0
        if state["bad_epochs"] >= self.cfg.early_stopping_patience:
            logger.info("early stopping: no validation gain for %d epochs", state["bad_epochs"])
            return True
        return False


def fit(
    model: Any,
    data: FitData,
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path,
    config_digest: str,
    *,
    resume: bool = False,
    on_metrics: Callable[[dict, int], object] | None = None,
    dist: Dist | None = None,
) -> FitResult:
    """Fine-tune ``model`` in place with the plain objective (``FineTuner``; see ``FineTuner.fit``)."""
    return FineTuner(model, data, cfg, seed).fit(
        checkpoint_dir, config_digest, resume=resume, on_metrics=on_metrics, dist=dist
    )
