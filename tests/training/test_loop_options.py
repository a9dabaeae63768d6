"""``training.loop.fit`` options: the progress bar in a log file, where bf16 autocast applies, and
the linear-probe phase of LP-FT."""

from __future__ import annotations

import logging

import pytest

from tests.training.fit_inputs import tiny_fit_inputs


def test_progress_bar_does_not_write_a_line_per_step_to_a_log(tmp_path, capsys):
    from training.config import TrainConfig
    from training.loop import fit

    model, data = tiny_fit_inputs(6)
    cfg = TrainConfig(epochs=1, batch_size=2, checkpoint_every_steps=100, threads=1)
    capsys.readouterr()
    res = fit(model, data, cfg, 0, tmp_path, "digest")
    err = capsys.readouterr().err
    assert res.global_step == 12
    # a bar refreshed on every step writes one render per step; at most the first and the final one here
    assert err.count("fine-tune") <= 3, err.count("fine-tune")


@pytest.mark.parametrize("setting", ["auto", True, False])
def test_bf16_autocast_only_where_asked_and_supported(tmp_path, monkeypatch, caplog, setting):
    import training.loop as loop
    from training.config import TrainConfig

    assert TrainConfig().bf16 == "auto"  # the default: bf16 where the CPU has it
    for supported in (True, False):
        monkeypatch.setattr(loop, "bf16_supported", lambda s=supported: s)
        model, data = tiny_fit_inputs(6)
        cfg = TrainConfig(epochs=1, batch_size=8, max_steps=1, threads=1, bf16=setting)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="training.loop"):
            res = loop.fit(model, data, cfg, 0, tmp_path / str(supported), "d")
        assert res.bf16 == (setting is not False and supported)
        warned = any("no bfloat16 support" in r.getMessage() for r in caplog.records)
        assert warned == (setting is True and not supported)  # auto falls back silently


def test_linear_probe_steps_train_the_head_alone_first(tmp_path):
    """LP-FT: during the first ``linear_probe_steps`` steps only the head moves; then the encoder does."""
    import torch

    from training.config import TrainConfig
    from training.loop import fit

    key = "bert.encoder.layer.0.attention.self.query.weight"
    for steps, encoder_moves in ((2, False), (3, True)):
        model, data = tiny_fit_inputs(4)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = TrainConfig(
            epochs=1, batch_size=4, max_steps=steps, threads=1, linear_probe_steps=2, warmup_ratio=0
        )
        fit(model, data, cfg, 0, tmp_path / str(steps), "d")
        after = model.state_dict()
        assert torch.equal(before[key], after[key]) != encoder_moves
        assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
        assert all(p.requires_grad for p in model.parameters())  # nothing is left frozen


def test_compute_loss_is_the_one_extension_point(tmp_path):
    """A subclass that overrides ``compute_loss`` alone changes what is trained, through the same loop;
    ``fit`` is ``FineTuner`` with the plain objective (same seed: the same weights)."""
    import torch

    from training.config import TrainConfig
    from training.loop import FineTuner, fit

    class OnlyScam(FineTuner):
        progress_label = "scam only"

        def compute_loss(self, logits, rows):
            y = torch.from_numpy(self.data.train_y[rows][:, 1])
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float()[:, 1], y)

    cfg = TrainConfig(epochs=1, batch_size=4, max_steps=3, threads=1, warmup_ratio=0)
    weights = {}
    for name, run in (
        ("fit", lambda m, d, p: fit(m, d, cfg, 0, p, "d")),
        ("tuner", lambda m, d, p: FineTuner(m, d, cfg, 0).fit(p, "d")),
        ("scam", lambda m, d, p: OnlyScam(m, d, cfg, 0).fit(p, "d")),
    ):
        model, data = tiny_fit_inputs(4)
        res = run(model, data, tmp_path / name)
        assert res.global_step == 3
        weights[name] = model.classifier.weight.detach().clone()
    assert torch.equal(weights["fit"], weights["tuner"])
    # the adult_services row of the head gets no gradient from a scam-only loss
    assert not torch.equal(weights["fit"][0], weights["scam"][0])
