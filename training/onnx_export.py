"""ONNX Runtime variants of a model artifact: export, int8 dynamic quantisation, an accuracy gate,
(the ``OnnxRuntime`` that serves them is in ``model/runtimes.py``).

A trained artifact can carry, beside its torch weights, ONNX variants under ``<artifact>/onnx/``::

    <dir>/onnx/model.fp32.onnx   fp32 graph (onnxruntime fuses it when it loads it)
    <dir>/onnx/model.int8.onnx   the same graph with int8 dynamic quantisation of every MatMul
    <dir>/onnx/model.int8-mixed.onnx   int8, but the layers measured most sensitive stay fp32
    <dir>/onnx/student.fp32.onnx, student.int8.onnx   the distilled student of <dir>/student/, if any

and ``adrisk.json`` records them under ``runtimes``::

    {"default": "onnx-int8" | "onnx-int8-mixed" | "onnx-fp32" | "torch",
     "variants": {"onnx-fp32": {"file": ..., "sha256": ..., "ap_delta": {label: float}, "passed": bool,
                                "texts_per_s": float, ...}, "onnx-int8": {...}},
     "torch": {"texts_per_s": float}, "gate": {"metric": "ap", "tolerance": 0.005, "n_texts": int, ...}}

The gate: a variant *passes* when, on the labelled texts given to ``add_onnx_variants``, every
label's average precision is within ``tolerance`` (default 0.005) of the fp32 torch predictor's AP on
the same texts, and so is the 90% paired-bootstrap interval of that delta (an equivalence test, so a
variant that agrees by luck on these texts does not pass: ``ap_delta_interval``), its precision and recall at the artifact's thresholds within ``decision_tolerance``
(0.02, or two texts' worth where few are flagged) of torch's, and a text's probability does not depend on its batch-mates (1e-3). ``default`` is the fastest (measured texts/s on those texts) among torch and the
passing variants; ``Predictor.load(dir, runtime="auto")`` serves it. A model without variants
serves with torch. Every variant, a distilled student's included, serves with the model's TF-IDF
blend, temperatures and thresholds.

Methods and sources:
- Export: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``; the dynamo exporter
  needs ``onnxscript``, which adrisk does not depend on), opset 17, dynamic batch and sequence axes.
  The example batch is deliberately *padded* (one row has mask zeros): tracing with an all-ones
  mask lets transformers skip the mask and the exported graph would then ignore padding.
  The model is exported with eager attention (plain MatMul/Softmax); at load time onnxruntime
  (``ORT_ENABLE_ALL``) fuses bias+GELU, the scaled QK^T MatMul and LayerNorm. The offline
  ``onnxruntime.transformers`` BERT fusion (one Attention op per layer) measured slower (``export_fp32``).
- Quantisation: ``onnxruntime.quantization.quantize_dynamic`` (weights int8 symmetric per output
  channel, activations uint8 quantised per batch at run time; uses VNNI/AVX-512 int8 GEMMs where the
  CPU has them). Per-channel halved the max logit error vs per-tensor (0.011 vs 0.022) at equal speed.
  Dynamic int8 computes one activation scale per tensor at run time, so int8 variants run *per row*
  (``OnnxRuntime.per_row``): a text's score then depends on that text only (batched, a text's
  probability moved by up to 0.25 with its batch-mates).
  The *mixed* variant is chosen by measurement (``_sensitivity_guided_mixed``): each layer's sublayers
  (attention q/k/v, attention output, FFN in, FFN out; embeddings; head) are quantised alone and
  their logit error measured, and the most sensitive stay fp32 until the gate passes. On the demo
  MiniLM-L6 model the FFN output projections of layers 0 and 2 came first (their inputs carry the
  outlier activations that make BERT hard to quantise: Bondarenko et al., "Understanding and
  Overcoming the Challenges of Efficient Transformer Quantization", EMNLP 2021); keeping those two
  fp32 moved trafficking AP from -0.0117 (full int8) to +0.0032 at 0.84x full int8's speed.
  See https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import ArtifactMeta, load_meta, save_meta, sha256_file
from model.runtimes import (
    ALL_FILES,
    FP32_FILE,
    FP32_VARIANT,
    INPUT_NAMES,
    INT8_FILE,
    INT8_MIXED_FILE,
    INT8_MIXED_VARIANT,
    INT8_VARIANT,
    ONNX_DIR,
    OUTPUT_NAME,
    STUDENT_DIR,
    STUDENT_FP32_FILE,
    STUDENT_FP32_VARIANT,
    STUDENT_INT8_FILE,
    STUDENT_INT8_VARIANT,
    OnnxRuntime,
    default_num_threads,
)

logger = logging.getLogger(__name__)

OPSET = 17
DEFAULT_TOLERANCE = 0.005
# A text's probability may not depend on which other texts share its batch by more than this. Dynamic
# int8 quantisation computes one activation scale per batch tensor, so a text's score moves with its
# batch-mates (measured on a demo model: up to 0.25 between `adrisk score` and Spark batches, 4 of
# 3,285 flagged decisions flipped); fp32 differs by padding round-off only (~1e-6).
BATCH_INVARIANCE_TOLERANCE = 1e-3
BATCH_INVARIANCE_TEXTS = 48
# Sensitivity-guided mixed precision: texts used to measure each group's error, most groups kept fp32.
SENSITIVITY_TEXTS = 256
# A variant must also take the same decisions as the reference at the artifact's thresholds: per label,
# precision and recall at the threshold within this (absolute) of torch fp32's. AP is rank-only, so a
# variant whose probability scale differs (a distilled student served with the teacher's temperatures
# and thresholds) could pass the AP gate and still flag a different share of ads. Where the metric's
# denominator is small, a change of up to DECISION_MIN_TEXTS texts is allowed (one flip among 40 flagged
# ads moves precision by 0.025; measured on the make-demo model, onnx-int8 moved trafficking precision by
# 0.018 with |dAP| 0.001, and the decision a student must keep is its scale, off by 0.14 there).
DECISION_TOLERANCE = 0.02
DECISION_MIN_TEXTS = 2
DECISION_METRICS = ("precision", "recall", "flagged")
MAX_FP32_GROUPS = 6
TRIAL_FILE = "trial.int8.onnx"
# The AP gate is an equivalence test, not a point estimate: the paired-bootstrap interval of each
# label's AP delta (texts resampled, both scorers on the same resample) must lie inside +-tolerance at
# this confidence (two one-sided tests at 5% each, Schuirmann 1987). Measured on a make-demo model
# (docs/performance.md): a distilled student passed the point-estimate gate on validation (trafficking
# dAP -0.0021) with an interval of [-0.020, +0.016], and its delta on the test split was -0.0123; the
# teacher's int8, interval [-0.004, +0.005], moved test AP by -0.0019.
GATE_CONFIDENCE = 0.9
GATE_RESAMPLES = 1000


def batch_invariance(predictor: Any, texts: Sequence[str], batched_probs: np.ndarray) -> float:
    """Largest |probability change| of a text scored alone vs inside the gate's batches.

    Args:
        predictor: a ``model.predictor.Predictor`` over the variant.
        texts: the gate texts; ``batched_probs`` (n, L) their probabilities from batched scoring.

    Returns:
        max |p_alone - p_batched| over up to ``BATCH_INVARIANCE_TEXTS`` texts spread over the set.
    """
    n = len(texts)
    if n == 0:
        return 0.0
    idx = np.unique(np.linspace(0, n - 1, num=min(n, BATCH_INVARIANCE_TEXTS)).round().astype(int))
    alone = np.vstack([predictor.predict_proba([texts[i]]) for i in idx])
    return float(np.abs(alone - batched_probs[idx]).max())


# --------------------------------------------------------------------------------------------------
# export and quantisation


def export_fp32(
    directory: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    optimize: bool = False,
    model_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Export the artifact's torch model to an fp32 ONNX graph with dynamic batch and sequence axes.

    Inputs ``input_ids`` and ``attention_mask`` (int64, (batch, sequence)); output ``logits``
    (float32, (batch, num_labels)). With ``optimize`` the graph is also fused offline for BERT by
    ``onnxruntime.transformers.optimizer.optimize_model``. Off by default: onnxruntime's own load-time
    optimisations (``ORT_ENABLE_ALL``) on the plain graph were faster on MiniLM-L6 (4.3 vs 5.0 CPU
    ms/text fp32, 1.9 vs 2.3 int8, 2 threads; see README "Inference speed"), and it needs no pattern matcher.
    ``model_dir`` exports another model of the artifact (its distilled student) instead of its own.

    Raises:
        ArtifactError: the directory is not an artifact.
        RuntimeError: the exporter fails.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    directory, out_path = Path(directory), Path(out_path)
    load_meta(directory)  # a clear error for a non-artifact
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir or directory), local_files_only=True, attn_implementation="eager"
    )
    model.eval()

    class _Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    # A padded example: row 1 has mask zeros, so the traced graph keeps the attention mask.
    ids = torch.full((2, 16), 100, dtype=torch.long)  # (B, T)
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 9:] = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw = out_path.with_suffix(".raw.onnx") if optimize else out_path
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            _Logits(model),
            (ids, mask),
            str(raw),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if optimize:
        try:
            _optimize_bert(raw, out_path, model.config)
        finally:
            raw.unlink(missing_ok=True)
    return out_path


def _optimize_bert(src: Path, dst: Path, config) -> None:
    """Fuse a BERT graph with onnxruntime's transformer optimizer (offline, no network)."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "num_attention_heads", 0)
    hidden = getattr(config, "hidden_size", 0)
    model_type = "bert" if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta") else None
    if not model_type:
        logger.info("no transformer fusion for model_type %s; keeping the plain graph", config.model_type)
        os.replace(src, dst)
        return
    opt = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=0)
    logger.info("ONNX fusion: %s", {k: v for k, v in opt.get_fused_operator_statistics().items() if v})
    opt.save_model_to_file(str(dst))


