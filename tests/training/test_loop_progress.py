"""The training progress bar in a log file (stderr not a terminal): a line a minute, not a line a step."""

from __future__ import annotations

import numpy as np
import torch


def test_progress_bar_does_not_write_a_line_per_step_to_a_log(tmp_path, capsys):
    from model.encoding import TextEncoder
    from model.schema import LabelSchema
    from training.base_model import build_model, load_tokenizer, resolve_base_model
    from training.config import BaseModelConfig, TinyModelConfig, TrainConfig
    from training.loop import fit

    schema = LabelSchema(labels=("adult_services", "scam"))
    bcfg = BaseModelConfig(
        tiny=TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    base = resolve_base_model(bcfg)
    tok = load_tokenizer(base)
    torch.manual_seed(0)
    model = build_model(base, bcfg, schema, len(tok))
    texts = ["sweet girl incall", "ipad mini", "win cash now", "old sofa"] * 6
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 0]] * 6, dtype=np.float32)
    enc = TextEncoder(tok, 16)
    ids = enc.encode(texts).input_ids
    cfg = TrainConfig(epochs=1, batch_size=2, checkpoint_every_steps=100, num_threads=1)
    capsys.readouterr()
    res = fit(model, enc, ids, y, ids, y, schema, cfg, 0, tmp_path, "digest")
    err = capsys.readouterr().err
    assert res.global_step == 12
    # a bar refreshed on every step writes one render per step; at most the first and the final one here
    assert err.count("fine-tune") <= 3, err.count("fine-tune")
