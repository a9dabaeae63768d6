"""Training cost of view augmentation without training: optimizer steps and padded tokens of one epoch
(the loop's own length-grouped batches) with and without ``generalisation.augment_views``.

    .venv/bin/python bench/augment_cost.py --config configs/demo.yaml --set data.path=../shared/datasets/risky-ads-v1
"""

from __future__ import annotations

import argparse

import numpy as np

from model.encoding import TextEncoder
from training.base_model import load_tokenizer, resolve_base_model
from training.config import load_config
from training.data import load_data
from training.loop import epoch_batches
from training.views import training_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--views", nargs="*", default=["short"])
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    b = load_data(cfg.data, cfg.label_schema, cfg.seed)
    enc = TextEncoder(load_tokenizer(resolve_base_model(cfg.base_model)), cfg.train.max_length)
    for views in ([], args.views):
        r = training_rows(b.train.texts, b.train.targets, views, 1.0, cfg.seed)
        lengths = np.array([len(x) for x in enc.encode(r.texts).input_ids])
        batches = epoch_batches(lengths, cfg.train.batch_size, cfg.train.length_group_size, cfg.seed)
        padded = sum(len(x) * int(lengths[x].max()) for x in batches)
        print(f"views={views}: rows {len(lengths)}, steps/epoch {len(batches)}, padded tokens/epoch {padded}")


if __name__ == "__main__":
    main()
