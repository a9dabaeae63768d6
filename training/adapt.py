"""Unsupervised adaptation to a new site's unlabelled ads (``adapt:`` in the config).

A platform adopting adrisk has many of its own ads and no labels for them. Two methods from the
literature use them, both unattended (nothing here is chosen by reading the unlabelled rows):

1. **Continued masked-language-model pretraining** of the encoder on the unlabelled texts before
   fine-tuning (task-adaptive pretraining, Gururangan et al. 2020, "Don't Stop Pretraining"):
   ``continue_pretraining``. The sentence-embedding checkpoint ships no MLM head, so a fresh BERT
   MLM head (``transformers``' ``BertOnlyMLMHead``, decoder tied to the word embeddings) learns
   alone for the first steps, then with the encoder; masking is ``transformers``'
   ``DataCollatorForLanguageModeling``.
2. **Self-training** (noisy student, Xie et al. 2020): the fine-tuned model (teacher) labels the
   unlabelled rows it is confident about, with its calibrated probabilities adjusted to the
   unlabelled rows' own class prior (``prior_adjusted``, Saerens et al. 2002); a student (by
   default the teacher's weights, trained one more short epoch; or a fresh model from the adapted
   encoder, the noisy student proper) is fine-tuned on training rows plus those pseudo-labelled rows
   (dropout and the training rows' style views are its noise). Pseudo-labels are per label (Lee
   2013, "Pseudo-Label"): a row teaches only the labels it is confident about, the others are masked
   out of the student's loss (``MaskedFineTuner``). Safeguards: confidence thresholds chosen on the
   validation split and its short style views (``pseudo_thresholds``; fixed thresholds as in
   FixMatch, Sohn et al. 2020), class-balanced selection per label (Zou et al. 2018, "Unsupervised
   Domain Adaptation for Semantic Segmentation via Class-Balanced Self-Training": at most a share of
   each predicted class, most confident first), a cap on pseudo-labelled rows, and a keep rule on
   validation (the student replaces the teacher only if no label's validation AP, nor its short-view
   AP, falls).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import expit

from model.calibration import calibrated_probabilities, fit_temperatures, select_threshold, select_thresholds
from model.encoding import TextEncoder
from model.normalize import normalize_text
from model.schema import LabelSchema
from training.adapt_config import AdaptConfig, MlmConfig, SelfTrainingConfig
from training.config import TrainConfig
from training.data import DataError, read_table
from training.loop import FineTuner, FitData, label_aps, macro_ap, pos_weight, predict_logits

logger = logging.getLogger(__name__)

# the style view on which pseudo-label thresholds and the keep rule are also checked (training/views.py)
CHECK_VIEW = "short"


def unlabelled_fingerprint(cfg: AdaptConfig) -> str:
    """sha256 over the bytes of ``cfg.unlabelled_files`` in order (``""`` when adaptation is off): a
    retrain whose unlabelled ads changed is not "unchanged data". Missing files hash as their name."""
    import hashlib

    if not cfg.active:
        return ""
    h = hashlib.sha256()
    for path in cfg.unlabelled_files:
        h.update(path.encode("utf-8", "surrogatepass"))
        p = Path(path)
        if p.is_file():
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def load_unlabelled(cfg: AdaptConfig, exclude_texts: Sequence[str] = ()) -> tuple[list[str], dict]:
    """The unlabelled texts of ``cfg.unlabelled_files``: non-empty strings, exact repeats (after
    ``model.normalize.normalize_text``) and texts equal to one in ``exclude_texts`` (the validation
    and test splits, so that no evaluated text is trained on, even unlabelled) dropped.

    Returns:
        (texts, report): report counts ``rows``, ``empty``, ``repeats``, ``in_evaluation`` and ``kept``.

    Raises:
        DataError: a missing or unreadable file, a file without ``cfg.text_column``, or no usable text.
    """
    seen = {normalize_text(t).casefold() for t in exclude_texts}
    report = {"rows": 0, "empty": 0, "repeats": 0, "in_evaluation": 0, "kept": 0}
    texts: list[str] = []
    kept: set[str] = set()
    for path in cfg.unlabelled_files:
        frame = read_table(path)
        if cfg.text_column not in frame.columns:
            raise DataError(f"adapt.unlabelled_files: {path} has no column '{cfg.text_column}'")
        for value in frame[cfg.text_column].tolist():
            report["rows"] += 1
            if not isinstance(value, str) or not value.strip():
                report["empty"] += 1
                continue
            key = normalize_text(value).casefold()
            if key in seen:
                report["in_evaluation"] += 1
            elif key in kept:
                report["repeats"] += 1
            else:
                kept.add(key)
                texts.append(value)
    report["kept"] = len(texts)
    if not texts:
        raise DataError(f"adapt.unlabelled_files: no usable text in {list(cfg.unlabelled_files)}")
    return texts, report


def continue_pretraining(
    model, tokenizer, texts: Sequence[str], cfg: MlmConfig, max_length: int, seed: int
) -> dict[str, float]:
    """Masked-LM training of ``model``'s encoder (``model.base_model``, a BERT) on ``texts``, in place.

    Args:
        model: a ``transformers`` BERT sequence classifier (its head is untouched).
        texts: the unlabelled texts; each cut to ``max_length`` tokens.

    Returns:
        metrics ``adapt.mlm.{steps,loss_first_epoch,loss_last_epoch}`` (mean masked-token
        cross-entropy, nats).

    Raises:
        ValueError: the model is not BERT-family (no ``BertOnlyMLMHead`` fits it) or ``texts`` is empty.
    """
    import torch
    from transformers import DataCollatorForLanguageModeling
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    from training.loop import bf16_supported

    if not texts:
        raise ValueError("continue_pretraining: no texts")
    encoder = model.base_model
    emb = getattr(getattr(encoder, "embeddings", None), "word_embeddings", None)
    if emb is None or getattr(model.config, "model_type", "") != "bert":
        raise ValueError("adapt.mlm needs a BERT-family base model (all-MiniLM-L6-v2 is one)")
    torch.manual_seed(seed)
    head = BertOnlyMLMHead(model.config)
    head.predictions.decoder.weight = emb.weight  # tied, as BERT's own MLM head
    enc_params = [p for n, p in encoder.named_parameters() if not n.startswith("pooler")]
    head_params = [p for n, p in head.named_parameters() if n != "predictions.decoder.weight"]
    groups = [
        {"params": enc_params, "lr": cfg.learning_rate, "weight_decay": 0.01},
        {"params": head_params, "lr": cfg.learning_rate * 10, "weight_decay": 0.0},
    ]
    try:  # the fused kernel where torch has it (as training.loop.make_optimizer)
        opt = torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups, foreach=True)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mask_probability, seed=seed)
    steps_per_epoch = math.ceil(len(ids) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = int(cfg.head_warmup_fraction * total)
    bf16 = bf16_supported()
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    step = 0
    was_training = model.training
    model.train()
    head.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(ids))
        epoch_loss = []
        for s in range(0, len(order), cfg.batch_size):
            batch = collator([{"input_ids": ids[i]} for i in order[s : s + cfg.batch_size]])
            for p in enc_params:
                p.requires_grad_(step >= warm)
            masked = batch["labels"] != -100  # the vocabulary projection only where a token is masked
            if not masked.any():
                continue
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                hidden = encoder(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state
                logits = head(hidden[masked])  # (masked tokens, vocab)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"][masked])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(enc_params + head_params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            epoch_loss.append(loss.item())
            step += 1
        losses.append(float(np.mean(epoch_loss)) if epoch_loss else float("nan"))
        logger.info("MLM epoch %d/%d: masked-token loss %.4f", epoch + 1, cfg.epochs, losses[-1])
    for p in enc_params:
        p.requires_grad_(True)
    model.train(was_training)
    return {
        "adapt.mlm.steps": float(step),
        "adapt.mlm.loss_first_epoch": losses[0],
        "adapt.mlm.loss_last_epoch": losses[-1],
    }


@dataclass
class PseudoThresholds:
    """Per label: a pseudo-positive needs ``p >= positive[j]`` (``nan``: no pseudo-positives for it),
    a pseudo-negative ``p < negative[j]``."""

    positive: np.ndarray  # (L,)
    negative: np.ndarray  # (L,)


def pseudo_thresholds(
    probs: np.ndarray, targets: np.ndarray, model_thresholds: Sequence[float], cfg: SelfTrainingConfig
) -> PseudoThresholds:
    """Confidence thresholds for pseudo-labels, chosen on labelled rows (validation and its views).

    Per label: ``positive`` is the lowest calibrated probability at which the rows reach
    ``cfg.pseudo_precision`` (``model.calibration.select_threshold``'s target-precision rule), never
    below the model's own threshold (``nan`` where the precision is unreachable or the label has no
    positives); ``negative`` is the ``cfg.max_missed_positives`` quantile of the positives'
    probabilities (``0``: no pseudo-negatives where there are no positives to bound the miss rate, or
    where the rows below it are negatives at less than ``cfg.pseudo_precision``, the same confidence
    asked of a pseudo-positive).

    Args:
        probs, targets: (n, L) calibrated probabilities and 0/1 targets.
        model_thresholds: (L,) the model's decision thresholds.
    """
    n_labels = probs.shape[1]
    pos = np.full(n_labels, np.nan)
    neg = np.zeros(n_labels)
    for j in range(n_labels):
        y = targets[:, j].astype(int)
        if y.sum() == 0 or y.sum() == len(y):
            continue
        info = select_threshold(probs[:, j], y, target_precision=cfg.pseudo_precision)
        if info.method == "target_precision":
            pos[j] = max(info.threshold, float(model_thresholds[j]))
        neg[j] = float(np.quantile(probs[y == 1, j], cfg.max_missed_positives, method="lower"))
        if not np.isnan(pos[j]):
            neg[j] = min(neg[j], pos[j])
        below = probs[:, j] < neg[j]
        if below.any() and 1.0 - y[below].mean() < cfg.pseudo_precision:  # negatives as sure as positives
            neg[j] = 0.0
    return PseudoThresholds(pos, neg)


def prior_adjusted(
    probs: np.ndarray, source_targets: np.ndarray, schema: LabelSchema
) -> tuple[np.ndarray, np.ndarray]:
    """The unlabelled rows' class prior per label and their posteriors under it (label shift).

    A new site's share of positives is not the validation split's; probabilities calibrated on
    validation carry validation's prior. Saerens et al. 2002 ("Adjusting the Outputs of a Classifier
    to New a Priori Probabilities: A Simple Procedure"), an EM: ``p' = (q/pi) p / ((q/pi) p +
    ((1-q)/(1-pi)) (1-p))`` and ``q = mean(p')`` until ``q`` settles; ``pi`` is the label's share in
    ``source_targets``. Self-training then counts classes and applies its thresholds on ``p'``, so a
    site where most ads are positive does not yield pseudo-negatives in the proportion of the
    validation split (Alexandari et al. 2020 show this EM on calibrated outputs is hard to beat).

    Args:
        probs: (n, L) calibrated probabilities on the unlabelled rows.
        source_targets: (m, L) 0/1 targets of the rows the calibration was fitted on.

    Returns:
        (priors (L,), adjusted (n, L)); multi_class outputs and labels without both classes in
        ``source_targets`` are returned unchanged (prior: the mean probability).
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-9, 1 - 1e-9)
    out = p.copy()
    priors = p.mean(axis=0)
    if schema.problem_type.value == "multi_class" or len(p) == 0:
        return priors, out
    for j in range(p.shape[1]):
        pi = float(np.mean(source_targets[:, j]))
        if not 0 < pi < 1:
            continue
        q = pi
        for _ in range(1000):
            a = (q / pi) * p[:, j]
            adj = a / (a + ((1 - q) / (1 - pi)) * (1 - p[:, j]))
            new = float(adj.mean())
            done = abs(new - q) < 1e-7
            q = new
            if done:
                break
        priors[j], out[:, j] = q, adj
    return priors, out


