"""One fine-tuning step taken apart: forward+backward (fp32 vs bf16 autocast), grad clipping, and the
three AdamW implementations (per-tensor for-loop, ``foreach``, ``fused``), interleaved in one process.

Usage::

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/train_step_profile.py [--reps 4] [--batch 16] [--width 96]

The demo config's model (all-MiniLM-L6-v2 + a 3-label head), a random (batch, width) token batch,
BCE loss. Each repetition runs fp32 then bf16 forward+backward, clips, and steps every optimizer on
the same gradients (so each one's time is one real step). Medians skip the first repetition (warm-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=96)
    a = ap.parse_args()
    from training.base_model import build_model, load_tokenizer, resolve_base_model
    from training.config import load_config
    from training.loop import param_groups

    cfg = load_config(REPO / "configs/demo.yaml")
    base = resolve_base_model(cfg.base_model)
    model = build_model(base, cfg.base_model, cfg.label_schema, len(load_tokenizer(base)))
    model.train()
    torch.manual_seed(0)
    x = torch.randint(1000, 20000, (a.batch, a.width))
    m = torch.ones_like(x)
    y = torch.randint(0, 2, (a.batch, cfg.label_schema.num_labels)).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    kinds = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {k: torch.optim.AdamW(param_groups(model, cfg.train), lr=1e-5, **kw) for k, kw in kinds.items()}
    times: dict[str, list[float]] = {}

    def timed(name: str, fn) -> None:
        t = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - t)

    def fwd_bwd(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=x, attention_mask=m).logits
        loss_fn(out.float(), y).backward()

    load0 = os.getloadavg()[0]
    for _ in range(a.reps):
        for bf16 in (False, True):
            timed(f"forward+backward {'bf16' if bf16 else 'fp32'}", lambda b=bf16: fwd_bwd(b))
            timed("clip_grad_norm_", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            for k, o in opts.items():
                timed(f"AdamW {k}", o.step)
            for o in opts.values():
                o.zero_grad(set_to_none=True)
    print(
        f"batch {a.batch} x {a.width} tokens, {torch.get_num_threads()} threads, "
        f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    for k, v in times.items():
        print(f"{k:26s} median {1000 * np.median(v[1:]):9.1f} ms   all {[round(1000 * t) for t in v]}")


if __name__ == "__main__":
    main()
