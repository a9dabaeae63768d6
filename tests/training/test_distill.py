"""The distilled student (training/distill.py): its layers are the teacher's, its loss pulls it to the
teacher's logits, and a training run serves it as gated ONNX variants."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from model.runtimes import STUDENT_DIR, STUDENT_FP32_VARIANT, STUDENT_INT8_VARIANT
from training.distill import build_student, distillation_loss
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
    """``fit`` with teacher logits and alpha 1 moves a student's logits towards the teacher's."""
    from model.encoding import TextEncoder
    from model.schema import LabelSchema
    from training.config import TrainConfig
    from training.loop import fit, predict_logits

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
    fit(
        student, encoder, ids, y, ids, y, LabelSchema(labels=("a", "b", "c")), cfg, 0, tmp_path, "d",
        teacher_logits=z_t, distill_alpha=1.0, distill_temperature=1.0,
    )  # fmt: skip
    after = np.abs(predict_logits(student, encoder, ids, 32) - z_t).mean()
    assert after < 0.5 * before


def test_a_training_run_serves_the_student_only_where_it_passes_the_gate(tmp_path):
    from model.artifact import load_meta
    from model.predictor import Predictor
    from tests.training.test_pipeline import _env, _train_args

    out = tmp_path / "run"
    args = _train_args(
        out, "--set", "export_onnx=true", "--set", "distill.enabled=true", "--set", "distill.layers=[1]"
    )
    r = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    art = out / "model"
    student_cfg = json.loads((art / STUDENT_DIR / "config.json").read_text())
    assert student_cfg["num_hidden_layers"] == 1 and student_cfg["adrisk_teacher_layers"] == [1]
    rt = load_meta(art).runtimes
    for name in (STUDENT_FP32_VARIANT, STUDENT_INT8_VARIANT):
        v = rt["variants"][name]
        assert v["student"]["teacher_layers"] == [1]
        assert set(v["ap_delta"]) == {"adult_services", "trafficking_indicators", "scam"}
        assert v["passed"] == (
            all(d is None or abs(d) <= rt["gate"]["tolerance"] for d in v["ap_delta"].values())
            and decisions_pass(v["decision_delta"])
            and intervals_pass({n: iv and tuple(iv) for n, iv in v["ap_delta_interval"].items()}, 0.005)
            and v["batch_invariance_max_abs"] <= rt["gate"]["batch_invariance_tolerance"]
        )
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["adrisk"], output_format="list")[0]
    assert 0 < run.data.metrics["student.validation.macro_ap"] <= 1
    for name in (STUDENT_FP32_VARIANT, STUDENT_INT8_VARIANT):
        assert run.data.metrics[f"runtime.{name}.passed"] == float(rt["variants"][name]["passed"])
    assert run.data.tags["adrisk.runtime.default"] == rt["default"]
    default = rt["default"]
    assert default == "torch" or rt["variants"][default]["passed"]
    teacher = Predictor.load(art, runtime="torch", num_threads=1)
    student = Predictor.load(art, runtime=STUDENT_FP32_VARIANT, num_threads=1)
    texts = ["2 bedroom flat for rent", "sweet girl incall 24/7", "you won a prize, send your bank pin"]
    p_s, p_t = student.predict_proba(texts), teacher.predict_proba(texts)
    assert p_s.shape == p_t.shape == (3, 3) and np.isfinite(p_s).all()
    assert not np.allclose(p_s, p_t)  # a different (smaller) network, not the teacher under another name
    # the student serves with its own calibration, fitted on its logits of the gate texts
    cal = rt["variants"][STUDENT_FP32_VARIANT]["calibration"]
    assert rt["variants"][STUDENT_INT8_VARIANT]["calibration"] == cal
    assert student.meta.temperatures == cal["temperatures"]
    assert student.meta.thresholds == {n: i["threshold"] for n, i in cal["threshold_info"].items()}
    assert teacher.meta.thresholds == load_meta(art).thresholds  # the teacher's are unchanged
    assert sorted(cal["blend_weights"]) == sorted(teacher.blend.weights if teacher.blend else {})
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


def _calibrated_meta(schema, temps, info):
    """Artifact metadata carrying only a label schema, temperatures and threshold choices."""
    from model.artifact import ArtifactMeta

    return ArtifactMeta(
        label_schema=schema,
        thresholds={n: i.threshold for n, i in info.items()},
        threshold_info=info,
        temperatures=temps,
        max_length=16,
    )


def test_a_variant_on_another_scale_gets_its_own_calibration():
    """A student whose logits are the teacher's times 3 ranks alike; with the teacher's temperatures and
    thresholds it flags differently, with its own fitted ones it takes the teacher's decisions."""
    from model.artifact import ThresholdInfo
    from model.calibration import calibrated_probabilities, fit_temperatures, select_thresholds
    from model.schema import LabelSchema
    from training.variant_gate import decision_deltas, variant_calibration

    rng = np.random.default_rng(1)
    labels = ("a", "b")
    y = (rng.random((600, 2)) < 0.3).astype(int)
    z_teacher = 2.5 * (y - 0.5) + rng.normal(size=(600, 2))
    schema = LabelSchema(labels=labels)
    temps = fit_temperatures(z_teacher, y, schema.problem_type)
    p_teacher = calibrated_probabilities(z_teacher, temps, schema.problem_type)
    info = select_thresholds(p_teacher, y, list(labels), 0.8)
    meta = _calibrated_meta(schema, temps, info)
    z_student = 3.0 * z_teacher  # temperature scaling is scale-equivariant: T_student = 3 T_teacher
    cal = variant_calibration(z_student, [""] * 600, y, meta)
    assert cal["blend_weights"] == {} and cal["n_texts"] == 600
    assert all(
        ThresholdInfo.model_validate(v).target_precision == 0.8 for v in cal["threshold_info"].values()
    )
    np.testing.assert_allclose(cal["temperatures"], 3 * np.asarray(temps), rtol=1e-3)
    own = meta.with_calibration(cal)
    served = meta.model_copy(
        update={
            "runtimes": {
                "default": "student-onnx-fp32",
                "variants": {"student-onnx-fp32": {"calibration": cal}},
            }
        }
    )
    assert served.for_runtime("auto").thresholds == own.thresholds != meta.thresholds
    assert served.for_runtime("torch") is served and served.for_runtime("onnx-int8") is served
    from model.artifact import ArtifactError

    with pytest.raises(ArtifactError, match="calibration in adrisk.json is invalid"):
        meta.with_calibration({"temperatures": [1.0], "threshold_info": {}})
    p_student = calibrated_probabilities(z_student, own.temperatures, schema.problem_type)
    with_teachers = calibrated_probabilities(z_student, temps, schema.problem_type)
    assert not decisions_pass(decision_deltas(with_teachers, p_teacher, y, meta.threshold_vector(), labels))
    assert decisions_pass(
        decision_deltas(
            p_student, p_teacher, y, own.threshold_vector(), labels, ref_thresholds=meta.threshold_vector()
        )
    )


