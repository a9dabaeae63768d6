"""Explanation benchmark: faithfulness (deletion test) per label and method, and cost (texts/s) per
method and runtime, in one run, side by side.

Usage::

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/explain.py --model DIR \
        --data ../shared/datasets/risky-ads-v1/test.jsonl [--per-label 40] [--k 3] [--draws 5] \
        [--methods occlusion integrated_gradients] [--cost-texts 24] [--json OUT]

Slices (seeded): for each label, up to ``--per-label`` test rows that carry the label AND that the
model flags for it (explanations are shown for flagged labels). On each slice and method: attribute,
then the deletion test (``model.explain.deletion_test``): delete the top-k positively attributed words
from the original text and re-score, vs k random words (mean of ``--draws`` draws); the figure is the
mean drop of the label's calibrated probability, top-k minus random (the margin), and the share of
texts where top-k beats random.

Cost: ``Explainer.explain`` (flagged labels, top 5) on the first ``--cost-texts`` flagged rows of all
slices, wall clock, per method and runtime (torch, and each ONNX variant the artifact has; integrated
gradients always run the torch weights, so they are timed once). Same texts for every row; ratios
against occlusion on torch. Threads: the predictor's default (``$ADRISK_NUM_THREADS`` or half the CPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "risky-ads-v1" / "test.jsonl"


def find_model(root: Path) -> Path | None:
    """The directory holding adrisk.json under ``root`` (newest first), or None."""
    hits = sorted(root.rglob("adrisk.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return hits[0].parent if hits else None


def load_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def highlight(text: str, spans) -> str:
    """``text`` with each span wrapped as ``[[piece]](score)`` (scores rounded to 2 decimals)."""
    out, pos = [], 0
    for s in sorted(spans, key=lambda s: s.start):
        if s.start < pos:
            continue
        out.append(text[pos : s.start] + f"[[{text[s.start : s.end]}]]({s.score:+.2f})")
        pos = s.end
    return "".join(out) + text[pos:]


def print_example(pred, text: str) -> int:
    from model.explain import Explainer

    p = pred.predict([text])[0]
    print("scores", json.dumps({k: round(v, 3) for k, v in p.category_scores.items()}), "flagged", p.flagged)
    for method in ("occlusion", "integrated_gradients"):
        exp = Explainer(pred, method=method).explain([text], top_k=5)[0]
        print(f"--- {method}")
        print(
            json.dumps({k: [s.to_dict() | {"score": round(s.score, 3)} for s in v] for k, v in exp.items()})
        )
        for label, spans in exp.items():
            print(f"{label}: {highlight(text, spans)!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="artifact dir (default: newest under /work/runs/demo0/outputs)",
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--per-label", type=int, default=40)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["occlusion", "integrated_gradients"])
    ap.add_argument("--ig-steps", type=int, default=32)
    ap.add_argument("--cost-texts", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--example", default=None, help="only print this text's explanation (JSON + highlight)")
    args = ap.parse_args(argv)

    from model.explain import Explainer, deletion_test
    from model.predictor import Predictor

    model_dir = args.model or find_model(Path("/work/runs/demo0/outputs"))
    if model_dir is None:
        print("no model: pass --model DIR", file=sys.stderr)
        return 2
    pred = Predictor.load(model_dir, runtime="torch")
    if args.example is not None:
        return print_example(pred, args.example)
    labels = list(pred.labels)
    rows = load_rows(args.data)
    rng = np.random.default_rng(args.seed)
    rng.shuffle(rows)
    texts_all = [r["text"] for r in rows]
    # score a bounded candidate pool (positives of any label first) to find flagged positives per label
    pos = [r for r in rows if r.get("labels")][: args.per_label * 12]
    probs = pred.predict_proba([r["text"] for r in pos])
    thr = np.asarray(pred.meta.threshold_vector())
    slices: dict[str, list[str]] = {}
    for j, name in enumerate(labels):
        sel = [r["text"] for r, p in zip(pos, probs, strict=True) if name in r["labels"] and p[j] >= thr[j]]
        slices[name] = sel[: args.per_label]
    print(
        f"model {model_dir}\ndata {args.data} ({len(texts_all)} rows); k={args.k}, draws={args.draws}, "
        f"ig_steps={args.ig_steps}, seed={args.seed}"
    )
    print(
        "slices (label: flagged true positives used): "
        + ", ".join(f"{n}: {len(t)}" for n, t in slices.items())
    )

    results = {"model": str(model_dir), "k": args.k, "faithfulness": [], "cost": []}
    print("\nFaithfulness: mean drop of the label's calibrated probability after deleting k words")
    print(
        f"{'label':<24} {'method':<22} {'n':>4} {'drop top-k':>11} {'drop random':>12} {'margin':>8} {'wins':>6}"
        f" {'s/text':>7}"
    )
    for name, texts in slices.items():
        for method in args.methods:
            ex = Explainer(pred, method=method, ig_steps=args.ig_steps)
            t0 = time.perf_counter()
            attrs = ex.attribute(texts, [name])
            dt = time.perf_counter() - t0
            f = deletion_test(ex, texts, name, k=args.k, draws=args.draws, seed=args.seed, attributions=attrs)
            print(
                f"{name:<24} {method:<22} {f.n:>4} {f.drop_top:>11.3f} {f.drop_random:>12.3f} {f.margin:>8.3f} "
                f"{f.wins:>6.2f} {dt / max(len(texts), 1):>7.2f}"
            )
            results["faithfulness"].append(
                {**f.__dict__, "method": method, "seconds_per_text": dt / max(len(texts), 1)}
            )

    cost_texts = [t for texts in slices.values() for t in texts][: args.cost_texts]
    runtimes = ["torch", *sorted((pred.meta.runtimes or {}).get("variants", {}))]
    print(f"\nCost: Explainer.explain (flagged labels, top 5) on {len(cost_texts)} flagged texts")
    print(f"{'method':<22} {'runtime':<16} {'texts/s':>8} {'vs occlusion/torch':>19}")
    ref = None
    for method in args.methods:
        for rt in runtimes if method == "occlusion" else ["torch"]:
            p = pred if rt == "torch" else Predictor.load(model_dir, runtime=rt)
            ex = Explainer(p, method=method, ig_steps=args.ig_steps)
            ex.explain(cost_texts[:2])  # warm-up (IG: loads captum)
            t0 = time.perf_counter()
            ex.explain(cost_texts)
            tps = len(cost_texts) / (time.perf_counter() - t0)
            ref = ref or tps
            print(f"{method:<22} {rt:<16} {tps:>8.2f} {tps / ref:>18.2f}x")
            results["cost"].append({"method": method, "runtime": rt, "texts_per_s": tps})
    t0 = time.perf_counter()
    pred.predict(cost_texts)
    plain = len(cost_texts) / (time.perf_counter() - t0)
    print(f"{'(plain scoring)':<22} {'torch':<16} {plain:>8.2f} {plain / ref:>18.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