@dataclass
class PseudoLabels:
    """Rows of the unlabelled set chosen as training rows: ``index`` into it, (k, L) 0/1 ``targets``
    and (k, L) 0/1 ``mask`` (1 where the row is pseudo-labelled for that label; the loss ignores the
    other entries)."""

    index: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    report: dict = field(default_factory=dict)


def _shrink(lists: list[np.ndarray], max_rows: int) -> list[np.ndarray]:
    """Cut every ranked list (most confident first) by one common factor until their union holds at
    most ``max_rows`` rows (the same share of every label and class, as CBST's proportions)."""
    keep = list(lists)
    n = len(np.unique(np.concatenate(keep))) if keep else 0
    while n > max_rows:
        scale = max_rows / n
        keep = [x[: math.floor(len(x) * scale)] for x in keep]
        n = len(np.unique(np.concatenate(keep)))
    return keep


def select_pseudo_labels(
    probs: np.ndarray,
    thresholds: PseudoThresholds,
    model_thresholds: Sequence[float],
    cfg: SelfTrainingConfig,
    all_labels: bool = False,
    negative_probs: np.ndarray | None = None,
) -> PseudoLabels:
    """Per-label, class-balanced choice of pseudo-labels (Lee 2013, "Pseudo-Label"; CBST, Zou et al.
    2018; fixed confidence thresholds as FixMatch, Sohn et al. 2020, but chosen on validation).

    Per label ``j``: a row is a pseudo-positive for ``j`` where ``p >= positive[j]`` and a
    pseudo-negative where ``p < negative[j]``; other labels of the row stay unlabelled (masked out of
    the student's loss), so a title can teach "not adult" while its trafficking score is unsure. The
    two classes of label ``j`` are the rows the model flags for it (``p >= model_thresholds[j]``) and
    the rest: of each, at most ``cfg.class_fraction`` become pseudo-labelled, most confident first
    (highest / lowest ``p``). Then every label's lists are cut by one factor until at most
    ``cfg.max_rows`` rows carry a pseudo-label. ``all_labels`` (multi_class schemas, whose softmax
    loss cannot skip a label): keep only rows pseudo-labelled for every label, as before.

    Args:
        probs: (n, L) the teacher's calibrated (prior-adjusted) probabilities on the unlabelled rows.
        thresholds: ``pseudo_thresholds`` on validation; ``positive`` nan: no pseudo-positives for it.
        model_thresholds: (L,) the teacher's decision thresholds.
        negative_probs: (n, L) the probabilities the pseudo-negative rule (and its ranking) reads;
            default ``probs``.

    Returns:
        PseudoLabels sorted by row; ``report``: ``qualified`` (rows confident on at least one label
        before balance and cap), ``positive`` / ``negative`` (pseudo-labelled entries, rows x labels),
        ``positive.<j>`` / ``negative.<j>`` per label index, and ``rows``.
    """
    p = np.asarray(probs, dtype=np.float64)
    q = p if negative_probs is None else np.asarray(negative_probs, dtype=np.float64)
    n, n_labels = p.shape
    pos_thr = np.where(np.isnan(thresholds.positive), np.inf, thresholds.positive)
    is_pos = p >= pos_thr[None, :]  # (n, L)
    is_neg = q < thresholds.negative[None, :]
    flagged = p >= np.asarray(model_thresholds, dtype=np.float64)[None, :]
    lists: list[np.ndarray] = []
    for j in range(n_labels):
        pos = np.flatnonzero(is_pos[:, j])
        neg = np.flatnonzero(is_neg[:, j])
        pos = pos[np.argsort(-p[pos, j], kind="stable")][
            : math.floor(cfg.class_fraction * flagged[:, j].sum())
        ]
        neg = neg[np.argsort(q[neg, j], kind="stable")][
            : math.floor(cfg.class_fraction * (~flagged[:, j]).sum())
        ]
        lists += [pos, neg]
    lists = _shrink(lists, cfg.max_rows)
    targets = np.zeros((n, n_labels), dtype=np.float32)
    mask = np.zeros((n, n_labels), dtype=np.float32)
    for j in range(n_labels):
        targets[lists[2 * j], j] = 1.0
        mask[lists[2 * j], j] = 1.0
        mask[lists[2 * j + 1], j] = 1.0
    rows = mask.all(axis=1) if all_labels else mask.any(axis=1)
    index = np.flatnonzero(rows).astype(np.int64)
    targets, mask = targets[index], mask[index]
    report = {
        "qualified": int((is_pos | is_neg).any(axis=1).sum()),
        "positive": int((mask * targets).sum()),
        "negative": int((mask * (1 - targets)).sum()),
        "rows": len(index),
    }
    for j in range(n_labels):
        report[f"positive.{j}"] = int((mask[:, j] * targets[:, j]).sum())
        report[f"negative.{j}"] = int((mask[:, j] * (1 - targets[:, j])).sum())
    return PseudoLabels(index, targets, mask, report)