def test_own_thresholds_are_held_to_the_target_and_the_reference_recall():
    """With its own thresholds a variant lands at another precision for the same target: it passes
    while precision stays at the target and recall does not fall; a recall loss fails it."""
    from training.variant_gate import decision_deltas

    y = np.zeros((1000, 1), dtype=int)
    y[:200] = 1

    def flags(tp, fp):
        p = np.zeros((1000, 1))
        p[:tp] = 0.9
        p[200 : 200 + fp] = 0.9
        return p

    ref = flags(100, 5)  # precision 0.952, recall 0.50
    kw = dict(ref_thresholds=[0.5], target_precision=[0.9])
    more = decision_deltas(flags(110, 12), ref, y, [0.5], ["a"], **kw)  # precision 0.902, recall 0.55
    assert more["a"]["precision"] > 0 and decisions_pass(more)
    assert not decisions_pass(decision_deltas(flags(110, 12), ref, y, [0.5], ["a"]))  # two-sided: fails
    fewer = decision_deltas(flags(80, 2), ref, y, [0.5], ["a"], **kw)  # recall 0.40
    assert fewer["a"]["recall"] < -0.02 and not decisions_pass(fewer)
    loose = decision_deltas(flags(110, 30), ref, y, [0.5], ["a"], **kw)  # precision 0.786 < target
    assert not decisions_pass(loose)


