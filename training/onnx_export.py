"""ONNX Runtime variants of a model artifact: export, int8 quantisation, and the variants the gate
tries (the gate's statistics are in ``training/variant_gate.py``; the ``OnnxRuntime`` that serves a
variant is in ``model/runtimes.py``).

A trained artifact can carry, beside its torch weights, ONNX variants under ``<artifact>/onnx/``::

    <dir>/onnx/model.fp32.onnx          fp32 graph (onnxruntime fuses it when it loads it)
    <dir>/onnx/model.int8.onnx          int8 dynamic quantisation of every weight MatMul, run per row
    <dir>/onnx/model.int8-static.onnx   int8 static quantisation (QDQ, calibrated activation scales), batched
    <dir>/onnx/model.int8-mixed.onnx    int8 static, but the sublayers measured most sensitive stay fp32
    <dir>/onnx/student.fp32.onnx, student.int8.onnx   the distilled student of <dir>/student/, if any

and ``adrisk.json`` records them under ``runtimes``::

    {"default": "onnx-int8-static" | "onnx-int8" | ... | "torch",
     "variants": {"onnx-fp32": {"file": ..., "sha256": ..., "per_row": bool, "ap_delta": {label: float},
                                "passed": bool, "texts_per_s": float, ...}, ...},
     "torch": {"texts_per_s": float}, "gate": {"metric": "ap", "tolerance": 0.005, "n_texts": int, ...}}

``default`` is the fastest (measured texts/s on the gate texts) among torch and the variants that
passed ``training.variant_gate.VariantGate``; ``Predictor.load(dir, runtime="auto")`` serves it.

Methods and sources:
- Export: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``; the dynamo exporter
  needs ``onnxscript``, which adrisk does not depend on), opset 17, dynamic batch and sequence axes.
  The example batch is deliberately *padded* (one row has mask zeros): tracing with an all-ones
  mask lets transformers skip the mask and the exported graph would then ignore padding. The model
  is exported with eager attention (plain MatMul/Softmax); at load time onnxruntime
  (``ORT_ENABLE_ALL``) fuses bias+GELU, the scaled QK^T MatMul and LayerNorm.
- Dynamic int8: ``onnxruntime.quantization.quantize_dynamic`` (weights int8 symmetric per output
  channel, activations uint8 with one scale per tensor computed at run time). That scale is taken
  over the whole batch, so a text's score would move with its batch-mates: dynamic variants run
  *per row* (``OnnxRuntime.per_row``), one text per call.
- Static int8: ``onnxruntime.quantization.quantize_static`` in the QDQ format (weights int8 per output
  channel, activations uint8 with scales calibrated once, min-max, on up to ``CALIBRATION_TEXTS`` of
  the gate's texts through a ``CalibrationDataReader``; only MatMuls with a constant weight). The
  scales are constants of the graph, so each row's arithmetic is its own and the variant batches
  (length-sorted, token-budgeted, as every batched runtime) while staying batch-invariant.
- Mixed precision (``_sensitivity_guided_mixed``): each sublayer group (attention q/k/v, attention
  output, FFN in, FFN out per layer; the head) is quantised alone with the static recipe and its
  logit error measured; the most sensitive stay fp32 until the gate passes (the layer-wise
  sensitivity analysis of Dong et al., "HAWQ", ICCV 2019, with the measured output error in place
  of the Hessian). BERT's FFN outputs carry the outlier activations that make it hard to quantise
  per tensor (Bondarenko et al., "Understanding and Overcoming the Challenges of Efficient
  Transformer Quantization", EMNLP 2021).
  See https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import load_meta, save_meta, sha256_file
from model.runtimes import (
    ALL_FILES,
    FP32_FILE,
    FP32_VARIANT,
    INPUT_NAMES,
    INT8_FILE,
    INT8_MIXED_FILE,
    INT8_MIXED_VARIANT,
    INT8_STATIC_FILE,
    INT8_STATIC_VARIANT,
    INT8_TOKEN_FILE,
    INT8_TOKEN_VARIANT,
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
from training.variant_gate import (
    DECISION_TOLERANCE,
    DEFAULT_TOLERANCE,
    GATE_CONFIDENCE,
    GATE_RESAMPLES,
    VariantGate,
)

logger = logging.getLogger(__name__)

OPSET = 17
# Static int8: texts (spread over the gate texts) whose activation ranges set the scales.
CALIBRATION_TEXTS = 256
# Sensitivity-guided mixed precision: texts used to measure each group's error, most groups kept fp32.
SENSITIVITY_TEXTS = 256
MAX_FP32_GROUPS = 6
TRIAL_FILE = "trial.int8.onnx"


# --------------------------------------------------------------------------------------------------
# export and quantisation


def export_fp32(
    directory: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Export the artifact's torch model to an fp32 ONNX graph with dynamic batch and sequence axes.

    Inputs ``input_ids`` and ``attention_mask`` (int64, (batch, sequence)); output ``logits``
    (float32, (batch, num_labels)). ``model_dir`` exports another model of the artifact (its
    distilled student) instead of its own.

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
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            _Logits(model),
            (ids, mask),
            str(out_path),
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
    return out_path


def quantizable_groups(onnx_path: str | os.PathLike[str], *, gathers: bool = True) -> dict[str, list[str]]:
    """The nodes int8 quantisation turns int8 (MatMul/Gemm with a constant weight and, with
    ``gathers``, Gather of a constant table), grouped per encoder layer and sublayer, in graph order.

    Group names: ``layer.<i>/attention.qkv`` (query, key and value projections), ``layer.<i>/attention.out``,
    ``layer.<i>/ffn.in``, ``layer.<i>/ffn.out`` for the exporter's HF module paths
    (``.../layer.<i>/attention/self/query/MatMul`` ...); ``embeddings`` for the Gathers; any other node
    (pooler, classifier) is its own group, named by its module path.
    """
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
        elif gathers and n.op_type == "Gather" and n.input and n.input[0] in consts:
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
    """Int8 dynamic quantisation of an fp32 ONNX graph: MatMul (and Gather) weights int8 per channel,
    activations quantised at run time; nodes named in ``keep_fp32`` stay fp32; with ``only``, just
    those nodes are quantised. Returns ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantiser():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=list(keep_fp32),
            nodes_to_quantize=list(only) if only is not None else None,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return Path(dst)


