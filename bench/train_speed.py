"""Fine-tuning speed: adrisk's loop (``training.loop.fit``) against the Hugging Face ``Trainer``.

Usage::

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/train_speed.py [--rows 2000] [--pairs 3] \
        [--config configs/demo.yaml] [--variants adrisk,hf,adrisk-fp32,hf-bf16] [--json OUT]

Same settings for both: the first ``--rows`` train rows of the config's data (seeded sample,
``data.limit``), the config's base model (all-MiniLM-L6-v2 for ``configs/demo.yaml``), its batch
size, window (``max_length``), learning rate, weight decay, warm-up ratio, linear decay, grad clip
1.0, one epoch, torch's default intra-op threads. Both get the SAME token ids (adrisk's encoder,
tokenised once before the clock starts). The Trainer gets length-grouped sampling
(``train_sampling_strategy="group_by_length"``), dynamic padding (``DataCollatorWithPadding``), its
default optimizer (``adamw_torch_fused``), no evaluation, no checkpoints, no logging. adrisk's
``fit`` runs as it does in ``adrisk train``, with two differences kept small for a fair clock: a
32-row validation set (its once-per-epoch validation pass) and a checkpoint interval beyond the run
(it still writes its end-of-epoch checkpoint and best weights, which the Trainer does not).

Precision: ``adrisk`` runs at adrisk's defaults (``train.bf16: auto``, bf16 autocast where the CPU has
native bf16) and ``hf`` at the Trainer's (fp32); ``adrisk-fp32``, ``adrisk-bf16`` and ``hf-bf16``
force a precision, so the ratio lines give defaults-vs-defaults and matched fp32 and bf16 side by side.

Each trial is a fresh process (no warm caches or allocator state carried over); trials alternate
adrisk/HF in pairs, so load changes on a shared machine hit both. Reported per trial: examples/s
(rows / wall seconds of ``fit`` or ``trainer.train()``; model load excluded) and peak RSS of the
process (``ru_maxrss``). The ratio line is adrisk / HF of the medians.
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


# adrisk: its defaults (train.bf16 "auto": bf16 autocast where the CPU has it); hf: the Trainer's (fp32);
# -fp32 / -bf16: that precision forced, for matched comparisons
VARIANTS = ("adrisk", "hf", "adrisk-fp32", "adrisk-bf16", "hf-bf16")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _prepare(config: str, rows: int, overrides: list[str]):
    """(cfg, schema, base, tokenizer, encoder, train_ids, train_y, val_ids, val_y) for one trial."""
    from model.encoding import TextEncoder
    from training.base_model import load_tokenizer, resolve_base_model
    from training.config import load_config
    from training.data import load_data

    cfg = load_config(REPO / config, [f"data.limit={rows}", "train.epochs=1", *overrides])
    if not Path(cfg.data.path).is_absolute():
        cfg.data.path = str((REPO / cfg.data.path).resolve())
    schema = cfg.label_schema
    bundle = load_data(cfg.data, schema, cfg.seed)
    base = resolve_base_model(cfg.base_model)
    tok = load_tokenizer(base)
    encoder = TextEncoder(tok, cfg.train.max_length)
    train_ids = encoder.encode(bundle.train.texts).input_ids
    val_ids = encoder.encode(bundle.validation.texts[:32]).input_ids
    return (
        cfg,
        schema,
        base,
        tok,
        encoder,
        train_ids,
        bundle.train.targets,
        val_ids,
        bundle.validation.targets[:32],
    )


def run_adrisk(config: str, rows: int, overrides: list[str], bf16: bool | str = "auto") -> dict:
    """One trial of adrisk's loop; returns examples/s, seconds, peak RSS (MB)."""
    from training.base_model import build_model
    from training.loop import FitData, fit

    cfg, schema, base, tok, encoder, train_ids, train_y, val_ids, val_y = _prepare(config, rows, overrides)
    cfg.train.checkpoint_every_steps = 10**9
    cfg.train.bf16 = bf16
    model = build_model(base, cfg.base_model, schema, len(tok))
    rss0 = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        data = FitData(encoder, train_ids, train_y, val_ids, val_y, schema)
        res = fit(model, data, cfg.train, cfg.seed, Path(d), "bench")
        dt = time.perf_counter() - t0
    return {
        "examples_per_s": len(train_ids) / dt,
        "seconds": dt,
        "steps": res.global_step,
        "rss_before_train_mb": rss0,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_hf(config: str, rows: int, overrides: list[str], bf16: bool = False) -> dict:
    """One trial of ``transformers.Trainer`` on the same ids and settings."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from training.base_model import build_model

    cfg, schema, base, tok, encoder, train_ids, train_y, _, _ = _prepare(config, rows, overrides)
    model = build_model(base, cfg.base_model, schema, len(tok))
    data = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": y.astype("float32").tolist()}
        for ids, y in zip(train_ids, train_y, strict=True)
    ]
    t = cfg.train
    with tempfile.TemporaryDirectory() as d:
        args = TrainingArguments(
            output_dir=d,
            per_device_train_batch_size=t.batch_size,
            num_train_epochs=1,
            learning_rate=t.learning_rate,
            weight_decay=t.weight_decay,
            warmup_steps=t.warmup_ratio,
            lr_scheduler_type="linear",
            max_grad_norm=t.grad_clip,
            train_sampling_strategy="group_by_length",
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            seed=cfg.seed,
            disable_tqdm=True,
            bf16=bf16,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok)
        )
        rss0 = _peak_rss_mb()
        t0 = time.perf_counter()
        out = trainer.train()
        dt = time.perf_counter() - t0
    return {
        "examples_per_s": len(train_ids) / dt,
        "seconds": dt,
        "steps": out.global_step,
        "rss_before_train_mb": rss0,
        "peak_rss_mb": _peak_rss_mb(),
        "optim": str(args.optim),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=3, help="rounds; each runs every variant once")
    ap.add_argument("--set", action="append", default=[], help="extra config override for both, key=value")
    ap.add_argument(
        "--variants",
        default="adrisk,hf",
        help="comma list of adrisk (its defaults: bf16 autocast where the CPU has it), hf (the Trainer's "
        "defaults: fp32), adrisk-fp32, adrisk-bf16, hf-bf16 (that precision forced)",
    )
    ap.add_argument("--only", choices=VARIANTS, help=argparse.SUPPRESS)  # one trial (worker)
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.only:
        import logging

        logging.basicConfig(level=logging.WARNING)
        fn = run_adrisk if a.only.startswith("adrisk") else run_hf
        precision = {"adrisk": "auto", "hf": False, "adrisk-fp32": False}.get(a.only, True)
        res = fn(a.config, a.rows, a.set, bf16=precision)
        print("RESULT " + json.dumps(res), flush=True)
        return

    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if not set(variants) <= set(VARIANTS):
        sys.exit(f"--variants: unknown {sorted(set(variants) - set(VARIANTS))}; choose from {VARIANTS}")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    load0 = os.getloadavg()
    for p in range(a.pairs):
        k = p % len(variants)
        order = variants[k:] + variants[:k]  # rotate who goes first
        for who in order:
            cmd = [sys.executable, __file__, "--only", who, "--config", a.config, "--rows", str(a.rows)]
            for s in a.set:
                cmd += ["--set", s]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{who} trial failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[7:])
            results[who].append(r)
            print(
                f"round {p + 1} {who:11s} {r['examples_per_s']:7.2f} examples/s  {r['seconds']:7.1f} s  "
                f"{r['steps']} steps  peak RSS {r['peak_rss_mb']:7.0f} MB  load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    med = {k: statistics.median(x["examples_per_s"] for x in v) for k, v in results.items()}
    mem = {k: statistics.median(x["peak_rss_mb"] for x in v) for k, v in results.items()}
    load1 = os.getloadavg()
    print(
        f"\nrows={a.rows} rounds={a.pairs} config={a.config} overrides={a.set} "
        f"load average start {load0[0]:.2f} end {load1[0]:.2f}"
    )
    for v in variants:
        print(f"{v:11s} median {med[v]:7.2f} examples/s  median peak RSS {mem[v]:6.0f} MB")
    ratios = {}
    for x, y in (
        ("adrisk", "hf"),  # each at its defaults
        ("adrisk-fp32", "hf"),  # both fp32
        ("adrisk-bf16", "hf-bf16"),  # both bf16
        ("adrisk-bf16", "hf"),
        ("adrisk-bf16", "adrisk-fp32"),
    ):
        if x in med and y in med:
            per = [
                rx["examples_per_s"] / ry["examples_per_s"]
                for rx, ry in zip(results[x], results[y], strict=True)
            ]
            ratios[f"{x}/{y}"] = med[x] / med[y]
            print(
                f"ratio {x}/{y}: examples/s {med[x] / med[y]:.2f}x (per round: {', '.join(f'{r:.2f}' for r in per)}), "
                f"peak RSS {mem[x] / mem[y]:.2f}x"
            )
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "results": results,
                    "median_examples_per_s": med,
                    "median_peak_rss_mb": mem,
                    "ratios": ratios,
                    "load": [load0, load1],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
