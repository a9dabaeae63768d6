"""Turn a training checkpoint (``<output_dir>/checkpoints/last.pt``) into a model artifact, calibrated
and thresholded on the validation split exactly as ``training/pipeline.py`` phases 7 and 9 do, so a
run that cannot finish in time can still be scored (label it as "step N of M" when reporting).

    nice -n 10 .venv/bin/python bench/checkpoint_artifact.py --config configs/demo.yaml \
        --set data.path=../shared/datasets/risky-ads-v1 --checkpoint /work/runs/x/outputs/checkpoints/last.pt \
        --out /work/runs/x/ckpt-model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.artifact import ArtifactMeta, save_meta
from model.calibration import calibrated_probabilities, fit_temperatures, select_thresholds
from model.encoding import TextEncoder
from training.base_model import build_model, load_tokenizer, resolve_base_model
from training.config import load_config
from training.data import load_data
from training.loop import predict_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    schema = cfg.label_schema
    labels = schema.labels
    bundle = load_data(cfg.data, schema, cfg.seed)
    base = resolve_base_model(cfg.base_model)
    tok = load_tokenizer(base)
    enc = TextEncoder(tok, cfg.train.max_length)
    model = build_model(base, cfg.base_model, schema, len(tok))
    ck = torch.load(args.checkpoint, weights_only=True)
    model.load_state_dict(ck["model"])
    model.eval()
    z = predict_logits(model, enc, enc.encode(bundle.validation.texts).input_ids, cfg.train.eval_batch_size)
    temps = fit_temperatures(z, bundle.validation.targets, schema.problem_type)
    probs = calibrated_probabilities(z, temps, schema.problem_type)
    info = select_thresholds(probs, bundle.validation.targets, labels, cfg.target_precisions())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    step = ck["state"]["global_step"]
    meta = ArtifactMeta(
        name=cfg.model_name,
        label_schema=schema,
        thresholds={n: info[n].threshold for n in labels},
        threshold_info=info,
        temperatures=temps,
        max_length=cfg.train.max_length,
        base_model=f"{base.ref} (checkpoint step {step})",
        base_model_sha256=base.sha256,
    )
    save_meta(out, meta)
    print(f"artifact from checkpoint step {step}: {out}; thresholds {meta.thresholds}")


if __name__ == "__main__":
    main()
