"""WiSE-FT (``training/wise_ft.py``): weight interpolation, the validation rule for alpha, the config,
and a tiny run that stores the interpolated encoder and logs what it chose."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tests.training.fit_inputs import tiny_fit_inputs
from tests.training.test_pipeline import train_tiny


def _perturbed(model) -> dict[str, torch.Tensor]:
    """Shift every parameter by 1 (a stand-in for fine-tuning); returns the state before."""
    from training.wise_ft import encoder_state

    before = encoder_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return before


def test_interpolate_mixes_the_encoder_and_keeps_the_head():
    from training.wise_ft import encoder_state, interpolate

    model, *_ = tiny_fit_inputs(1)
    pre = _perturbed(model)
    ft = encoder_state(model)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("classifier")}
    assert head and all(not k.startswith(("classifier", "bert.pooler")) for k in ft)

    interpolate(model, pre, ft, 0.25)
    state = model.state_dict()
    for k in ft:
        torch.testing.assert_close(state[k], 0.75 * pre[k] + 0.25 * ft[k])
    for k, v in head.items():
        torch.testing.assert_close(state[k], v)  # the new head has no pretrained weights to mix with
    interpolate(model, pre, ft, 1.0)
    for k in ft:
        torch.testing.assert_close(model.state_dict()[k], ft[k])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(model, pre, ft, 1.5)
    with pytest.raises(ValueError, match="different tensors"):
        interpolate(model, {k: v for k, v in pre.items() if "embeddings" not in k}, ft, 0.5)


def test_interpolate_keeps_added_vocabulary_rows_fine_tuned():
    from training.wise_ft import interpolate

    model, *_ = tiny_fit_inputs(1)
    key = "bert.embeddings.word_embeddings.weight"
    ft = {key: model.state_dict()[key].clone()}
    pre = {key: ft[key][:-3] - 2.0}  # the pretrained vocabulary lacks the last 3 (added) tokens
    interpolate(model, pre, ft, 0.5)
    w = model.state_dict()[key]
    torch.testing.assert_close(w[:-3], ft[key][:-3] - 1.0)
    torch.testing.assert_close(w[-3:], ft[key][-3:])


def test_choose_alpha_keeps_the_smallest_alpha_within_tolerance():
    from training.wise_ft import choose_alpha, encoder_state

    model, *_ = tiny_fit_inputs(1)
    pre = _perturbed(model)
    ft = encoder_state(model)
    key = next(iter(ft))

    def score() -> float:  # 1 at the fine-tuned weights, falling linearly towards the pretrained ones
        w = model.state_dict()[key]
        return float(1.0 - 0.1 * (ft[key] - w).abs().mean() / (ft[key] - pre[key]).abs().mean())

    choice = choose_alpha(model, pre, score, grid=[0.5, 0.7, 0.9], tolerance=0.035)
    assert choice.alpha == 0.7  # drops: 0.05 at 0.5 (too far), 0.03 at 0.7, 0.01 at 0.9
    assert set(choice.scores) == {0.5, 0.7, 0.9, 1.0}
    torch.testing.assert_close(model.state_dict()[key], 0.3 * pre[key] + 0.7 * ft[key])
    assert (
        choice.metrics()["wise_ft.alpha"] == 0.7 and "wise_ft.validation_macro_ap.a0.50" in choice.metrics()
    )

    strict = choose_alpha(model, pre, lambda: float("nan"), grid=[0.5], tolerance=1.0)
    assert strict.alpha == 1.0  # a NaN score never qualifies: the fine-tuned encoder stays
    torch.testing.assert_close(model.state_dict()[key], 0.3 * pre[key] + 0.7 * ft[key])


def test_config_accepts_auto_a_number_or_nothing():
    from training.config import GeneralisationConfig

    assert GeneralisationConfig().wise_ft_alpha is None
    assert GeneralisationConfig(wise_ft_alpha="auto").wise_ft_alpha == "auto"
    assert GeneralisationConfig(wise_ft_alpha=0.6).wise_ft_alpha == 0.6
    for bad in ({"wise_ft_alpha": 1.2}, {"wise_ft_grid": [0.5, -0.1]}, {"wise_ft_alpha": "half"}):
        with pytest.raises(ValueError):
            GeneralisationConfig(**bad)


def test_a_run_stores_the_interpolated_encoder_and_logs_the_choice(tmp_path):
    out = tmp_path / "run"
    r = train_tiny(
        out,
        "--set",
        "generalisation.wise_ft_alpha=auto",
        "--set",
        "generalisation.wise_ft_grid=[0.0, 0.5]",
        "--set",
        "generalisation.wise_ft_tolerance=1.0",  # any alpha qualifies: the smallest, 0, is kept
        "--set",
        "train.epochs=1",
        cwd=tmp_path,
    )
    assert "WiSE-FT: validation macro AP by alpha" in r.stderr + r.stdout
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics = mlflow.search_runs(experiment_names=["adrisk"], output_format="list")[0].data.metrics
    assert metrics["wise_ft.alpha"] == 0.0
    assert {"wise_ft.validation_macro_ap.a0.00", "wise_ft.validation_macro_ap.a1.00"} <= set(metrics)

    saved = load_file(str(out / "model" / "model.safetensors"))
    best = load_file(str(out / "checkpoints" / "best.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not np.allclose(saved[key], best[key])  # alpha 0: the encoder went back to its start
    np.testing.assert_array_equal(saved["classifier.weight"], best["classifier.weight"])