class MaskedFineTuner(FineTuner):
    """The fine-tuning loop with a per-entry mask on the BCE loss: an entry (row, label) with mask 0
    gets no hard target (a pseudo-labelled row's unsure labels). ``pos_weight`` per label is
    ``training.loop.pos_weight`` of the unmasked entries' counts; the loss is the masked sum over the
    batch divided by ``B * L``, the plain loss's scale where nothing is masked. With ``soft`` and
    ``soft_weight`` > 0, a masked entry instead adds ``soft_weight`` times the BCE against the
    teacher's probability there (knowledge distillation, Hinton et al. 2015, on the entries without a
    label: learning without forgetting, Li and Hoiem 2016).

    Args:
        model, data, cfg, seed: as ``FineTuner``.
        mask: (n, L) 0/1, one row per ``data.train_ids``.
        soft: (n, L) teacher probabilities in [0, 1], read where ``mask`` is 0; None: no distillation.
        soft_weight: the distillation term's weight (>= 0).

    Raises:
        ValueError: ``mask`` or ``soft`` is not ``data.train_y``'s shape, or the schema is multi_class.
    """

    progress_label = "self-training"

    def __init__(
        self,
        model,
        data: FitData,
        cfg: TrainConfig,
        seed: int,
        mask: np.ndarray,
        soft: np.ndarray | None = None,
        soft_weight: float = 0.0,
    ):
        for name, a in (("mask", mask), ("soft", soft)):
            if a is not None and a.shape != data.train_y.shape:
                raise ValueError(f"{name} of shape {a.shape} for targets of shape {data.train_y.shape}")
        if data.schema.problem_type.value == "multi_class":
            raise ValueError("a masked loss needs independent labels (multi_label or binary)")
        super().__init__(model, data, cfg, seed)
        self.mask = mask.astype(np.float32)
        self.soft = None if soft is None or soft_weight <= 0 else soft.astype(np.float32)
        self.soft_weight = float(soft_weight)
        y = data.train_y
        pos, neg = (self.mask * y).sum(axis=0), (self.mask * (1 - y)).sum(axis=0)
        self.pos_weight = pos_weight(pos, neg, cfg) if cfg.class_weighting else np.ones_like(pos, np.float32)

    def compute_loss(self, logits, rows: np.ndarray):
        import torch

        dev = logits.device
        y = torch.from_numpy(self.data.train_y[rows]).float().to(dev)  # (B, L)
        m = torch.from_numpy(self.mask[rows]).to(dev)  # (B, L)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), y, pos_weight=torch.from_numpy(self.pos_weight).to(dev), reduction="none"
        )
        loss = (bce * m).sum()
        if self.soft is not None:
            q = torch.from_numpy(self.soft[rows]).to(dev)  # (B, L) the teacher's probabilities
            kd = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), q, reduction="none")
            loss = loss + self.soft_weight * (kd * (1 - m)).sum()
        return loss / bce.numel()


