"""The auxiliary ordinal target (training/ordinal.py): the head learns counts, ignores rows without
one, trains with the labels in a run, and leaves the served model unchanged."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from tests.conftest import DATA_DIR
from tests.training.test_pipeline import TINY
from training.config import load_config
from training.data import DataError, load_data
from training.ordinal import OrdinalHead, ordinal_levels


def test_levels_come_from_the_finite_values():
    assert ordinal_levels(np.array([0, 3, np.nan, 1])) == 4
    for bad, msg in (
        ([np.nan, np.nan], "no values"),
        ([0, -1], "non-negative integers"),
        ([0, 1.5], "non-negative integers"),
        ([0, 0], "single level"),
    ):
        with pytest.raises(ValueError, match=msg):
            ordinal_levels(np.array(bad, dtype=float))


def test_the_head_learns_counts_and_ignores_rows_without_one():
    """A CORAL head on fixed features that carry the count learns P(y > k) in the right order; rows
    whose value is NaN add no gradient."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=256).astype(float)
    feats = torch.as_tensor(np.stack([y, rng.normal(size=256)], axis=1), dtype=torch.float32)

    class _Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.classifier(x)

    model = _Model()
    head = OrdinalHead(2, ordinal_levels(y)).attach(model)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    first = None
    for _ in range(300):
        model(feats)
        loss = head.loss(y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    with torch.no_grad():
        p = torch.sigmoid(head(feats)).numpy()  # (n, K-1): P(y > k)
    predicted = (p > 0.5).sum(axis=1)
    assert np.mean(predicted == y) > 0.9
    # rows without a value: no gradient, and a batch with none gives a zero loss
    model(feats)
    masked = np.where(np.arange(256) < 128, y, np.nan)
    head.zero_grad()
    head.loss(masked).backward()
    g_masked = head.bias.grad.clone()
    model(feats[:128])
    head.zero_grad()
    head.loss(y[:128]).backward()
    assert torch.allclose(g_masked, head.bias.grad, atol=1e-6)
    model(feats)
    assert float(head.loss(np.full(256, np.nan)).detach()) == 0.0
    with pytest.raises(RuntimeError, match="before a forward pass"):
        head.loss(y)
    head.detach()
    model(feats)
    with pytest.raises(RuntimeError):  # detached: nothing captured any more
        head.loss(y)


def test_view_rows_point_at_their_origin():
    from training.domain import training_rows

    texts = [f"listing number {i} " * 20 for i in range(40)]
    y = np.zeros((40, 1), dtype=np.float32)
    src = ["a"] * 20 + ["b"] * 20
    rows = training_rows(texts, y, src, ["short"], 1.0, True, 0)
    assert len(rows.origin) == len(rows.texts)
    assert rows.origin.min() >= 0 and rows.origin.max() < 40
    for i in np.flatnonzero(~rows.is_view)[:10]:
        assert rows.texts[i] == texts[rows.origin[i]]
    assert rows.is_view.any()


def test_a_run_learns_the_ordinal_target_and_serves_the_classifier_only(tmp_path):
    from safetensors import safe_open

    from tests.training.test_pipeline import _env, _train_args

    out = tmp_path / "run"
    extra = ["--set", "data.ordinal_column=red_flags_text", "--set", "train.ordinal_weight=0.5"]
    extra += ["--set", "train.epochs=4"]  # past step 50, where the loop logs its losses
    r = subprocess.run(
        _train_args(out, *extra), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    head = ck["ordinal_head"]
    cfg = load_config(TINY, [f"data.path={DATA_DIR}", "data.ordinal_column=red_flags_text"])
    train = load_data(cfg.data, cfg.label_schema, cfg.seed).train
    assert head["bias"].shape[0] == int(np.nanmax(train.ordinal))  # K - 1 cut points
    assert not torch.allclose(head["bias"], torch.linspace(1.0, -1.0, head["bias"].shape[0]))  # trained
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("ordinal" in k for k in keys)
    assert len(json.loads((out / "model" / "config.json").read_text())["id2label"]) == 3
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics = mlflow.search_runs(experiment_names=["adrisk"], output_format="list")[0].data.metrics
    assert metrics["train.ordinal_loss"] > 0 and metrics["train.loss"] > 0  # logged apart

    # a column the data lacks is a clear error before any training
    bad = subprocess.run(
        _train_args(
            tmp_path / "bad", "--set", "data.ordinal_column=no_such", "--set", "train.ordinal_weight=1"
        ),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode != 0 and "data.ordinal_column 'no_such' not found" in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_the_negative_control_shuffles_the_count_with_the_labels():
    """A count behind a label is a label: shuffling train labels must carry it along, or the control
    would learn the real signal through the ordinal head."""
    cols = ["data.ordinal_column=red_flags_text", f"data.path={DATA_DIR}"]
    plain = load_config(TINY, cols)
    shuffled = load_config(TINY, [*cols, "data.shuffle_train_labels=true"])
    a = load_data(plain.data, plain.label_schema, plain.seed).train
    b = load_data(shuffled.data, shuffled.label_schema, shuffled.seed).train
    assert a.texts == b.texts and not np.array_equal(a.targets, b.targets)

    def pairs(s):
        return sorted(
            zip(map(tuple, s.targets.tolist()), np.nan_to_num(s.ordinal, nan=-1).tolist(), strict=True)
        )

    assert pairs(a) == pairs(b)  # the same (labels, count) rows, moved together


def test_a_non_numeric_count_is_a_clear_error(tmp_path):
    rows = [{"text": f"ad {i}", "labels": [], "n": 1} for i in range(4)]
    rows[2]["n"] = "three"
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(TINY, [f"data.path={tmp_path}", "data.ordinal_column=n", "data.limit=null"])
    with pytest.raises(DataError, match=r"ordinal column 'n' must hold numbers; not so in rows 3 ") as e:
        load_data(cfg.data, cfg.label_schema, cfg.seed)
    assert "three" not in str(e.value)


def test_the_ordinal_weight_needs_a_column():
    from tests.training.test_pipeline import TINY
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="needs data.ordinal_column"):
        load_config(TINY, ["train.ordinal_weight=0.5"])
    cfg = load_config(TINY, ["train.ordinal_weight=0.5", "data.ordinal_column=red_flags_text"])
    assert cfg.train.ordinal_weight == 0.5 and cfg.data.ordinal_column == "red_flags_text"
