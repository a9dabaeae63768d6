"""Training scaling on one machine: 1 process x 2 threads against 2 processes x 1 thread (``torchrun
--standalone --nproc-per-node 2``, DDP over gloo; training/distributed.py), at the same GLOBAL batch.

Usage::

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/train_scaling.py --config configs/demo.yaml \
        [--limit 2000] [--max-steps 40] [--trials 1] [--set KEY=VALUE ...] [--json OUT]

Both sides run ``training.loop.FineTuner.fit`` as ``adrisk train`` does, on the same rows (the
config's data, ``data.limit=--limit``), the same token ids, the same ``train.batch_size`` (under
torchrun each rank trains on half of every batch), one epoch cut at ``--max-steps``; a 32-row
validation set and a checkpoint interval beyond the run keep the clock on training. Each side is a
fresh launch (``python`` or ``torchrun``); model load and tokenisation are outside the clock; with
``--trials N`` the sides alternate. Printed: examples/s (rows trained / wall seconds of ``fit`` on
rank 0, after a barrier), peak RSS per process, and the ratio 2x1 / 1x2 of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIDES = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}


def _worker(args) -> None:
    """One side's training (every rank under torchrun); rank 0 writes the measurement to ``--out``."""
    import numpy as np
    import torch

    from model.encoding import TextEncoder
    from training import distributed
    from training.base_model import build_model, load_tokenizer, resolve_base_model
    from training.config import load_config
    from training.data import load_data
    from training.loop import FineTuner, FitData, epoch_batches

    torch.set_num_threads(args.threads)
    d = distributed.setup()
    overrides = [f"data.limit={args.limit}", "train.epochs=1", f"train.threads={args.threads}", *args.set]
    overrides += [f"train.max_steps={args.max_steps}", "train.checkpoint_every_steps=1000000"]
    cfg = load_config(REPO / args.config, overrides)
    if not Path(cfg.data.path).is_absolute():
        cfg.data.path = str((REPO / cfg.data.path).resolve())
    bundle = load_data(cfg.data, cfg.label_schema, cfg.seed)
    base = resolve_base_model(cfg.base_model)
    tok = load_tokenizer(base)
    encoder = TextEncoder(tok, cfg.train.max_length)
    train_ids = encoder.encode(bundle.train.texts).input_ids
    val_ids = encoder.encode(bundle.validation.texts[:32]).input_ids
    data = FitData(
        encoder, train_ids, bundle.train.targets, val_ids, bundle.validation.targets[:32], cfg.label_schema
    )
    torch.manual_seed(cfg.seed)
    model = build_model(base, cfg.base_model, cfg.label_schema, len(tok))
    lengths = np.array([len(x) for x in train_ids])
    batches = epoch_batches(lengths, cfg.train.batch_size, cfg.train.length_group_size, cfg.seed)
    with tempfile.TemporaryDirectory() as ckpt:
        distributed.barrier(d)
        t0 = time.perf_counter()
        res = FineTuner(model, data, cfg.train, cfg.seed).fit(Path(ckpt), "bench", dist=d)
        seconds = time.perf_counter() - t0
    rss = distributed.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, d)
    if d.is_main:
        examples = int(sum(len(b) for b in batches[: res.global_step]))
        Path(args.out).write_text(
            json.dumps(
                {
                    "steps": res.global_step,
                    "examples": examples,
                    "seconds": seconds,
                    "examples_per_s": examples / seconds,
                    "peak_rss_mb": rss,
                    "global_batch": cfg.train.batch_size,
                    "bf16": res.bf16,
                }
            )
        )
    distributed.shutdown()


def _launch(args, procs: int, threads: int) -> dict:
    """One side in a fresh launch; returns rank 0's measurement."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        worker = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--out", str(out)]
        worker += ["--config", args.config, "--limit", str(args.limit), "--max-steps", str(args.max_steps)]
        for s in args.set:
            worker += ["--set", s]
        if procs == 1:
            cmd = [sys.executable, *worker]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
            cmd += worker
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": "PASSIVE",  # as the adrisk CLI sets it
            "TOKENIZERS_PARALLELISM": "false",
            "TQDM_DISABLE": "1",
            "PYTHONPATH": str(REPO),
        }
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--limit", type=int, default=2000, help="data.limit: rows read from the config's data")
    p.add_argument("--max-steps", type=int, default=40, help="optimizer steps per side (one epoch at most)")
    p.add_argument("--trials", type=int, default=1, help="launches per side, alternating")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    results: dict[str, list[dict]] = {name: [] for name in SIDES}
    for _ in range(args.trials):
        for name, (procs, threads) in SIDES.items():
            results[name].append(_launch(args, procs, threads))
    print(f"config {args.config}, data.limit {args.limit}, {args.max_steps} steps at the same global batch")
    print(f"{'side':<24} {'global batch':>12} {'examples':>9} {'seconds':>8} {'examples/s':>11}  peak RSS MB")
    med = {}
    for name, rs in results.items():
        med[name] = statistics.median(r["examples_per_s"] for r in rs)
        for r in rs:
            rss = " + ".join(f"{m:.0f}" for m in r["peak_rss_mb"])
            print(
                f"{name:<24} {r['global_batch']:>12} {r['examples']:>9} {r['seconds']:>8.2f} "
                f"{r['examples_per_s']:>11.1f}  {rss}"
            )
    one, two = med["1 process x 2 threads"], med["2 processes x 1 thread"]
    print(f"ratio (2 processes x 1 thread) / (1 process x 2 threads): {two / one:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
