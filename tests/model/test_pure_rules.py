"""Pure rules with known answers: batch ordering, tracking resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.encoding import length_sorted_batches
from model.registry import resolve_tracking_uris


def test_length_sorted_batches_cover_every_row_once_longest_first():
    lengths = np.array([3, 9, 1, 9, 4, 2, 7])
    batches = length_sorted_batches(lengths, batch_size=3)
    assert [b.tolist() for b in batches] == [[1, 3, 6], [4, 0, 5], [2]]  # stable among equal lengths
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))


def test_length_sorted_batches_token_budget():
    lengths = np.array([10, 10, 10, 10, 60, 5])
    batches = length_sorted_batches(lengths, batch_size=64, max_tokens=32)
    # 60 alone (over budget, but a row is never dropped); then 3 x 10 = 30 <= 32; then 10 and 5
    assert [b.tolist() for b in batches] == [[4], [0, 1, 2], [3, 5]]
    assert all(len(b) * lengths[b].max() <= 32 for b in batches[1:])


@pytest.mark.parametrize(
    "env, arg, expected",
    [
        ({}, None, ("{cwd}", "{cwd}")),
        ({"MLFLOW_TRACKING_URI": "http://t:5000"}, None, ("http://t:5000", "http://t:5000")),
        ({"MLFLOW_TRACKING_URI": "http://t:5000"}, "sqlite:///a.db", ("sqlite:///a.db", "sqlite:///a.db")),
        (
            {"MLFLOW_TRACKING_URI": "http://t:5000", "MLFLOW_REGISTRY_URI": "sqlite:///r.db"},
            None,
            ("http://t:5000", "sqlite:///r.db"),
        ),
        ({"MLFLOW_REGISTRY_URI": "sqlite:///r.db"}, None, ("{cwd}", "sqlite:///r.db")),
    ],
)
def test_one_tracking_and_registry_rule(env, arg, expected, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cwd = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert resolve_tracking_uris(arg) == tuple(x.replace("{cwd}", cwd) for x in expected)


def test_configuring_twice_follows_the_second_tracking_store(monkeypatch, tmp_path):
    """MLflow exports MLFLOW_REGISTRY_URI when it sets the registry; that must not pin later
    resolutions in the same process to the first store (the registry follows tracking)."""
    import mlflow

    from model.registry import configure_tracking

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    configure_tracking(f"sqlite:///{tmp_path / 'a.db'}")
    configure_tracking(f"sqlite:///{tmp_path / 'b.db'}")
    assert mlflow.get_registry_uri() == f"sqlite:///{tmp_path / 'b.db'}"
    assert resolve_tracking_uris(f"sqlite:///{tmp_path / 'c.db'}")[1] == f"sqlite:///{tmp_path / 'c.db'}"