def _prefixed(on_metrics: Callable[[dict, int], object] | None, prefix: str):
    """``on_metrics`` with every metric name under ``prefix.`` (None stays None)."""
    if on_metrics is None:
        return None

    def log(m: dict, step: int) -> object:
        return on_metrics({f"{prefix}.{k}": v for k, v in m.items()}, step)

    return log


@dataclass
class StudentData:
    """What a student's fine-tune needs beyond the teacher's (see ``Adaptation.self_train``)."""

    encoder: TextEncoder
    train_ids: list[list[int]]
    train_y: np.ndarray
    val_ids: list[list[int]]
    val_y: np.ndarray
    view_ids: list[list[int]]  # the validation rows' short views, same order and targets as val_y
    schema: LabelSchema


@dataclass
class Adaptation:
    """One run's adaptation: the unlabelled texts, the encoder state after MLM, the metrics."""

    cfg: AdaptConfig
    texts: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    adapted_state: dict | None = None
    fingerprint: str = ""  # unlabelled_fingerprint of the files

    @classmethod
    def start(cls, cfg: AdaptConfig, exclude_texts: Sequence[str]) -> Adaptation:
        """Load the unlabelled texts (see ``load_unlabelled``); raises DataError on bad files."""
        texts, report = load_unlabelled(cfg, exclude_texts)
        logger.info(
            "adaptation: %d unlabelled texts (%d empty, %d repeats, %d in validation/test dropped)",
            report["kept"],
            report["empty"],
            report["repeats"],
            report["in_evaluation"],
        )
        metrics = {f"adapt.unlabelled.{k}": float(v) for k, v in report.items()}
        return cls(cfg, texts, metrics, fingerprint=unlabelled_fingerprint(cfg))

    def pretrain(self, model, tokenizer, max_length: int, seed: int, resuming: bool = False) -> None:
        """Continued MLM pretraining of ``model``'s encoder (if ``mlm.enabled``); keeps the adapted
        encoder state for a fresh self-training student.

        ``resuming``: the fine-tune resumes from a checkpoint that replaces these weights, so MLM is
        skipped unless the student is ``fresh`` (its metrics stay on the resumed MLflow run)."""
        from training.loop import HEAD_PREFIXES

        st = self.cfg.self_training
        if resuming and not (st.enabled and st.student == "fresh"):
            logger.info("adaptation: resuming from a checkpoint, continued MLM pretraining skipped")
            return
        if self.cfg.mlm.enabled:
            self.metrics |= continue_pretraining(model, tokenizer, self.texts, self.cfg.mlm, max_length, seed)
        self.adapted_state = {  # the encoder's tensors (everything outside the new head), detached
            k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIXES)
        }

    def _student(
        self, teacher, make_student, data: StudentData, pool_ids, chosen: PseudoLabels, train_cfg, seed
    ):
        """The student, its training rows, their (n, L) targets and loss mask (training rows: all ones;
        pseudo rows: ``chosen.mask``), and its loop settings (``self_training.student``)."""
        st = self.cfg.self_training
        pseudo_ids = [pool_ids[i] for i in chosen.index.tolist()]
        if st.student == "fresh":  # noisy student: a new model from the adapted encoder, all rows
            student = make_student()
            if self.adapted_state is not None:
                student.load_state_dict(self.adapted_state, strict=False)
            ids, y = data.train_ids + pseudo_ids, np.concatenate([data.train_y, chosen.targets])
            mask = np.concatenate([np.ones_like(data.train_y, dtype=np.float32), chosen.mask])
            return student, ids, y.astype(np.float32), mask, train_cfg
        # continue: the teacher's weights, one short epoch over the pseudo rows and a replay sample
        student = copy.deepcopy(teacher)
        n_replay = min(len(data.train_ids), st.replay_ratio * len(pseudo_ids))
        replay = np.sort(np.random.default_rng(seed).choice(len(data.train_ids), n_replay, replace=False))
        ids = [data.train_ids[i] for i in replay.tolist()] + pseudo_ids
        y = np.concatenate([data.train_y[replay], chosen.targets]).astype(np.float32)
        mask = np.concatenate([np.ones((n_replay, y.shape[1]), dtype=np.float32), chosen.mask])
        cfg = train_cfg.model_copy(
            update={"epochs": 1, "learning_rate": train_cfg.learning_rate * st.learning_rate_scale}
        )
        return student, ids, y, mask, cfg

    def self_train(
        self,
        teacher,
        make_student: Callable[[], object],
        data: StudentData,
        train_cfg: TrainConfig,
        calibration: tuple[dict[str, float], dict[str, float | None]],
        seed: int,
        checkpoint_dir: Path,
        config_digest: str,
        resume: bool = False,
        on_metrics: Callable[[dict, int], object] | None = None,
        report: Callable[[object, list[float], list[float]], dict[str, float]] | None = None,
    ):
        """Self-training rounds (``self_training.rounds``); returns the model to keep.

        Each round: calibrate the teacher on validation (temperature scaling, thresholds by
        ``calibration`` = (target precisions, max flag rates)), choose pseudo-label thresholds on
        validation plus its short views, pseudo-label the unlabelled texts per label
        (``select_pseudo_labels``), fine-tune the student on training + pseudo rows with the unsure
        labels masked out of the loss (``MaskedFineTuner``), and keep it only if it passes the keep
        rule: no label's validation AP, nor its AP on the short views, more than
        ``SelfTrainingConfig.keep_tolerance`` below the teacher's (so that the adult label's gain
        cannot be paid for by the trafficking label).
        ``report(model, temperatures, thresholds)``, if given, reports the first teacher (before any
        self-training) as ``adapt.teacher.*`` and each round's student, kept or not (calibrated on
        validation as the teacher), as ``adapt.self_training.round<r>.student.*``: evaluation only,
        never a choice.

        Metrics: ``adapt.self_training.round<r>.{pseudo_positive,pseudo_negative (entries: rows x
        labels), pseudo_rows, qualified, pseudo_positive.<label>, pseudo_negative.<label>,
        teacher_macro_ap, student_macro_ap, teacher_view_macro_ap, student_view_macro_ap,
        teacher_ap.<label>, student_ap.<label>, kept}``.
        """
        st = self.cfg.self_training
        if not (self.cfg.active and st.enabled):
            return teacher
        labels = list(data.schema.labels)
        targets_p, rates = calibration
        pool_ids = data.encoder.encode(self.texts).input_ids
        model = teacher
        both_y = np.concatenate([data.val_y, data.val_y])
        for r in range(1, st.rounds + 1):
            key = f"adapt.self_training.round{r}"

            def logits_of(m, ids):
                return predict_logits(m, data.encoder, ids, train_cfg.eval_batch_size)

            z_val, z_view, z_pool = (logits_of(model, ids) for ids in (data.val_ids, data.view_ids, pool_ids))
            temps = fit_temperatures(z_val, data.val_y, data.schema.problem_type)
            probs = [
                calibrated_probabilities(z, temps, data.schema.problem_type) for z in (z_val, z_view, z_pool)
            ]
            info = select_thresholds(probs[0], data.val_y, labels, targets_p, rates)
            thr = [info[n].threshold for n in labels]
            if r == 1 and report is not None:
                self.metrics |= {f"adapt.teacher.{k}": v for k, v in report(model, temps, thr).items()}
            pt = pseudo_thresholds(np.concatenate(probs[:2]), both_y, thr, st)
            priors, pool_p = prior_adjusted(probs[2], data.val_y, data.schema)
            self.metrics |= {f"{key}.prior.{n}": float(q) for n, q in zip(labels, priors, strict=True)}
            multi_class = data.schema.problem_type.value == "multi_class"
            # the thresholds' precision and miss rate hold for validation-calibrated probabilities: a
            # pseudo-label must hold under both validation's prior and the pool's estimated one (the EM
            # can run to a bound where the shift is not a label shift; it did for trafficking)
            lo, hi = np.minimum(probs[2], pool_p), np.maximum(probs[2], pool_p)
            chosen = select_pseudo_labels(lo, pt, thr, st, all_labels=multi_class, negative_probs=hi)
            logger.info(
                "self-training round %d: %d rows, %d pseudo-positive and %d pseudo-negative labels (%d qualified)",
                r,
                chosen.report["rows"],
                chosen.report["positive"],
                chosen.report["negative"],
                chosen.report["qualified"],
            )
            for k, v in chosen.report.items():
                name, _, j = k.partition(".")
                name = name if name == "qualified" else f"pseudo_{name}"
                self.metrics[f"{key}.{name}" + (f".{labels[int(j)]}" if j else "")] = float(v)
            self.metrics |= {
                f"{key}.pseudo_threshold.{n}": float(t) for n, t in zip(labels, pt.positive, strict=True)
            }
            if len(chosen.index) == 0:
                self.metrics[f"{key}.kept"] = 0.0
                break
            student, rows_ids, rows_y, rows_mask, student_cfg = self._student(
                model, make_student, data, pool_ids, chosen, train_cfg, seed + r
            )
            ckpt = checkpoint_dir / f"self-training-{r}"
            fit_data = FitData(data.encoder, rows_ids, rows_y, data.val_ids, data.val_y, data.schema)
            if multi_class:  # rows confident on every label: nothing to mask
                tuner = FineTuner(student, fit_data, student_cfg, seed + r)
            else:
                # the teacher's probabilities where the pseudo-labels are unsure (distill_unsure)
                soft = expit(logits_of(model, rows_ids)) if st.distill_unsure > 0 else None
                tuner = MaskedFineTuner(
                    student, fit_data, student_cfg, seed + r, rows_mask, soft, st.distill_unsure
                )
            tuner.fit(
                ckpt,
                config_digest,
                resume=resume and (ckpt / "last.pt").is_file(),
                on_metrics=_prefixed(on_metrics, key),
            )
            zs_val, zs_view = logits_of(student, data.val_ids), logits_of(student, data.view_ids)
            scores = {
                "teacher_macro_ap": macro_ap(z_val, data.val_y),
                "teacher_view_macro_ap": macro_ap(z_view, data.val_y),
                "student_macro_ap": macro_ap(zs_val, data.val_y),
                "student_view_macro_ap": macro_ap(zs_view, data.val_y),
            }
            ap_t, ap_s = label_aps(z_val, data.val_y), label_aps(zs_val, data.val_y)
            view_t, view_s = label_aps(z_view, data.val_y), label_aps(zs_view, data.val_y)
            keep = bool(
                np.all(np.nan_to_num(ap_s - ap_t + st.keep_tolerance, nan=0.0) >= 0)
                and np.all(np.nan_to_num(view_s - view_t + st.keep_tolerance, nan=0.0) >= 0)
            )
            for j, n in enumerate(labels):
                scores[f"teacher_ap.{n}"], scores[f"student_ap.{n}"] = ap_t[j], ap_s[j]
                scores[f"teacher_view_ap.{n}"], scores[f"student_view_ap.{n}"] = view_t[j], view_s[j]
            self.metrics |= {f"{key}.{k}": float(v) for k, v in scores.items() if np.isfinite(v)}
            self.metrics[f"{key}.kept"] = float(keep)
            if report is not None:  # evaluation only: the student calibrated on validation as the teacher
                s_temps = fit_temperatures(zs_val, data.val_y, data.schema.problem_type)
                s_info = select_thresholds(
                    calibrated_probabilities(zs_val, s_temps, data.schema.problem_type),
                    data.val_y,
                    labels,
                    targets_p,
                    rates,
                )
                s_thr = [s_info[n].threshold for n in labels]
                self.metrics |= {f"{key}.student.{k}": v for k, v in report(student, s_temps, s_thr).items()}
            logger.info(
                "self-training round %d: validation macro AP %.4f -> %.4f, short view %.4f -> %.4f: %s",
                r,
                scores["teacher_macro_ap"],
                scores["student_macro_ap"],
                scores["teacher_view_macro_ap"],
                scores["student_view_macro_ap"],
                "student kept" if keep else "teacher kept",
            )
            if not keep:
                break
            model = student
        return model


