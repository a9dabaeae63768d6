"""ONNX Runtime variants: same scores as torch on the probe inputs, the gate recorded in the artifact,
runtime selection, and clear errors for missing or corrupted files.

Tolerances (calibrated probabilities, absolute): ONNX fp32 vs torch fp32 1e-4 (measured ~1e-7 on the
tiny model; the same arithmetic in another kernel order); ONNX int8 (every recipe) vs torch 0.05
(quantisation error on the tiny random model, whose probabilities sit near 0.5; the real accuracy
check is the per-label AP gate recorded by ``add_onnx_variants``). A statically quantised text alone vs
in a padded batch, and a per-token one: 1e-6 (scales are constants or the token's own; only fp32
round-off of padding remains).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from model.artifact import META_FILE, ArtifactError, load_meta
from model.predictor import Predictor
from model.runtimes import (
    FP32_VARIANT,
    INT8_MIXED_VARIANT,
    INT8_STATIC_VARIANT,
    INT8_TOKEN_VARIANT,
    INT8_VARIANT,
    ONNX_DIR,
)
from tests.conftest import LABELS
from training.onnx_export import add_onnx_variants
from training.variant_gate import (
    BATCH_INVARIANCE_TOLERANCE,
    DEFAULT_TOLERANCE,
    batch_invariance,
    decisions_pass,
    intervals_pass,
)

FP32_ATOL = 1e-4
INT8_ATOL = 0.05
STATIC_BATCH_ATOL = 1e-6
N_BOOT = 100  # bootstrap resamples of the gate's interval in these tests (the default is 1000)


def _probe_texts(probes) -> list[str]:
    texts = []
    for r in probes:
        if "predict" in r["where"].split(","):
            v = r["value"]
            texts.extend(v if isinstance(v, list) else [v])
    return texts


def _gate_data(n: int = 60, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    words = ["call", "now", "sweet", "girl", "job", "offer", "cheap", "flat", "win", "prize", "cash", "room"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]
    targets = (rng.random((n, len(LABELS))) < 0.4).astype(np.uint8)
    targets[0], targets[1] = 1, 0  # every label has both classes
    return texts, targets


@pytest.fixture(scope="module")
def onnx_artifact(tiny_artifact, tmp_path_factory):
    """A copy of the tiny artifact with fp32 and int8 variants added (the session fixture stays untouched)."""
    d = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(tiny_artifact, d)
    texts, targets = _gate_data()
    runtimes = add_onnx_variants(
        d, texts, targets, num_threads=1, mixed="always", max_fp32_groups=2, n_boot=N_BOOT
    )
    return d, runtimes


@pytest.fixture
def artifact_copy(onnx_artifact, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(onnx_artifact[0], d)
    return d


def test_runtimes_recorded_in_artifact(onnx_artifact):
    d, runtimes = onnx_artifact
    meta = load_meta(d)
    assert meta.runtimes.model_dump(mode="json") == runtimes  # typed on load, written as given
    assert set(runtimes["variants"]) == {
        FP32_VARIANT,
        INT8_VARIANT,
        INT8_STATIC_VARIANT,
        INT8_TOKEN_VARIANT,
        INT8_MIXED_VARIANT,
    }
    assert runtimes["gate"]["resamples"] == N_BOOT
    mixed = runtimes["variants"][INT8_MIXED_VARIANT]
    # the sensitivity search over the per-token recipe: every encoder weight MatMul group measured,
    # the most sensitive kept fp32 first
    sens = mixed["sensitivity"]
    assert {"layer.0/ffn.out", "layer.1/attention.qkv"} <= set(sens) and "embeddings" not in sens
    assert 1 <= len(mixed["fp32_groups"]) <= 2
    assert mixed["fp32_groups"] == sorted(sens, key=sens.get, reverse=True)[: len(mixed["fp32_groups"])]
    assert mixed["passed"] or len(mixed["fp32_groups"]) == 2  # stops at the first pass
    assert ", ".join(mixed["fp32_groups"]) in mixed["precision"]
    per_row = {n: v["per_row"] for n, v in runtimes["variants"].items()}
    assert per_row == {
        FP32_VARIANT: False,
        INT8_VARIANT: True,
        INT8_STATIC_VARIANT: False,
        INT8_TOKEN_VARIANT: False,
        INT8_MIXED_VARIANT: False,
    }
    static = runtimes["variants"][INT8_STATIC_VARIANT]
    assert static["calibration_texts"] == 60 and static["batch_invariance_max_abs"] <= STATIC_BATCH_ATOL
    for name, v in runtimes["variants"].items():
        assert (d / ONNX_DIR / v["file"]).is_file()
        assert len(v["sha256"]) == 64
        assert set(v["ap_delta"]) == set(LABELS)
        assert v["passed"] == (
            all(abs(x) <= 0.005 for x in v["ap_delta"].values() if x is not None)
            and intervals_pass({n: iv and tuple(iv) for n, iv in v["ap_delta_interval"].items()}, 0.005)
            and v["decision_passed"] == decisions_pass(v["decision_delta"])
            and v["decision_passed"]
            and v["batch_invariance_max_abs"] <= BATCH_INVARIANCE_TOLERANCE
        )
        assert v["texts_per_s"] > 0 and v["name"] == name
    fp32 = runtimes["variants"][FP32_VARIANT]
    assert fp32["passed"] and max(abs(x) for x in fp32["ap_delta"].values()) < 1e-6
    assert fp32["batch_invariance_max_abs"] < 1e-4  # padding round-off only
    passing = {
        "torch": runtimes["torch"]["texts_per_s"],
        **{n: v["texts_per_s"] for n, v in runtimes["variants"].items() if v["passed"]},
    }
    assert runtimes["default"] == max(passing, key=passing.get)


def test_onnx_fp32_and_int8_match_torch_on_probes(onnx_artifact, probes):
    d, _ = onnx_artifact
    texts = _probe_texts(probes)
    assert len(texts) >= 8
    ref = Predictor.load(d, runtime="torch", num_threads=1)
    fp32 = Predictor.load(d, runtime=FP32_VARIANT, num_threads=1)
    assert fp32.runtime.name == FP32_VARIANT
    p_ref = ref.predict_proba(texts)
    np.testing.assert_allclose(fp32.predict_proba(texts), p_ref, atol=FP32_ATOL)
    for variant in (INT8_VARIANT, INT8_STATIC_VARIANT, INT8_TOKEN_VARIANT, INT8_MIXED_VARIANT):
        p = Predictor.load(d, runtime=variant, num_threads=1)
        assert p.runtime.name == variant
        np.testing.assert_allclose(p.predict_proba(texts), p_ref, atol=INT8_ATOL)
    # dynamic int8 runs per row: a text's score does not depend on its batch-mates (dynamic scales
    # per text), nor on how many rows run at once (results come back in input order)
    one_core = Predictor.load(d, runtime=INT8_VARIANT, num_threads=1)
    two_cores = Predictor.load(d, runtime=INT8_VARIANT, num_threads=2)
    assert one_core.runtime.per_row and two_cores.runtime.num_threads == 2
    together = one_core.predict_proba(texts)
    alone = np.vstack([one_core.predict_proba([t]) for t in texts])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(two_cores.predict_proba(texts), together)
    padded = one_core.runtime.logits(*one_core.encoder.pad(one_core.encoder.encode(texts[:5]).input_ids))
    np.testing.assert_array_equal(padded, one_core.score(texts[:5]).logits)  # padding removed per row
    # static int8 runs batched (padded, several rows per call) and stays batch-invariant: its scales
    # are constants of the graph; so does fp32 (alone == inside a padded batch)
    for variant, atol in (
        (INT8_STATIC_VARIANT, STATIC_BATCH_ATOL),
        (INT8_TOKEN_VARIANT, STATIC_BATCH_ATOL),
        (INT8_MIXED_VARIANT, STATIC_BATCH_ATOL),
        (FP32_VARIANT, FP32_ATOL),
    ):
        p = Predictor.load(d, runtime=variant, num_threads=2)
        assert not p.runtime.per_row
        calls = []
        run = p.runtime._run
        p.runtime._run = lambda ids, mask, run=run, calls=calls: calls.append(ids.shape) or run(ids, mask)
        together = p.predict_proba(texts)
        assert any(rows > 1 for rows, _ in calls)  # it did batch
        alone = np.vstack([p.predict_proba([t]) for t in texts])
        np.testing.assert_allclose(together, alone, atol=atol, rtol=0)
    assert [p.truncated for p in fp32.predict(texts)] == [p.truncated for p in ref.predict(texts)]
    # on two threads a batch runs as two row chunks at once, each cut to its own longest row: the
    # same logits as the whole batch on one thread
    one = Predictor.load(d, runtime=INT8_TOKEN_VARIANT, num_threads=1)
    two = Predictor.load(d, runtime=INT8_TOKEN_VARIANT, num_threads=2)
    ids, mask = two.encoder.pad(two.encoder.encode(texts).input_ids)
    order = np.argsort(mask.sum(axis=1), kind="stable")
    ids, mask = ids[order], mask[order]
    assert mask[0].sum() < mask.shape[1]  # the shortest row has padding to drop
    calls = []
    run = two.runtime._run
    two.runtime._run = lambda i, m: calls.append(i.shape) or run(i, m)
    np.testing.assert_allclose(
        two.runtime.logits(ids, mask), one.runtime.logits(ids, mask), atol=STATIC_BATCH_ATOL, rtol=0
    )
    assert sorted(rows for rows, _ in calls) == [len(ids) // 2, len(ids) - len(ids) // 2]
    assert min(width for _, width in calls) < ids.shape[1]


@pytest.mark.parametrize("default", [FP32_VARIANT, INT8_VARIANT, INT8_TOKEN_VARIANT, "torch"])
def test_auto_picks_recorded_default(artifact_copy, default):
    meta_path = artifact_copy / META_FILE
    data = json.loads(meta_path.read_text())
    data["runtimes"]["default"] = default
    meta_path.write_text(json.dumps(data))
    assert Predictor.load(artifact_copy, runtime="auto", num_threads=1).runtime.name == default


def test_model_without_variants_serves_with_torch(tiny_artifact, probes):
    assert not load_meta(tiny_artifact).runtimes.variants
    assert not (tiny_artifact / ONNX_DIR).exists()
    p = Predictor.load(tiny_artifact, runtime="auto")
    assert p.runtime.name == "torch"
    probs = p.predict_proba(_probe_texts(probes))
    assert np.isfinite(probs).all()
    with pytest.raises(ValueError, match="unknown runtime"):
        Predictor.load(tiny_artifact, runtime=INT8_VARIANT)


def test_missing_onnx_file_is_a_clear_error(artifact_copy):
    (artifact_copy / ONNX_DIR / "model.int8.onnx").unlink()
    with pytest.raises(ArtifactError, match="not found"):
        Predictor.load(artifact_copy, runtime=INT8_VARIANT)
    assert Predictor.load(artifact_copy, runtime=FP32_VARIANT).runtime.name == FP32_VARIANT


def test_corrupted_onnx_file_is_a_clear_error(artifact_copy):
    path = artifact_copy / ONNX_DIR / "model.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        Predictor.load(artifact_copy, runtime=FP32_VARIANT)
    # without a recorded checksum, onnxruntime itself rejects a truncated file
    meta_path = artifact_copy / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["runtimes"]["variants"][FP32_VARIANT].pop("sha256")
    meta_path.write_text(json.dumps(meta))
    path.write_bytes(b"not an onnx model")
    with pytest.raises(ArtifactError, match="cannot load"):
        Predictor.load(artifact_copy, runtime=FP32_VARIANT)


def test_variant_from_other_weights_is_rejected(artifact_copy):
    meta_path = artifact_copy / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["runtimes"]["variants"][FP32_VARIANT]["source_weights_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="different weights"):
        Predictor.load(artifact_copy, runtime=FP32_VARIANT)


def test_gate_input_validation(artifact_copy):
    texts, targets = _gate_data(10)
    with pytest.raises(ValueError, match="targets shape"):
        add_onnx_variants(artifact_copy, texts, targets[:5])
    with pytest.raises(ValueError, match="both positives and negatives"):
        add_onnx_variants(artifact_copy, texts, np.zeros_like(targets))
    with pytest.raises(ValueError, match="confidence"):
        add_onnx_variants(artifact_copy, texts, targets, confidence=1.0)


def test_export_onnx_cli(tiny_artifact, tmp_path, capsys):
    from adrisk.cli import main

    d = tmp_path / "model"
    shutil.copytree(tiny_artifact, d)
    texts, targets = _gate_data(40, seed=1)
    data = tmp_path / "val.jsonl"
    with data.open("w") as f:
        for t, y in zip(texts, targets, strict=True):
            f.write(
                json.dumps({"text": t, "labels": [n for n, v in zip(LABELS, y, strict=True) if v]}) + "\n"
            )
    assert (
        main(["export-onnx", "--model", str(d), "--data", str(data), "--no-quantize", "--threads", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "| onnx-fp32 |" in out and "default runtime:" in out
    meta = load_meta(d)
    assert set(meta.runtimes.variants) == {FP32_VARIANT}
    assert meta.runtimes.gate.n_texts == 40 and meta.runtimes.gate.confidence == 0.9
    iv = meta.runtimes.variants[FP32_VARIANT].ap_delta_interval
    # the same graph in another runtime: rounding may only break near-ties (this 12-word tiny model
    # scores many texts alike), so every interval lies well inside the gate's tolerance
    assert all(v is None or max(map(abs, v)) < DEFAULT_TOLERANCE for v in iv.values())
    assert meta.runtimes.variants[FP32_VARIANT].passed is True
    assert main(["export-onnx", "--model", str(d), "--data", str(data), "--confidence", "1.5"]) != 0
    assert "--confidence" in capsys.readouterr().err


def test_bench_flop_arithmetic():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_inference", REPO / "bench" / "inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = {"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536}
    per_token = 2 * 6 * (4 * 384 * 384 + 2 * 384 * 1536)  # MiniLM-L6: ~21.2 MFLOPs per token
    assert bench.encoder_flops(cfg, [(1, 1)]) == per_token + 6 * 4 * 384
    assert bench.encoder_flops(cfg, [(2, 10), (1, 5)]) == 2 * 10 * (per_token + 6 * 4 * 10 * 384) + 5 * (
        per_token + 6 * 4 * 5 * 384
    )
    info = bench.cpu_info()
    assert info["cores"] >= 1 and info["flops_per_cycle"] in (16, 32, 64)


def test_default_threads_env_override(monkeypatch):
    from model.runtimes import NUM_THREADS_ENV, default_num_threads

    monkeypatch.setenv(NUM_THREADS_ENV, "3")
    assert default_num_threads() == 3
    monkeypatch.setenv(NUM_THREADS_ENV, "lots")  # ignored with a warning
    fallback = default_num_threads()
    monkeypatch.delenv(NUM_THREADS_ENV)
    assert fallback == default_num_threads() >= 1


def test_torch_threads_apply_to_forward_only(tiny_artifact):
    import torch

    p = Predictor.load(tiny_artifact, runtime="torch", num_threads=1)
    before = torch.get_num_threads()
    seen = []
    hook = p.runtime.model.register_forward_hook(lambda *a: seen.append(torch.get_num_threads()))
    try:
        p.predict_proba(["a short ad", "another ad text"])
    finally:
        hook.remove()
    assert seen == [1] * len(seen) and seen
    assert torch.get_num_threads() == before


def test_batch_invariance_measures_dependence_on_batch_mates(tiny_predictor):
    """A scorer whose output depends on its batch-mates is caught; a per-row scorer is not."""
    texts = ["cheap flat", "hot girls 24/7", "job offer, pay upfront", "win a prize now"]
    probs = tiny_predictor.predict_proba(texts)
    assert batch_invariance(tiny_predictor, texts, probs) < 1e-4

    class BatchScaled:  # like dynamic int8: one scale per batch
        def predict_proba(self, batch):
            p = tiny_predictor.predict_proba(batch)
            return p * (0.9 if len(batch) > 1 else 1.0)

    drift = batch_invariance(BatchScaled(), texts, BatchScaled().predict_proba(texts))
    assert drift > BATCH_INVARIANCE_TOLERANCE


def test_gate_compares_runtimes_with_the_same_tfidf_blend(tiny_artifact, tmp_path):
    """A blended artifact: every variant is scored with the blend, so fp32 passes with dAP ~0 (a
    variant scored without it once failed the gate by 0.06 AP on the demo model)."""
    from model.artifact import save_meta
    from model.blend import StackWeights
    from model.schema import LabelSchema, ProblemType
    from training.baseline import TfidfBaseline
    from training.blend import blend_from_baseline
    from training.config import BaselineConfig

    d = tmp_path / "model"
    shutil.copytree(tiny_artifact, d)
    texts, targets = _gate_data()
    schema = LabelSchema(labels=LABELS, problem_type=ProblemType.MULTI_LABEL)
    base = TfidfBaseline(schema, BaselineConfig(max_features_word=300, max_features_char=300)).fit(
        texts, targets
    )
    blend = blend_from_baseline(base, LABELS)
    blend.weights.update({n: StackWeights(0.5, 1.0, 0.0) for n in LABELS})
    save_meta(d, load_meta(d).model_copy(update={"blend": blend.save(d)}))
    assert Predictor.load(d, runtime="torch", num_threads=1).blend is not None
    runtimes = add_onnx_variants(d, texts, targets, quantize=False, num_threads=1, n_boot=N_BOOT)
    fp32 = runtimes["variants"][FP32_VARIANT]
    assert fp32["passed"] and max(abs(x) for x in fp32["ap_delta"].values() if x is not None) < 1e-6


def test_per_token_int8_is_token_wise_quantisation(tmp_path):
    """The per-token rewrite computes round(x / s_token) @ W_q * s_token * s_channel (one scale per
    token, one per weight column), so a token's output depends on that token alone."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from training.onnx_export import quantize_int8_per_token

    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 8)).astype(np.float32)  # (K, N)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/layer.0/output/dense/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 8])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fp32.onnx")
    quantize_int8_per_token(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)
    x[1, 2] *= 50  # an outlier token: it must not coarsen its neighbours
    y = session.run(None, {"x": x})[0]

    s = np.abs(x).max(axis=-1, keepdims=True) / 127  # (B, T, 1)
    s_w = np.abs(w).max(axis=0) / 127  # (N,)
    expected = (np.round(x / s) @ np.round(w / s_w)) * s * s_w
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, x @ w, atol=0.05 * np.abs(x @ w).max())  # close to fp32
    np.testing.assert_array_equal(session.run(None, {"x": x[1:2]})[0], y[1:2])  # batch-mates do not matter
    assert "MatMulIntegerToFloat" in {n.op_type for n in onnx.load(tmp_path / "int8.onnx").graph.node}
