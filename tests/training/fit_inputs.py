"""Inputs for ``training.loop.fit`` tests: a 1-layer random BERT on short labelled texts."""

from __future__ import annotations

import numpy as np
import torch

TEXTS = ["sweet girl incall", "ipad mini", "win cash now", "old sofa"]
TARGETS = [[1, 0], [0, 0], [0, 1], [0, 0]]  # adult_services, scam


def tiny_fit_inputs(repeat: int):
    """``(model, data)``: a random model (torch seeded 0) and a ``FitData`` whose train and validation
    rows are the four texts ``repeat`` times (``4 * repeat`` rows, targets ``(4 * repeat, 2)`` float32)
    in a 16-token window."""
    from model.encoding import TextEncoder
    from model.schema import LabelSchema
    from training.base_model import build_model, load_tokenizer, resolve_base_model
    from training.config import BaseModelConfig, TinyModelConfig
    from training.loop import FitData

    schema = LabelSchema(labels=("adult_services", "scam"))
    bcfg = BaseModelConfig(
        tiny=TinyModelConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    base = resolve_base_model(bcfg)
    tok = load_tokenizer(base)
    torch.manual_seed(0)
    model = build_model(base, bcfg, schema, len(tok))
    y = np.array(TARGETS * repeat, dtype=np.float32)
    enc = TextEncoder(tok, 16)
    ids = enc.encode(TEXTS * repeat).input_ids
    return model, FitData(enc, ids, y, ids, y, schema)