def self_train_in_run(
    adaptation: Adaptation,
    teacher,
    make_student: Callable[[], object],
    encoder: TextEncoder,
    train_ids: list[list[int]],
    train_y: np.ndarray,
    bundle,
    cfg,
    extra_sets: Sequence = (),
    resume: bool = False,
    on_metrics: Callable[[dict, int], object] | None = None,
):
    """``Adaptation.self_train`` with a training run's objects (``training/pipeline.py``).

    Args:
        train_ids, train_y: the loop's training rows (views included), tokenised, and their targets.
        bundle: the run's ``DataBundle``; cfg: its ``Config``.
        extra_sets: the run's loaded ``eval_sets``: the teacher's and each student's metrics on them
            and on the test split are logged as ``adapt.teacher.*`` and
            ``adapt.self_training.round<r>.student.*`` (evaluation only: nothing is chosen on them).
    """
    from training.eval_sets import evaluate_eval_set, flagged_negatives
    from training.metrics import evaluate_scores
    from training.views import apply_view

    schema = cfg.label_schema
    labels = list(schema.labels)
    val = bundle.validation

    def report(model, temps, thr) -> dict[str, float]:
        def probs(texts):
            z = predict_logits(model, encoder, encoder.encode(texts).input_ids, cfg.train.eval_batch_size)
            return calibrated_probabilities(z, temps, schema.problem_type)

        test_p = probs(bundle.test.texts)
        out = evaluate_scores(test_p, bundle.test.targets, labels, thr, "test", bundle.test.sources)
        out |= flagged_negatives(test_p, bundle.test.targets, labels, thr, "test", bundle.test.sources)
        for es in extra_sets:
            out |= evaluate_eval_set(es, probs(es.split.texts), labels, thr)
        return out

    data = StudentData(
        encoder,
        train_ids,
        train_y,
        encoder.encode(val.texts).input_ids,
        val.targets,
        encoder.encode(apply_view(CHECK_VIEW, val.texts)).input_ids,
        schema,
    )
    return adaptation.self_train(
        teacher,
        make_student,
        data,
        cfg.train,
        (cfg.target_precisions(), cfg.max_flag_rates()),
        cfg.seed,
        Path(cfg.output_dir) / "checkpoints",
        cfg.digest(),
        resume=resume,
        on_metrics=on_metrics,
        report=report,
    )
