"""The distilled student (training/experiments/distill.py): its layers are the teacher's, its loss pulls
it to the teacher's logits, and a training run gates it as ONNX variants."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from model.runtimes import STUDENT_DIR, STUDENT_FP32_VARIANT, STUDENT_INT8_VARIANT
from training.experiments.distill import DistillationFineTuner, build_student, distillation_loss
from training.variant_gate import decisions_pass, intervals_pass


def _teacher(layers: int = 4):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        problem_type="multi_label_classification",
    )
    return BertForSequenceClassification(cfg).eval()


def test_student_keeps_the_chosen_teacher_layers():
    teacher = _teacher(4)
    student = build_student(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    t, s = teacher.state_dict(), student.state_dict()
    for j, i in enumerate([1, 3]):
        for suffix in ("attention.self.query.weight", "output.dense.weight", "output.LayerNorm.bias"):
            assert torch.equal(s[f"bert.encoder.layer.{j}.{suffix}"], t[f"bert.encoder.layer.{i}.{suffix}"])
    for key in ("bert.embeddings.word_embeddings.weight", "classifier.weight", "bert.pooler.dense.bias"):
        assert torch.equal(s[key], t[key])
    assert not torch.equal(
        s["bert.encoder.layer.0.output.dense.weight"], t["bert.encoder.layer.0.output.dense.weight"]
    )
    # a student that keeps every layer is the teacher
    same = build_student(teacher, [0, 1, 2, 3])
    x = torch.randint(0, 100, (2, 7))
    assert torch.allclose(same(input_ids=x).logits, teacher(input_ids=x).logits)


@pytest.mark.parametrize("layers", [[], [2, 1], [1, 1], [4], [-1, 0]])
def test_bad_student_layers_are_refused(layers):
    with pytest.raises(ValueError, match="distill.layers"):
        build_student(_teacher(4), layers)


@pytest.mark.parametrize("multi_class", [False, True])
def test_distillation_loss_is_smallest_at_the_teachers_logits(multi_class):
    teacher = torch.randn(5, 3)
    at = teacher.clone().requires_grad_(True)
    distillation_loss(at, teacher, 2.0, multi_class).backward()
    assert at.grad.abs().max() < 1e-6  # a stationary point at the teacher's logits
    off = (teacher + torch.randn(5, 3)).requires_grad_(True)
    assert distillation_loss(off, teacher, 2.0, multi_class) > distillation_loss(
        teacher, teacher, 2.0, multi_class
    )


def test_distillation_pulls_the_student_to_the_teacher(tmp_path):
    """The loop with the distillation loss (alpha 1) moves a student's logits towards the teacher's."""
    from model.encoding import TextEncoder
    from model.schema import LabelSchema
    from training.config import TrainConfig
    from training.loop import FitData, predict_logits

    class _Tok:  # ids are given; the encoder only pads
        pad_token_id = 0

    teacher = _teacher(4)
    with torch.no_grad():
        teacher.classifier.weight.mul_(500.0)  # confident logits (a random head's are ~0.005)
    student = build_student(teacher, [0])
    with torch.no_grad():
        student.classifier.weight.copy_(torch.randn_like(student.classifier.weight) * 500.0)  # far off
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1, 100, size=int(rng.integers(3, 12)))) for _ in range(64)]
    encoder = TextEncoder(_Tok(), 16)
    z_t = predict_logits(teacher, encoder, ids, 32)
    before = np.abs(predict_logits(student, encoder, ids, 32) - z_t).mean()
    y = (z_t > 0).astype(np.float32)  # the best epoch by validation AP is then the closest student
    cfg = TrainConfig(
        epochs=8,
        batch_size=8,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        checkpoint_every_steps=1000,
        early_stopping_patience=8,
    )
    data = FitData(encoder, ids, y, ids, y, LabelSchema(labels=("a", "b", "c")))
    with pytest.raises(ValueError, match="teacher logit rows"):
        DistillationFineTuner(student, data, cfg, 0, z_t[:-1], alpha=1.0, temperature=1.0)
    res = DistillationFineTuner(student, data, cfg, 0, z_t, alpha=1.0, temperature=1.0).fit(tmp_path, "d")
    assert res.global_step > 0
    after = np.abs(predict_logits(student, encoder, ids, 32) - z_t).mean()
    assert after < 0.5 * before


@pytest.mark.slow
def test_a_training_run_serves_the_student_only_where_it_passes_the_gate(tmp_path):
    from model.artifact import load_meta
    from model.predictor import Predictor
    from tests.training.test_pipeline import _env, _train_args

    out = tmp_path / "run"
    args = _train_args(
        out,
        *("--set", "export_onnx=true", "--set", "distill.enabled=true", "--set", "distill.layers=[1]"),
        *("--set", "generalisation.audit=false"),
    )
    r = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    art = out / "model"
    student_cfg = json.loads((art / STUDENT_DIR / "config.json").read_text())
    assert student_cfg["num_hidden_layers"] == 1 and student_cfg["adrisk_teacher_layers"] == [1]
    rt = load_meta(art).runtimes
    assert rt.gate is not None
    for name in (STUDENT_FP32_VARIANT, STUDENT_INT8_VARIANT):
        v = rt.variants[name]
        assert v.student is not None and v.student.teacher_layers == [1]
        assert set(v.ap_delta) == {"adult_services", "trafficking_indicators", "scam"}
        assert v.passed == (
            all(d is None or abs(d) <= rt.gate.tolerance for d in v.ap_delta.values())
            and decisions_pass(v.decision_delta)
            and intervals_pass({n: iv and tuple(iv) for n, iv in v.ap_delta_interval.items()}, 0.005)
            and v.batch_invariance_max_abs <= rt.gate.batch_invariance_tolerance
        )
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["adrisk"], output_format="list")[0]
    assert 0 < run.data.metrics["student.validation.macro_ap"] <= 1
    for name in (STUDENT_FP32_VARIANT, STUDENT_INT8_VARIANT):
        assert run.data.metrics[f"runtime.{name}.passed"] == float(rt.variants[name].passed)
    assert run.data.tags["adrisk.runtime.default"] == rt.default
    assert rt.default == "torch" or rt.variants[rt.default].passed
    teacher = Predictor.load(art, runtime="torch", num_threads=1)
    student = Predictor.load(art, runtime=STUDENT_FP32_VARIANT, num_threads=1)
    assert student.meta.thresholds == teacher.meta.thresholds  # one calibration for every runtime
    texts = ["2 bedroom flat for rent", "sweet girl incall 24/7", "you won a prize, send your bank pin"]
    p_s, p_t = student.predict_proba(texts), teacher.predict_proba(texts)
    assert p_s.shape == p_t.shape == (3, 3) and np.isfinite(p_s).all()
    assert not np.allclose(p_s, p_t)  # a different (smaller) network, not the teacher under another name
    # explanations by gradient run the network that scores: the student's 1 layer, not the teacher's 2
    from model.explain import Explainer

    ig = Explainer(student, method="integrated_gradients", ig_steps=4)
    assert ig._load_torch().config.num_hidden_layers == 1
    spans = ig.explain(texts[1:2], labels=["adult_services"], top_k=2)[0]["adult_services"]
    assert 1 <= len(spans) <= 2 and all(np.isfinite(sp.score) for sp in spans)
    assert Explainer(teacher, method="integrated_gradients")._load_torch().config.num_hidden_layers == 2


def test_bad_student_layers_fail_before_the_teacher_trains(tmp_path):
    """distill.layers beyond the base model's depth is refused before any fine-tuning step."""
    from tests.training.test_pipeline import _env, _train_args

    out = tmp_path / "run"
    args = _train_args(
        out, "--set", "export_onnx=true", "--set", "distill.enabled=true", "--set", "distill.layers=[0,5]"
    )
    r = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "distill.layers must be distinct ascending indices in [0, 2)" in r.stderr
    assert "fine-tune" not in r.stderr and not (out / "checkpoints").exists()
    assert "baseline" not in r.stderr  # refused before the TF-IDF baseline is trained too