def quantize_int8_static(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], token_ids: Sequence[Sequence[int]]
) -> Path:
    """Int8 static quantisation of an fp32 ONNX graph (``onnxruntime.quantization.quantize_static``,
    QDQ format): the encoder's MatMul weights int8 per output channel (the pooler and classifier
    Gemms, a few h^2 per text, stay fp32), their activation inputs uint8 with one scale and zero
    point per tensor calibrated (min-max) on ``token_ids``, fixed in the graph.

    Args:
        src, dst: the fp32 graph and where to write the quantised one.
        token_ids: the calibration texts as unpadded token id sequences, run one per call.

    Returns:
        ``dst``.

    Raises:
        ValueError: no calibration texts.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not token_ids:
        raise ValueError("static quantisation needs calibration texts")

    class TokenReader(CalibrationDataReader):
        """One unpadded (1, T) text per call."""

        def __init__(self, rows: Sequence[Sequence[int]]):
            self.rows = iter(rows)

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self.rows, None)
            if row is None:
                return None
            ids = np.asarray(row, dtype=np.int64)[None, :]
            return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    with _quiet_quantiser():
        quantize_static(
            str(src),
            str(dst),
            TokenReader(token_ids),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,  # u8 x s8: the VNNI / AVX2 int8 GEMM kernels' layout
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True},  # attention's QK^T and AV stay fp32
        )
    return Path(dst)


def quantize_int8_per_token(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    keep_fp32: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> Path:
    """Int8 with per-token activation scales: every MatMul with a constant weight W (K, N) becomes

        s = max(|x|, over the token's K features) / 127      (..., 1)   one scale per token
        x_q = round(x / s) + 128                              (..., K)   uint8, zero point 128
        y = MatMulInteger(x_q, W_q) * s * s_w                 (..., N)   W_q int8 per output channel

    (Abs and ReduceMax for the scales; QuantizeLinear with a per-axis scale over the (tokens, K) rows;
    onnxruntime's contrib ``MatMulIntegerToFloat``, the u8s8 kernel its dynamic int8 uses, for the
    product and the weight scales; one Mul for the token scales). Each token's scale
    depends on that token alone, so a text's score does not depend on its batch-mates or its
    padding, and the graph runs batched; a token's outlier features cost that token's resolution
    only, where a per-tensor scale (dynamic or calibrated) spends every token's. Token-wise
    activation quantisation as in ZeroQuant (Yao et al., NeurIPS 2022) and LLM.int8() (Dettmers et
    al., NeurIPS 2022, without its fp16 outlier path); symmetric per-channel weights. The pooler and
    classifier Gemms (a few h^2 per text) and nodes named in ``keep_fp32`` stay fp32; with ``only``,
    just those nodes are quantised.

    Returns:
        ``dst``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep, wanted = set(keep_fp32), None if only is None else set(only)
    targets = [
        n
        for n in g.node
        if n.op_type == "MatMul"
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
        and n.name not in keep
        and (wanted is None or n.name in wanted)
    ]
    shared = [
        helper.make_tensor("pt/eps", TensorProto.FLOAT, [], [1e-12]),
        helper.make_tensor("pt/qmax", TensorProto.FLOAT, [], [127.0]),
        helper.make_tensor("pt/one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("pt/zero_u8", TensorProto.UINT8, [], [128]),
        helper.make_tensor("pt/axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("pt/start0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("pt/end_last", TensorProto.INT64, [1], [-1]),
    ]
    zero_u8_1d = helper.make_tensor("zero_u8", TensorProto.UINT8, [1], [128])
    nodes: list[Any] = []
    replaced = {}
    for k, node in enumerate(targets):
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # (K, N)
        s_w = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0  # (N,)
        w_q = np.clip(np.round(w / s_w), -127, 127).astype(np.int8)
        p, x, y = f"pt/{k}/", node.input[0], node.output[0]
        shared += [
            numpy_helper.from_array(w_q, p + "w_q"),
            numpy_helper.from_array(s_w.astype(np.float32), p + "s_w"),
            numpy_helper.from_array(np.array([-1, w.shape[0]], dtype=np.int64), p + "rows_shape"),
            numpy_helper.from_array(np.array([w.shape[1]], dtype=np.int64), p + "n"),
        ]
        # (..., K) -> (M, K) rows, one per token; QuantizeLinear's per-axis scale and zero point
        # quantise each row with its own scale in one pass; MatMulIntegerToFloat (onnxruntime's
        # contrib op, the kernel its dynamic int8 uses) multiplies and applies the weight scales.
        replaced[node.name] = [
            helper.make_node("Shape", [x], [p + "x_shape"]),
            helper.make_node("Reshape", [x, p + "rows_shape"], [p + "x2"]),
            helper.make_node("Abs", [p + "x2"], [p + "abs"]),
            helper.make_node("ReduceMax", [p + "abs"], [p + "amax"], axes=[1], keepdims=0),
            helper.make_node("Max", [p + "amax", "pt/eps"], [p + "amax_eps"]),
            helper.make_node("Div", [p + "amax_eps", "pt/qmax"], [p + "s"]),
            helper.make_node("Shape", [p + "s"], [p + "s_shape"]),
            helper.make_node("ConstantOfShape", [p + "s_shape"], [p + "zp"], value=zero_u8_1d),
            helper.make_node("QuantizeLinear", [p + "x2", p + "s", p + "zp"], [p + "x_q"], axis=0),
            helper.make_node(
                "MatMulIntegerToFloat",
                [p + "x_q", p + "w_q", "pt/one", p + "s_w", "pt/zero_u8"],
                [p + "y_w"],
                domain="com.microsoft",
            ),
            helper.make_node("Unsqueeze", [p + "s", "pt/axis1"], [p + "s_col"]),
            helper.make_node("Mul", [p + "y_w", p + "s_col"], [p + "y2"]),
            helper.make_node("Slice", [p + "x_shape", "pt/start0", "pt/end_last"], [p + "lead"]),
            helper.make_node("Concat", [p + "lead", p + "n"], [p + "y_shape"], axis=0),
            helper.make_node("Reshape", [p + "y2", p + "y_shape"], [y], name=node.name + "/int8-per-token"),
        ]
    for node in g.node:
        nodes.extend(replaced.get(node.name, [node]))
    still_read = {i for n in nodes for i in n.input}
    kept_inits = [t for t in g.initializer if t.name in still_read]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept_inits + shared)
    if targets and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


@contextmanager
def _quiet_quantiser() -> Iterator[None]:
    """The quantiser logs one INFO line per tensor on the root logger, and advice to pre-process
    (shape inference) that does not apply to the exported graph: drop both while it runs."""
    root = logging.getLogger()
    quiet = _DropInfoFrom("onnxruntime")
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


class _DropInfoFrom(logging.Filter):
    """Drops records below WARNING whose source file path contains ``fragment``, and the quantiser's
    advice to pre-process."""

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


def _spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)``."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int)) if n else np.zeros(0, int)


# --------------------------------------------------------------------------------------------------
# the variants the gate tries


class _Variants:
    """Builds, gates and records the variants of one artifact (the steps of ``add_onnx_variants``)."""

    def __init__(self, directory: Path, gate: VariantGate, reference: Any, threads: int):
        import onnxruntime
        import torch

        self.directory, self.gate, self.ref, self.threads = directory, gate, reference, threads
        self.onnx_dir = directory / ONNX_DIR
        self.meta = reference.meta
        self.versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
        self.variants: dict[str, dict[str, Any]] = {}

    def predictor(self, info: dict[str, Any], *, verify: bool = True) -> Any:
        """A ``Predictor`` over a variant file, with the reference's encoder, batching, calibration and
        TF-IDF blend."""
        from model.predictor import Predictor

        rt = OnnxRuntime(self.directory, info, num_threads=self.threads, verify=verify)
        return Predictor(
            self.ref.encoder,
            rt,
            self.meta,
            batch_size=self.ref.batch_size,
            max_tokens=self.ref.max_tokens,
            blend=self.ref.blend,
        )

    def add(self, name: str, file: str, precision: str, *, per_row: bool, **extra: Any) -> dict[str, Any]:
        """Gate the variant in ``onnx/<file>`` and record it under ``name``."""
        info: dict[str, Any] = {
            "name": name,
            "file": file,
            "sha256": sha256_file(self.onnx_dir / file),
            "precision": precision,
            "per_row": per_row,
            "opset": OPSET,
            "source_weights_sha256": self.meta.weights_sha256,
            "exported_with": self.versions,
            **extra,
        }
        info.update(self.gate.evaluate(name, self.predictor(info)))
        self.variants[name] = info
        return info

    def calibration_ids(self) -> list[list[int]]:
        """Token ids of up to ``CALIBRATION_TEXTS`` gate texts spread over the set (static scales)."""
        texts = [self.gate.texts[i] for i in _spread(len(self.gate.texts), CALIBRATION_TEXTS)]
        return list(self.ref.encoder.encode(texts).input_ids)

    def student(self, quantize: bool) -> None:
        """A distilled student (``training/experiments/distill.py``), gated against the same torch
        reference with the model's blend, temperatures and thresholds."""
        student_dir = self.directory / STUDENT_DIR
        if not (student_dir / "config.json").is_file():
            return
        scfg = json.loads((student_dir / "config.json").read_text())
        extra: dict[str, Any] = {
            "student": {
                "num_hidden_layers": scfg.get("num_hidden_layers"),
                "teacher_layers": scfg.get("adrisk_teacher_layers"),
                "weights_sha256": sha256_file(student_dir / "model.safetensors"),
            }
        }
        export_fp32(self.directory, self.onnx_dir / STUDENT_FP32_FILE, model_dir=student_dir)
        self.add(STUDENT_FP32_VARIANT, STUDENT_FP32_FILE, "fp32", per_row=False, **extra)
        if quantize:
            quantize_int8(self.onnx_dir / STUDENT_FP32_FILE, self.onnx_dir / STUDENT_INT8_FILE)
            self.add(STUDENT_INT8_VARIANT, STUDENT_INT8_FILE, "int8-dynamic, per-row", per_row=True, **extra)


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
    n_boot: int = GATE_RESAMPLES,
) -> dict:
    """Export ONNX variants into an artifact, gate them on labelled texts, record them in ``adrisk.json``.

    Writes ``<artifact>/onnx/model.fp32.onnx`` and, with ``quantize``, ``model.int8.onnx`` (dynamic,
    per row), ``model.int8-static.onnx`` (static, batched) and, where static int8 fails the gate
    (``mixed="auto"``) or always (``mixed="always"``), ``model.int8-mixed.onnx``: static int8 with the
    groups measured most sensitive kept fp32 (``_sensitivity_guided_mixed``). Each variant is scored
    on ``texts`` and held to ``training.variant_gate.VariantGate``; what it measured is recorded per
    variant with ``file``, ``sha256``, ``precision`` and ``per_row`` (the mixed variant also
    ``fp32_groups`` and ``sensitivity``). ``runtimes.default`` is the fastest of torch and the
    passing variants. Modifies the artifact in place (``adrisk.json`` keeps every other field;
    ``weights_sha256`` is unchanged).

    Args:
        artifact_dir: a model artifact directory (``model.artifact``).
        texts: labelled texts, e.g. the validation split (a few thousand: the gate's AP needs
            positives of every label; the same pass gives the speed; the static scales are
            calibrated on ``CALIBRATION_TEXTS`` of them).
        targets: (n, L) 0/1 array, columns in the artifact's label order.
        quantize: also make the int8 variants.
        tolerance, decision_tolerance, confidence, n_boot: the gate's (``VariantGate``).
        num_threads: intra-op threads for torch and ONNX Runtime (default ``default_num_threads()``).
        mixed: "auto" (search only when static int8 fails), "always" or "never".
        max_fp32_groups: most groups the search keeps fp32.

    Returns:
        The ``runtimes`` dict written to ``adrisk.json``.

    Raises:
        ArtifactError: not an artifact. ValueError: ``targets`` does not match ``texts`` and the
        labels, no label has both classes, ``mixed`` is unknown, ``confidence`` is outside (0, 1) or
        ``n_boot`` < 10.
    """
    from model.predictor import Predictor

    directory = Path(artifact_dir)
    load_meta(directory)  # a clear error for a non-artifact
    if mixed not in ("auto", "always", "never"):
        raise ValueError(f"mixed must be 'auto', 'always' or 'never', not {mixed!r}")
    threads = int(num_threads) if num_threads else default_num_threads()

    # 1. the fp32 torch reference (and its speed): the gate's baseline
    ref = Predictor.load(directory, runtime="torch", num_threads=threads)
    gate = VariantGate(
        ref,
        texts,
        targets,
        tolerance=tolerance,
        decision_tolerance=decision_tolerance,
        confidence=confidence,
        n_boot=n_boot,
    )

    # 2. export into onnx/
    onnx_dir = directory / ONNX_DIR
    onnx_dir.mkdir(exist_ok=True)
    for stale in (*ALL_FILES, TRIAL_FILE):
        (onnx_dir / stale).unlink(missing_ok=True)
    t0 = time.perf_counter()
    export_fp32(directory, onnx_dir / FP32_FILE)
    logger.info("exported %s in %.1f s", FP32_FILE, time.perf_counter() - t0)

    # 3. gate and time each variant on the same texts
    v = _Variants(directory, gate, ref, threads)
    v.add(FP32_VARIANT, FP32_FILE, "fp32", per_row=False)
    if quantize:
        quantize_int8(onnx_dir / FP32_FILE, onnx_dir / INT8_FILE)
        v.add(INT8_VARIANT, INT8_FILE, "int8-dynamic, per-row", per_row=True)
        quantize_int8_static(onnx_dir / FP32_FILE, onnx_dir / INT8_STATIC_FILE, v.calibration_ids())
        calibrated = {"calibration_texts": min(len(gate.texts), CALIBRATION_TEXTS)}
        static = v.add(INT8_STATIC_VARIANT, INT8_STATIC_FILE, "int8-static", per_row=False, **calibrated)
        quantize_int8_per_token(onnx_dir / FP32_FILE, onnx_dir / INT8_TOKEN_FILE)
        token = v.add(INT8_TOKEN_VARIANT, INT8_TOKEN_FILE, "int8-per-token", per_row=False)
        if mixed == "always" or (mixed == "auto" and not (static["passed"] or token["passed"])):
            _sensitivity_guided_mixed(v, max_fp32_groups=max_fp32_groups)
    v.student(quantize)

    # 4. the default: fastest of torch and the passing variants
    speeds = {
        "torch": gate.ref_texts_per_s,
        **{n: x["texts_per_s"] for n, x in v.variants.items() if x["passed"]},
    }
    default = max(speeds, key=lambda n: speeds[n])
    runtimes = {
        "default": default,
        "variants": v.variants,
        "torch": {"texts_per_s": round(gate.ref_texts_per_s, 2), "ap": gate.ref_ap},
        "gate": gate.record()
        | {"num_threads": threads, "batch_size": ref.batch_size, "max_tokens": ref.max_tokens},
    }
    save_meta(directory, load_meta(directory).model_copy(update={"runtimes": runtimes}))
    logger.info("runtimes.default = %s", default)
    return runtimes