def quantizable_groups(onnx_path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The nodes int8 dynamic quantisation turns int8 (MatMul/Gemm with a constant weight, Gather of a
    constant table), grouped per encoder layer and sublayer, in graph order.

    Group names: ``layer.<i>/attention.qkv`` (query, key and value projections), ``layer.<i>/attention.out``,
    ``layer.<i>/ffn.in``, ``layer.<i>/ffn.out`` for the exporter's HF module paths
    (``.../layer.<i>/attention/self/query/MatMul`` ...); ``embeddings`` for the Gathers; any other node
    (pooler, classifier) is its own group, named by its module path.
    """
    import re

    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    consts = {t.name for t in g.initializer}
    kinds = (
        ("attention/self/", "attention.qkv"),
        ("attention/output/", "attention.out"),
        ("intermediate/", "ffn.in"),
        ("output/", "ffn.out"),
    )
    groups: dict[str, list[str]] = {}
    for n in g.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2 and n.input[1] in consts:
            m = re.search(r"layer\.(\d+)/(.*)$", n.name)
            key = n.name.rsplit("/", 1)[0].lstrip("/") or n.name
            if m:
                key = next((f"layer.{m.group(1)}/{k}" for p, k in kinds if m.group(2).startswith(p)), key)
        elif n.op_type == "Gather" and n.input and n.input[0] in consts:
            key = "embeddings"
        else:
            continue
        groups.setdefault(key, []).append(n.name)
    return groups


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    keep_fp32: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> Path:
    """Int8 dynamic quantisation of an fp32 ONNX graph: MatMul (and Gather/Attention) weights int8
    per channel, activations quantised at run time; nodes named in ``keep_fp32`` stay fp32; with
    ``only``, just those nodes are quantised. Returns ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    quiet = _DropInfoFrom("onnxruntime")  # the quantiser logs one INFO line per tensor on the root logger
    root.addFilter(quiet)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=list(keep_fp32),
            nodes_to_quantize=list(only) if only is not None else None,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(quiet)
    return Path(dst)


class _DropInfoFrom(logging.Filter):
    """Drops records below WARNING whose source file path contains ``fragment``, and the quantiser's
    advice to pre-process (shape inference), which does not apply to the exported graph."""

    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        if self.fragment not in (record.pathname or ""):
            return True
        return (
            record.levelno >= logging.WARNING
            and "pre-processing before quantization" not in record.getMessage()
        )


# --------------------------------------------------------------------------------------------------
# the accuracy gate


def per_label_ap(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """Average precision per label (``sklearn.metrics.average_precision_score``); None where the
    label has no positives or no negatives among the targets (AP undefined or trivial).

    Args:
        probs: (n, L) scores. targets: (n, L) 0/1. labels: L names.
    """
    from sklearn.metrics import average_precision_score

    out: dict[str, float | None] = {}
    for j, name in enumerate(labels):
        y = np.asarray(targets[:, j]).astype(int)
        out[name] = float(average_precision_score(y, probs[:, j])) if 0 < y.sum() < len(y) else None
    return out


def ap_deltas(
    probs: np.ndarray, ref_probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]
) -> dict[str, float | None]:
    """Per-label AP(probs) - AP(ref_probs) on the same targets; None where AP is undefined."""
    a, r = per_label_ap(probs, targets, labels), per_label_ap(ref_probs, targets, labels)
    return {n: (None if (x := a[n]) is None or (y := r[n]) is None else x - y) for n in labels}


def bootstrap_ap(
    probs: np.ndarray, targets: np.ndarray, *, n_resamples: int = GATE_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Per-label average precision on ``n_resamples`` seeded resamples of the texts (with
    replacement; the same draws for every call with the same ``n`` and ``seed``, so two scorers'
    arrays are paired resample by resample).

    Args:
        probs: (n, L) scores. targets: (n, L) 0/1. n_resamples: at least 10.

    Returns:
        (n_resamples, L) float array; NaN where a resample lacks positives or negatives of a label.

    Raises:
        ValueError: ``n_resamples`` < 10, or ``probs`` and ``targets`` shapes that disagree.
    """
    from sklearn.metrics import average_precision_score

    probs, targets = np.asarray(probs), np.asarray(targets)
    if n_resamples < 10:
        raise ValueError(f"n_resamples must be >= 10, not {n_resamples}")
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(f"shapes disagree: {probs.shape}, {targets.shape}")
    n, n_labels = targets.shape
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    out = np.full((n_resamples, n_labels), np.nan)
    for j in range(n_labels):
        y = targets[:, j].astype(int)
        for r, idx in enumerate(draws):
            yb = y[idx]
            if 0 < yb.sum() < n:
                out[r, j] = average_precision_score(yb, probs[idx, j])
    return out


def ap_delta_interval(
    probs: np.ndarray,
    ref_probs: np.ndarray,
    targets: np.ndarray,
    labels: Sequence[str],
    *,
    confidence: float = GATE_CONFIDENCE,
    n_resamples: int = GATE_RESAMPLES,
    seed: int = 0,
    ref_boot: np.ndarray | None = None,
) -> dict[str, tuple[float, float] | None]:
    """Per-label paired percentile-bootstrap interval of AP(probs) - AP(ref_probs) (Efron &
    Tibshirani 1993): both scorers' APs on the same ``bootstrap_ap`` resamples, and the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of their differences.

    Args:
        probs, ref_probs: (n, L) scores of the variant and of the reference. targets: (n, L) 0/1.
        labels: L names. confidence: in (0, 1). n_resamples: at least 10.
        ref_boot: ``bootstrap_ap(ref_probs, targets, n_resamples=..., seed=...)`` when already
            computed (the gate compares several variants with one reference); else computed here.

    Returns:
        ``{label: (low, high)}``; None where the label has no positives or no negatives, or where
        fewer than half the resamples hold both classes (too few positives for an interval).

    Raises:
        ValueError: ``confidence`` outside (0, 1), ``n_resamples`` < 10, or shapes that disagree.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    probs, ref_probs = np.asarray(probs), np.asarray(ref_probs)
    if probs.shape != ref_probs.shape or probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"shapes disagree: {probs.shape}, {ref_probs.shape}, {len(labels)} labels")
    boot = bootstrap_ap(probs, targets, n_resamples=n_resamples, seed=seed)
    if ref_boot is None:
        ref_boot = bootstrap_ap(ref_probs, targets, n_resamples=n_resamples, seed=seed)
    out: dict[str, tuple[float, float] | None] = {}
    for j, name in enumerate(labels):
        deltas = (boot[:, j] - ref_boot[:, j])[~np.isnan(boot[:, j])]
        if len(deltas) < n_resamples / 2:
            out[name] = None
            continue
        lo, hi = np.quantile(deltas, [(1 - confidence) / 2, (1 + confidence) / 2])
        out[name] = (float(lo), float(hi))
    return out


def intervals_pass(intervals: dict[str, tuple[float, float] | None], tolerance: float) -> bool:
    """The equivalence rule: every defined interval lies inside ``[-tolerance, +tolerance]``."""
    return all(iv is None or (-tolerance <= iv[0] and iv[1] <= tolerance) for iv in intervals.values())


def decision_deltas(
    probs: np.ndarray,
    ref_probs: np.ndarray,
    targets: np.ndarray,
    thresholds: Sequence[float],
    labels: Sequence[str],
    tolerance: float = DECISION_TOLERANCE,
    *,
    ref_thresholds: Sequence[float] | None = None,
    target_precision: Sequence[float] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Per label, precision and recall at the label's threshold of ``probs`` minus those of ``ref_probs``,
    and the change each may make: ``max(tolerance, DECISION_MIN_TEXTS / denominator)`` (denominator: the
    reference's flagged count for precision, the positives for recall).

    Args:
        probs, ref_probs: (n, L) calibrated probabilities of a variant and of the reference.
        targets: (n, L) 0/1. thresholds: L thresholds (flag when probability >= threshold).
        labels: L names.
        ref_thresholds: the reference's thresholds where they differ (a variant with its own
            calibration); default ``thresholds``.
        target_precision: with ``ref_thresholds``, the L precision targets both sets of thresholds
            were chosen for. Two thresholds chosen separately for one target land at different
            precisions, so the comparison is then one-sided (``"one_sided": 1.0``): ``precision`` is
            the variant's precision minus ``min(target, reference precision)`` and ``recall`` the
            variant's minus the reference's; each may fall by at most its allowance, and neither is
            held against a gain. ``flagged`` is recorded, not gated.

    Returns:
        ``{label: {"precision": delta | None, "recall": delta | None, "flagged": relative change of
        the number flagged, and "<metric>_allowed": float for each}}``; a delta is None where the metric is undefined for either (no
        positives for recall; nothing flagged for precision), via ``sklearn.metrics.precision_score``
        / ``recall_score`` with ``zero_division=nan``. ``decisions_pass`` reads it.
    """
    from sklearn.metrics import precision_score, recall_score

    ref_thr = list(thresholds if ref_thresholds is None else ref_thresholds)
    out: dict[str, dict[str, float | None]] = {}
    for j, name in enumerate(labels):
        y = np.asarray(targets[:, j]).astype(int)
        row: dict[str, float | None] = {}
        for metric, fn in (("precision", precision_score), ("recall", recall_score)):
            a, r = (
                float(fn(y, (p[:, j] >= t).astype(int), zero_division=np.nan))
                for p, t in ((probs, thresholds[j]), (ref_probs, ref_thr[j]))
            )
            if target_precision is not None and metric == "precision":
                r = min(float(target_precision[j]), r)  # the floor the variant's threshold must keep
            row[metric] = None if np.isnan(a) or np.isnan(r) else a - r
        if target_precision is not None:
            row["one_sided"] = 1.0
        flagged = int((ref_probs[:, j] >= ref_thr[j]).sum())
        # how many texts are flagged, relative to the reference (defined even where precision is not:
        # a variant that flags nothing, on a label without positives among the texts)
        row["flagged"] = (int((probs[:, j] >= thresholds[j]).sum()) - flagged) / max(flagged, 1)
        for metric, denominator in (("precision", flagged), ("recall", int(y.sum())), ("flagged", flagged)):
            row[f"{metric}_allowed"] = max(tolerance, DECISION_MIN_TEXTS / max(denominator, 1))
        out[name] = row
    return out


def decisions_pass(decisions: dict[str, dict[str, float | None]]) -> bool:
    """True when every defined delta of ``decision_deltas`` is within its allowance (one-sided rows:
    precision and recall may not fall by more than it; a gain always passes)."""
    for row in decisions.values():
        for m in DECISION_METRICS:
            d, allowed = row.get(m), row[f"{m}_allowed"]
            if d is None:
                continue
            if row.get("one_sided"):
                if m != "flagged" and d < -allowed:  # type: ignore[operator]
                    return False
            elif abs(d) > allowed:  # type: ignore[operator]
                return False
    return True


def _timed_scores(predictor, texts: list[str]) -> tuple[np.ndarray, float]:
    """(n, L) probabilities and texts/s (tokenisation included) of one full pass after a warm-up batch."""
    predictor.predict_proba(texts[: min(len(texts), 8)])  # warm-up: thread pools, allocator
    t0 = time.perf_counter()
    probs = predictor.predict_proba(texts)
    dt = time.perf_counter() - t0
    return probs, len(texts) / dt if dt > 0 else float("inf")


def add_onnx_variants(
    artifact_dir: str | os.PathLike[str],
    texts: list[str],
    targets: np.ndarray,
    *,
    quantize: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    decision_tolerance: float = DECISION_TOLERANCE,
    num_threads: int | None = None,
    mixed: str = "auto",
    max_fp32_groups: int = MAX_FP32_GROUPS,
    confidence: float | None = GATE_CONFIDENCE,
) -> dict:
    """Export ONNX variants into an artifact, gate them on labelled texts, record them in ``adrisk.json``.

    Writes ``<artifact>/onnx/model.fp32.onnx`` and, with ``quantize``, ``model.int8.onnx`` (every
    quantisable node int8) and, where that fails the gate (``mixed="auto"``) or always
    (``mixed="always"``), ``model.int8-mixed.onnx``: int8 with the layers measured most sensitive kept
    fp32. Sensitivity-guided mixed precision: each group of ``quantizable_groups`` is quantised alone
    and its mean |logit change| against fp32 measured on up to ``SENSITIVITY_TEXTS`` of the texts; then
    the 1, 2, ... ``max_fp32_groups`` most sensitive groups stay fp32 until the variant passes the gate
    (the layer-wise sensitivity analysis of mixed-precision quantisation, e.g. Dong et al., "HAWQ",
    ICCV 2019, with the measured output error in place of the Hessian).

    Scores ``texts`` with the fp32 torch predictor and with each variant, and records per variant:
    ``file``, ``sha256``, ``ap`` and ``ap_delta`` per label (variant minus torch fp32),
    ``decision_delta`` (per label, precision and recall at the artifact's threshold, variant minus
    torch, with each one's allowance), ``decision_max_abs``, ``decision_passed``, ``max_abs_prob_diff``,
    ``batch_invariance_max_abs``, ``passed`` (every defined |ap_delta| <= ``tolerance`` and, with
    ``confidence``, every ``ap_delta_interval`` inside +-``tolerance``, every decision
    delta within its allowance (``decisions_pass``), and batch-invariant) and ``texts_per_s`` (measured on these texts, tokenisation
    included, ``num_threads`` intra-op threads, the predictor's default batching); the mixed variant
    also ``fp32_groups`` and ``sensitivity``. Sets ``runtimes.default`` to the fastest of torch and the
    passing variants. Modifies the artifact in place (``adrisk.json`` keeps every other field;
    ``weights_sha256`` is unchanged).

    Args:
        artifact_dir: a model artifact directory (``model.artifact``).
        texts: labelled texts, e.g. the validation split (a few thousand: the gate's AP needs
            positives of every label; speed is measured on the same pass).
        targets: (n, L) 0/1 array, columns in the artifact's label order.
        quantize: also make the int8 variants.
        tolerance: the per-label AP gate (absolute).
        decision_tolerance: the per-label gate on precision and recall at the threshold (absolute;
            at least ``DECISION_MIN_TEXTS`` texts' worth).
        num_threads: intra-op threads for torch and ONNX Runtime (default ``default_num_threads()``).
        mixed: "auto" (search only when full int8 fails), "always" or "never".
        max_fp32_groups: most groups the search keeps fp32.
        confidence: the AP gate's equivalence test: each label's paired-bootstrap interval of the AP
            delta at this confidence (``ap_delta_interval``) must also lie inside +-``tolerance``
            (recorded as ``ap_delta_interval``); None tests the point estimate only.

    Returns:
        The ``runtimes`` dict written to ``adrisk.json``.

    Raises:
        ArtifactError: not an artifact. ValueError: ``targets`` does not match ``texts`` and the
        labels, no label has both classes (the gate cannot be evaluated), ``mixed`` is unknown, or
        ``confidence`` is outside (0, 1).
    """
    from model.predictor import Predictor

    directory = Path(artifact_dir)
    meta = load_meta(directory)
    texts = list(texts)
    targets = np.asarray(targets)
    labels = list(meta.labels)
    if mixed not in ("auto", "always", "never"):
        raise ValueError(f"mixed must be 'auto', 'always' or 'never', not {mixed!r}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1) or None, not {confidence}")
    if targets.shape != (len(texts), len(labels)):
        raise ValueError(
            f"targets shape {targets.shape}, expected ({len(texts)}, {len(labels)}) for labels {labels}"
        )
    if not any(0 < targets[:, j].sum() < len(texts) for j in range(len(labels))):
        raise ValueError("no label has both positives and negatives among the texts; the AP gate needs them")
    threads = int(num_threads) if num_threads else default_num_threads()

    # 1. the fp32 torch reference (and its speed)
    ref = Predictor.load(directory, runtime="torch", num_threads=threads)
    ref_probs, torch_tps = _timed_scores(ref, texts)
    ref_ap = per_label_ap(ref_probs, targets, labels)
    # the reference's resampled APs, computed once for every variant's interval
    ref_boot = bootstrap_ap(ref_probs, targets) if confidence else None
    logger.info("torch fp32: %.1f texts/s on %d gate texts", torch_tps, len(texts))

    # 2. export into onnx/
    onnx_dir = directory / ONNX_DIR
    onnx_dir.mkdir(exist_ok=True)
    for stale in (*ALL_FILES, TRIAL_FILE):
        (onnx_dir / stale).unlink(missing_ok=True)
    t0 = time.perf_counter()
    export_fp32(directory, onnx_dir / FP32_FILE)
    logger.info("exported %s in %.1f s", FP32_FILE, time.perf_counter() - t0)

    import onnxruntime
    import torch

    def predictor_for(file: str, precision: str) -> Any:
        info = {"name": file, "file": file, "precision": precision}
        rt = OnnxRuntime(directory, info, num_threads=threads, verify=False)
        return Predictor(
            ref.encoder, rt, meta, batch_size=ref.batch_size, max_tokens=ref.max_tokens, blend=ref.blend
        )

    def gate(name: str, file: str, precision: str, **extra: Any) -> dict[str, Any]:
        """Score the variant on the gate texts, time it, and decide whether it passes."""
        info: dict[str, Any] = {
            "name": name,
            "file": file,
            "sha256": sha256_file(onnx_dir / file),
            "precision": precision,
            "per_row": precision.startswith("int8"),
            "opset": OPSET,
            "source_weights_sha256": meta.weights_sha256,
            "exported_with": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            **extra,
        }
        # the reference's calibration and TF-IDF blend
        pred = Predictor(
            ref.encoder,
            OnnxRuntime(directory, info, num_threads=threads),
            meta,
            batch_size=ref.batch_size,
            max_tokens=ref.max_tokens,
            blend=ref.blend,
        )
        probs, tps = _timed_scores(pred, texts)
        ap = per_label_ap(probs, targets, labels)
        delta = {n: (None if (x := ap[n]) is None or (y := ref_ap[n]) is None else x - y) for n in labels}
        intervals = (
            ap_delta_interval(probs, ref_probs, targets, labels, confidence=confidence, ref_boot=ref_boot)
            if confidence
            else {}
        )
        batch_drift = batch_invariance(pred, texts, probs)
        decisions = decision_deltas(
            probs,
            ref_probs,
            targets,
            meta.threshold_vector(),
            labels,
            decision_tolerance,
        )
        decision_max = max(
            (abs(d) for row in decisions.values() for m in DECISION_METRICS if (d := row[m]) is not None),
            default=0.0,
        )
        info.update(
            ap=ap,
            ap_delta=delta,
            ap_delta_interval={
                n: None if iv is None else [round(iv[0], 5), round(iv[1], 5)] for n, iv in intervals.items()
            },
            decision_delta=decisions,
            decision_max_abs=decision_max,
            decision_passed=decisions_pass(decisions),
            max_abs_prob_diff=float(np.abs(probs - ref_probs).max()),
            batch_invariance_max_abs=batch_drift,
            passed=all(d is None or abs(d) <= tolerance for d in delta.values())
            and intervals_pass(intervals, tolerance)
            and decisions_pass(decisions)
            and batch_drift <= BATCH_INVARIANCE_TOLERANCE,
            texts_per_s=round(tps, 2),
        )
        logger.info(
            "%s: %.1f texts/s, AP deltas %s (%g%% intervals %s), precision/recall at threshold within %.4f, "
            "batch drift %.2g, %s",
            name,
            tps,
            {n: None if d is None else round(d, 5) for n, d in delta.items()},
            100 * (confidence or 0),
            {n: None if iv is None else [round(iv[0], 4), round(iv[1], 4)] for n, iv in intervals.items()},
            decision_max,
            batch_drift,
            "passed" if info["passed"] else "FAILED the gate",
        )
        return info

    # 3. gate and time each variant on the same texts
    variants: dict[str, dict] = {FP32_VARIANT: gate(FP32_VARIANT, FP32_FILE, "fp32")}
    if quantize:
        quantize_int8(onnx_dir / FP32_FILE, onnx_dir / INT8_FILE)
        variants[INT8_VARIANT] = gate(INT8_VARIANT, INT8_FILE, "int8-dynamic, per-row")
        if mixed == "always" or (mixed == "auto" and not variants[INT8_VARIANT]["passed"]):
            found = _sensitivity_guided_mixed(
                onnx_dir, texts, predictor_for, gate, max_fp32_groups=max_fp32_groups
            )
            if found is not None:
                variants[INT8_MIXED_VARIANT] = found

    # 3b. a distilled student (training/experiments/distill.py), gated against the same torch reference
    student_dir = directory / STUDENT_DIR
    if (student_dir / "config.json").is_file():
        scfg = json.loads((student_dir / "config.json").read_text())
        student = {
            "student": {
                "num_hidden_layers": scfg.get("num_hidden_layers"),
                "teacher_layers": scfg.get("adrisk_teacher_layers"),
                "weights_sha256": sha256_file(student_dir / "model.safetensors"),
            }
        }
        export_fp32(directory, onnx_dir / STUDENT_FP32_FILE, model_dir=student_dir)
        variants[STUDENT_FP32_VARIANT] = gate(STUDENT_FP32_VARIANT, STUDENT_FP32_FILE, "fp32", **student)
        if quantize:
            quantize_int8(onnx_dir / STUDENT_FP32_FILE, onnx_dir / STUDENT_INT8_FILE)
            variants[STUDENT_INT8_VARIANT] = gate(
                STUDENT_INT8_VARIANT, STUDENT_INT8_FILE, "int8-dynamic, per-row", **student
            )

    # 4. the default: fastest of torch and the passing variants
    speeds = {"torch": torch_tps, **{n: v["texts_per_s"] for n, v in variants.items() if v["passed"]}}
    default = max(speeds, key=lambda n: speeds[n])
    runtimes = {
        "default": default,
        "variants": variants,
        "torch": {"texts_per_s": round(torch_tps, 2), "ap": ref_ap},
        "gate": {
            "metric": "ap",
            "tolerance": tolerance,
            "confidence": confidence,
            "resamples": GATE_RESAMPLES if confidence else 0,
            "reference": "torch fp32",
            "n_texts": len(texts),
            "num_threads": threads,
            "batch_size": ref.batch_size,
            "max_tokens": ref.max_tokens,
            "batch_invariance_tolerance": BATCH_INVARIANCE_TOLERANCE,
            "decision_tolerance": decision_tolerance,
        },
    }
    save_meta(directory, meta.model_copy(update={"runtimes": runtimes}))
    logger.info("runtimes.default = %s", default)
    return runtimes


def _sensitivity_guided_mixed(
    onnx_dir: Path, texts: list[str], predictor_for, gate, *, max_fp32_groups: int
) -> dict[str, Any] | None:
    """Measure each quantisable group's sensitivity, then keep the most sensitive ones fp32 until the
    variant passes the gate (see ``add_onnx_variants``). Returns the last variant gated (passed or
    not, with ``fp32_groups`` and ``sensitivity``), or None when the graph has nothing to quantise."""
    fp32 = onnx_dir / FP32_FILE
    groups = quantizable_groups(fp32)
    if not groups:
        logger.info("no quantisable nodes found; no mixed int8 variant")
        return None
    t0 = time.perf_counter()
    idx = np.unique(
        np.linspace(0, len(texts) - 1, num=min(len(texts), SENSITIVITY_TEXTS)).round().astype(int)
    )
    sample = [texts[i] for i in idx]
    ref_logits = predictor_for(FP32_FILE, "fp32").score(sample).logits
    sensitivity: dict[str, float] = {}
    try:
        for name, nodes in groups.items():
            quantize_int8(fp32, onnx_dir / TRIAL_FILE, only=nodes)
            logits = predictor_for(TRIAL_FILE, "int8").score(sample).logits
            sensitivity[name] = float(np.abs(logits - ref_logits).mean())
    finally:
        (onnx_dir / TRIAL_FILE).unlink(missing_ok=True)
    order = sorted(sensitivity, key=lambda g: sensitivity[g], reverse=True)
    logger.info(
        "int8 sensitivity (mean |logit change|, that group alone int8) in %.1f s: %s",
        time.perf_counter() - t0,
        ", ".join(f"{g} {sensitivity[g]:.4f}" for g in order[:8]),
    )
    info: dict[str, Any] | None = None
    for k in range(1, min(max_fp32_groups, len(order)) + 1):
        keep = order[:k]
        quantize_int8(fp32, onnx_dir / INT8_MIXED_FILE, keep_fp32=[n for g in keep for n in groups[g]])
        info = gate(
            INT8_MIXED_VARIANT,
            INT8_MIXED_FILE,
            f"int8-dynamic, per-row; fp32: {', '.join(keep)}",
            fp32_groups=keep,
            sensitivity={g: round(sensitivity[g], 6) for g in order},
        )
        if info["passed"]:
            break
    return info


def remove_onnx_variants(artifact_dir: str | os.PathLike[str]) -> ArtifactMeta:
    """Delete ``onnx/`` variant files and clear ``runtimes`` (the model then serves with torch)."""
    directory = Path(artifact_dir)
    meta = load_meta(directory)
    for f in ALL_FILES:
        (directory / ONNX_DIR / f).unlink(missing_ok=True)
    meta = meta.model_copy(update={"runtimes": {}})
    save_meta(directory, meta)
    return meta


def read_labelled_jsonl(
    path: str | os.PathLike[str],
    labels: Sequence[str],
    *,
    text_column: str = "text",
    labels_column: str = "labels",
) -> tuple[list[str], np.ndarray]:
    """Read a JSONL file of ``{text_column: str, labels_column: [label names] | label name}`` rows.

    Returns:
        texts (n,) and targets (n, L) uint8 in ``labels`` order. Label names not in ``labels`` are
        ignored (e.g. a benign class of another schema).

    Raises:
        ValueError: a row is not JSON or lacks the columns (the message names the line, not the text).
    """
    index = {n: j for j, n in enumerate(labels)}
    texts, rows = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, names = row[text_column], row[labels_column]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{lineno}: not a JSON object with {text_column!r} and {labels_column!r} "
                    f"({type(e).__name__})"
                ) from None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: {text_column!r} is not a string")
            if isinstance(names, str):
                names = [names]
            y = np.zeros(len(labels), dtype=np.uint8)
            for n in names or []:
                if n in index:
                    y[index[n]] = 1
            texts.append(text)
            rows.append(y)
    return texts, (np.vstack(rows) if rows else np.zeros((0, len(labels)), dtype=np.uint8))
