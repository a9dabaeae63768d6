"""Source-balanced sampling and group DRO (training/domain.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.domain import GroupDRO, balanced_sample, group_keys, training_rows


def test_balanced_sample_equalises_sources_and_is_seeded():
    sources = ["big"] * 900 + ["small"] * 100
    idx = balanced_sample(sources, seed=3)
    drawn = np.asarray(sources)[idx]
    assert len(idx) == 1000 and 0.4 < (drawn == "small").mean() < 0.6
    assert balanced_sample(sources, seed=3).tolist() == idx.tolist()
    with pytest.raises(ValueError):
        balanced_sample([], seed=0)


def test_group_keys_split_source_view_and_positive():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    ids = group_keys(["a", "a", "a", "b"], [False, False, True, False], y)
    assert len(set(ids.tolist())) == 4
    assert group_keys(None, None, y).tolist() == [1, 0, 1, 0]


def test_group_dro_moves_weight_to_the_worst_group():
    dro = GroupDRO(2, eta=0.5)
    per_row = torch.tensor([0.1, 0.1, 2.0, 2.0], requires_grad=True)
    groups = torch.tensor([0, 0, 1, 1])
    for _ in range(5):
        loss = dro.loss(per_row, groups)
    assert dro.q[1] > 0.8 and 0.1 < loss.item() < 2.0 + 1e-6
    loss.backward()
    assert per_row.grad[2] > per_row.grad[0] > 0  # the worst group dominates the gradient


def test_group_dro_absent_groups_keep_weight_and_state_round_trips():
    dro = GroupDRO(3, eta=1.0)
    dro.loss(torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    assert dro.q[1] == dro.q[2] < dro.q[0]
    other = GroupDRO(3)
    other.load_state(dro.state())
    assert torch.allclose(other.q, dro.q)


def test_training_rows_add_views_with_labels_then_balance():
    texts = ["Sweet GIRL\nbody", "ipad mini", "old sofa", "WIN \U0001f4b0 CASH"]
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.float32)
    src = ["bp", "cl", "cl", "sms"]
    rows = training_rows(texts, y, src, ["short"], 1.0, False, seed=0)
    assert rows.texts[4:] == ["sweet girl", "win cash"] and rows.is_view.tolist() == [0, 0, 0, 0, 1, 1]
    assert rows.targets[4:].tolist() == [[1, 0], [0, 1]] and rows.sources[4:] == ["bp", "sms"]
    assert len(set(rows.group_ids.tolist())) == 5  # bp|0|1, cl|0|0, sms|0|1, bp|1|1, sms|1|1
    bal = training_rows(texts, y, src, [], 1.0, True, seed=0)
    assert len(bal.texts) == 4 and bal.report["balanced_rows"] == 4
    with pytest.raises(ValueError, match="source"):
        training_rows(texts, y, None, [], 1.0, True, seed=0)


def test_fit_with_group_dro_trains_and_checkpoints_the_group_weights(tmp_path):
    from tests.training.fit_inputs import tiny_fit_inputs
    from training.config import TrainConfig
    from training.loop import LAST_CHECKPOINT, fit

    model, enc, ids, y, schema = tiny_fit_inputs(4)
    groups = group_keys(["bp", "cl", "sms", "cl"] * 4, [False] * 16, y)
    cfg = TrainConfig(epochs=1, batch_size=4, checkpoint_every_steps=2, max_steps=4, num_threads=1)
    res = fit(
        model, enc, ids, y, ids, y, schema, cfg, 0, tmp_path, "digest", group_ids=groups, group_dro_eta=0.5
    )
    assert res.global_step == 4
    q = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)["state"]["dro_q"]
    assert len(q) == 3 and abs(sum(q) - 1) < 1e-9 and max(q) > min(q)  # weights moved off uniform