def test_the_gate_refuses_a_variant_that_ranks_alike_but_flags_differently():
    """AP is rank-only: a variant whose probabilities are a monotone squash of the reference's has the
    same AP but flags fewer ads at the same threshold; the decision deltas catch it."""
    from training.variant_gate import DECISION_TOLERANCE, ap_deltas, decision_deltas

    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < 0.3).astype(int)
    ref = np.clip(0.5 * y + 0.5 * rng.random((400, 2)), 0, 1)
    squashed = ref**3  # same order, lower scale
    labels = ["a", "b"]
    assert max(abs(d) for d in ap_deltas(squashed, ref, y, labels).values()) < 1e-12
    dec = decision_deltas(squashed, ref, y, [0.5, 0.5], labels)
    assert dec["a"]["recall"] < -DECISION_TOLERANCE and dec["b"]["recall"] < -DECISION_TOLERANCE
    assert not decisions_pass(dec)
    same = decision_deltas(ref, ref, y, [0.5, 0.5], labels)
    assert all(row[m] == 0.0 for row in same.values() for m in ("precision", "recall"))
    assert decisions_pass(same)
    # few flagged: moving one flagged text of 20 (precision -0.05) is within the two-text allowance
    few = np.zeros((400, 1))
    few[:20, 0] = 0.9
    y1 = np.zeros((400, 1), dtype=int)
    y1[:19, 0] = 1
    moved = few.copy()
    moved[18, 0], moved[25, 0] = 0.1, 0.9  # a true positive drops below, a negative rises above
    one = decision_deltas(moved, few, y1, [0.5], ["a"])
    assert one["a"]["precision"] < -DECISION_TOLERANCE and one["a"]["precision_allowed"] == 2 / 20
    assert decisions_pass(one)
    # undefined where nothing is flagged or a label has no positives
    none = decision_deltas(ref, ref, np.zeros_like(y), [2.0, 0.5], labels)
    assert none["a"]["precision"] is None and none["a"]["recall"] is None and none["b"]["recall"] is None
    # a variant that flags nothing where the reference flags many, on a label without positives
    # (precision and recall both undefined): the number flagged still fails it
    silent = decision_deltas(ref * 0.0, ref, np.zeros_like(y), [0.5, 0.5], labels)
    assert silent["a"]["precision"] is None and silent["a"]["flagged"] == -1.0
    assert not decisions_pass(silent)


def test_a_variant_keeps_the_models_flag_rate_cap():
    """A label whose threshold was capped (``calibration.max_flag_rate``) is re-selected under the same
    cap for a runtime variant; a label without one stays uncapped."""
    from model.artifact import ThresholdInfo
    from model.calibration import calibrated_probabilities, fit_temperatures, select_thresholds
    from model.schema import LabelSchema
    from training.variant_gate import variant_calibration

    rng = np.random.default_rng(2)
    y = (rng.random((600, 2)) < 0.3).astype(int)
    z = 1.5 * (y - 0.5) + rng.normal(size=(600, 2))
    schema = LabelSchema(labels=("a", "b"))
    temps = fit_temperatures(z, y, schema.problem_type)
    info = select_thresholds(
        calibrated_probabilities(z, temps, schema.problem_type), y, ["a", "b"], 0.6, {"a": 0.01}
    )
    meta = _calibrated_meta(schema, temps, info)
    cal = variant_calibration(2.0 * z + 0.3, [""] * 600, y, meta)
    a, b = (ThresholdInfo.model_validate(cal["threshold_info"][n]) for n in ("a", "b"))
    assert info["a"].method == a.method == "max_flag_rate"
    assert a.max_flag_rate == 0.01 and a.flagged_negatives <= 0.01
    assert b.max_flag_rate is None and b.method == "target_precision"