def _sensitivity_guided_mixed(v: _Variants, *, max_fp32_groups: int) -> dict[str, Any] | None:
    """Measure each quantisable group's sensitivity under the per-token recipe (that group alone
    int8, mean |logit change| against fp32 on up to ``SENSITIVITY_TEXTS`` gate texts), then keep the
    most sensitive ones fp32 until the variant passes the gate. Returns the last variant gated
    (passed or not, with ``fp32_groups`` and ``sensitivity``), or None when the graph has nothing
    to quantise."""
    fp32 = v.onnx_dir / FP32_FILE
    groups = quantizable_groups(fp32, gathers=False)
    groups = {g: nodes for g, nodes in groups.items() if g.startswith("layer.")}  # the Gemm head stays fp32
    if not groups:
        logger.info("no quantisable nodes found; no mixed int8 variant")
        return None
    t0 = time.perf_counter()
    sample = [v.gate.texts[i] for i in _spread(len(v.gate.texts), SENSITIVITY_TEXTS)]

    def trial_logits(file: str) -> np.ndarray:
        return v.predictor({"file": file, "precision": "trial"}, verify=False).logits(sample)

    ref_logits = trial_logits(FP32_FILE)
    sensitivity: dict[str, float] = {}
    try:
        for name, nodes in groups.items():
            quantize_int8_per_token(fp32, v.onnx_dir / TRIAL_FILE, only=nodes)
            sensitivity[name] = float(np.abs(trial_logits(TRIAL_FILE) - ref_logits).mean())
    finally:
        (v.onnx_dir / TRIAL_FILE).unlink(missing_ok=True)
    order = sorted(sensitivity, key=lambda g: sensitivity[g], reverse=True)
    logger.info(
        "int8 sensitivity (mean |logit change|, that group alone int8) in %.1f s: %s",
        time.perf_counter() - t0,
        ", ".join(f"{g} {sensitivity[g]:.4f}" for g in order[:8]),
    )
    info: dict[str, Any] | None = None
    for k in range(1, min(max_fp32_groups, len(order)) + 1):
        keep = order[:k]
        quantize_int8_per_token(
            fp32, v.onnx_dir / INT8_MIXED_FILE, keep_fp32=[n for g in keep for n in groups[g]]
        )
        info = v.add(
            INT8_MIXED_VARIANT,
            INT8_MIXED_FILE,
            f"int8-per-token; fp32: {', '.join(keep)}",
            per_row=False,
            fp32_groups=keep,
            sensitivity={g: round(sensitivity[g], 6) for g in order},
        )
        if info["passed"]:
            break
    return info
