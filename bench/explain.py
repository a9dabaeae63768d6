"""Explanation benchmark: faithfulness (deletion test) per label and method, and cost (texts/s) per
method and runtime, in one run, side by side.

Usage::

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/explain.py --model DIR \
        --data ../shared/datasets/risky-ads-v1/test.jsonl [--per-label 40] [--k 3] [--draws 5] \
        [--methods occlusion integrated_gradients] [--cost-texts 24] [--json OUT]

Slices (seeded): for each label, up to ``--per-label`` test rows (among the first ``--pool`` rows
carrying it, in a seeded order) that carry the label AND that the model flags for it (explanations are shown for flagged labels). On each slice and method: attribute,
then the deletion test (``bench/explain_faithfulness.py``): delete the top-k positively attributed words
from the original text and re-score, vs k random words (mean of ``--draws`` draws); the figure is the
mean drop of the label's calibrated probability, top-k minus random (the margin), and the share of
texts where top-k beats random.

Cost: ``Explainer.explain`` (flagged labels, top 5) on the first ``--cost-texts`` flagged rows of all
slices, wall clock, per method and runtime (torch, and each ONNX variant the artifact has; integrated
gradients always run the torch weights, so they are timed once). Same texts for every row; ratios
against occlusion on torch. Threads: the predictor's default (``$ADRISK_NUM_THREADS``, else every usable CPU).
``--cost-only``: only the cost table, on the first labelled rows, explaining every label (for a model
whose flags mean nothing, e.g. an untrained head of the real size).

``--serve``: one ``adrisk serve`` (``bench/serve_load.py``'s launcher), phases alternating plain-only
and plain + explain clients (``--clients`` plain single-ad clients back to back, ``--explain-clients``
explain clients, ``--seconds`` per phase, ``--rounds`` pairs); prints each phase's plain p50/p99 and
the pooled and median p99 ratios with/without explain.

``--example TEXT``: one text's explanations (both methods) as JSON and highlighted.
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


def print_example(pred, text: str, labels: list[str] | None = None, top_k: int = 5) -> int:
    from model.explain import Explainer

    p = pred.predict([text])[0]
    print("scores", json.dumps({k: round(v, 3) for k, v in p.category_scores.items()}), "flagged", p.flagged)
    for method in ("occlusion", "integrated_gradients"):
        exp = Explainer(pred, method=method).explain([text], labels=labels, top_k=top_k)[0]
        print(f"--- {method}")
        print(
            json.dumps({k: [s.to_dict() | {"score": round(s.score, 3)} for s in v] for k, v in exp.items()})
        )
        for label, spans in exp.items():
            print(f"{label}: {highlight(text, spans)!r}")
    return 0


async def _load(base: str, clients: int, explain_clients: int, seconds: float, ads: list[str]) -> dict:
    import asyncio

    import httpx

    plain: list[float] = []
    explained: list[float] = []
    errors = {"plain": 0, "explain": 0}
    stop_at = time.perf_counter() + seconds

    async def client(k: int, c, explain: bool) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            body = {"input": ads[(k + i) % len(ads)]}
            if explain:
                body["explain"] = True
            t0 = time.perf_counter()
            r = await c.post(f"{base}/v1/classify", json=body)
            ok = r.status_code == 200 and (not explain or "explanations" in r.json()["results"][0])
            if ok:
                (explained if explain else plain).append(time.perf_counter() - t0)
            else:
                errors["explain" if explain else "plain"] += 1
            i += 1

    n = clients + explain_clients
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as c:
        await asyncio.gather(
            *(client(k, c, False) for k in range(clients)),
            *(client(k, c, True) for k in range(explain_clients)),
        )

    def pct(x, q):
        return round(float(np.percentile(np.asarray(x) * 1000, q)), 1) if x else None

    return {
        "plain_requests": len(plain),
        "plain_p50_ms": pct(plain, 50),
        "plain_p99_ms": pct(plain, 99),
        "explain_requests": len(explained),
        "explain_p50_ms": pct(explained, 50),
        "errors": errors,
        "plain_latencies": plain,
    }


def serve_bench(args) -> int:
    """Plain-request latency with and without concurrent explain requests, one server, alternating
    phases (off, on, off, on) so drift hits both."""
    import asyncio

    sys.path.insert(0, str(REPO / "bench"))
    import tempfile

    from serve_load import ADS, _start

    tmp = Path(tempfile.mkdtemp(prefix="adrisk-explain-bench-"))
    proc, base = _start(str(args.model), 32, 5.0, args.torch_threads, tmp / "server.log")
    rows = []
    try:
        asyncio.run(_load(base, 2, 1, 3.0, ADS))  # warm-up (both paths)
        for phase in range(2 * args.rounds):
            e = args.explain_clients if phase % 2 else 0
            r = asyncio.run(_load(base, args.clients, e, args.seconds, ADS))
            rows.append((e, r))
    finally:
        proc.terminate()
        proc.wait(20)
    print(
        f"model {args.model}; {args.clients} plain clients (single ad each, back to back); "
        f"{args.explain_clients} explain clients in the 'with' phases; {args.seconds:g} s per phase; "
        f"torch threads {args.torch_threads}"
    )
    print(
        f"{'phase':<16}{'plain req':>10}{'p50 ms':>9}{'p99 ms':>9}{'explain req':>12}{'expl p50 ms':>12}{'errors':>16}"
    )
    for e, r in rows:
        name = "with explain" if e else "plain only"
        print(
            f"{name:<16}{r['plain_requests']:>10}{r['plain_p50_ms']:>9}{r['plain_p99_ms']:>9}"
            f"{r['explain_requests']:>12}{str(r['explain_p50_ms']):>12}{str(r['errors']):>16}"
        )
    off = [r["plain_p99_ms"] for e, r in rows if not e]
    on = [r["plain_p99_ms"] for e, r in rows if e]
    pooled = {
        e: np.percentile(np.concatenate([r["plain_latencies"] for f, r in rows if bool(f) == e]) * 1000, 99)
        for e in (False, True)
    }
    print(
        f"plain p99 with/without explain: pooled over phases {pooled[True]:.1f} / {pooled[False]:.1f} ms = "
        f"{pooled[True] / pooled[False]:.2f}x; median of phase p99s {np.median(on):.1f} / {np.median(off):.1f} ms "
        f"= {np.median(on) / np.median(off):.2f}x; spread of phase p99s without explain: {min(off)}-{max(off)} ms"
    )
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
    ap.add_argument(
        "--pool", type=int, default=300, help="candidate rows per label scored to find flagged ones"
    )
    ap.add_argument("--labels", nargs="+", default=None, help="only these labels (default all)")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["occlusion", "integrated_gradients"])
    ap.add_argument("--ig-steps", type=int, default=32)
    ap.add_argument("--cost-texts", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--serve",
        action="store_true",
        help="measure plain-request latency with and without "
        "concurrent explain requests on one server instead",
    )
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--explain-clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument(
        "--example-labels", nargs="+", default=None, help="--example: these labels (default flagged)"
    )
    ap.add_argument("--top-k", type=int, default=5, help="--example: spans per label")
    ap.add_argument(
        "--cost-only", action="store_true", help="only the cost table, on labelled rows, all labels"
    )
    ap.add_argument("--example", default=None, help="only print this text's explanation (JSON + highlight)")
    args = ap.parse_args(argv)

    from bench.explain_faithfulness import deletion_test
    from model.explain import Explainer
    from model.predictor import Predictor

    model_dir = args.model or find_model(Path("/work/runs/demo0/outputs"))
    if model_dir is None:
        print("no model: pass --model DIR", file=sys.stderr)
        return 2
    if args.serve:
        args.model = model_dir
        return serve_bench(args)
    pred = Predictor.load(model_dir, runtime="torch")
    if args.example is not None:
        return print_example(pred, args.example, args.example_labels, args.top_k)
    labels = list(pred.labels)
    rows = load_rows(args.data)
    rng = np.random.default_rng(args.seed)
    rng.shuffle(rows)
    texts_all = [r["text"] for r in rows]
    # score a bounded candidate pool (positives of any label first) to find flagged positives per label
    # candidates: up to --pool rows carrying each label (seeded order), scored once
    wanted = args.labels or labels
    pos_ids = sorted(
        {i for n in wanted for i in [k for k, r in enumerate(rows) if n in r.get("labels", [])][: args.pool]}
    )
    pos = [rows[i] for i in pos_ids]
    probs = pred.predict_proba([r["text"] for r in pos])
    thr = np.asarray(pred.meta.threshold_vector())
    slices: dict[str, list[str]] = {}
    for j, name in enumerate(labels):
        if name not in wanted:
            continue
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
        f"{'label':<24} {'method':<22} {'n':>4} {'drop top-k':>11} {'drop random':>12} {'margin':>8} {'wins':>6} {'margin logit':>13}"
        f" {'s/text':>7}"
    )
    for name, texts in slices.items() if not args.cost_only else []:
        for method in args.methods:
            ex = Explainer(pred, method=method, ig_steps=args.ig_steps)
            t0 = time.perf_counter()
            attrs = ex.attribute(texts, [name])
            dt = time.perf_counter() - t0
            f = deletion_test(ex, texts, name, k=args.k, draws=args.draws, seed=args.seed, attributions=attrs)
            print(
                f"{name:<24} {method:<22} {f.n:>4} {f.drop_top:>11.3f} {f.drop_random:>12.3f} {f.margin:>8.3f} "
                f"{f.wins:>6.2f} {f.margin_logit:>13.3f} {dt / max(len(texts), 1):>7.2f}"
            )
            results["faithfulness"].append(
                {**f.__dict__, "method": method, "seconds_per_text": dt / max(len(texts), 1)}
            )

    if args.cost_only:  # any model (an untrained head flags at random): labelled rows, every label explained
        cost_texts, cost_labels, what = [r["text"] for r in pos][: args.cost_texts], labels, "all labels"
    else:
        cost_texts = [t for texts in slices.values() for t in texts][: args.cost_texts]
        cost_labels, what = None, "flagged labels"
    runtimes = ["torch", *sorted(pred.meta.runtimes.variants)]
    print(
        f"\nCost: Explainer.explain ({what}, top 5) on {len(cost_texts)} texts, wall clock; plain = predict "
        f"on the same texts and runtime"
    )
    print(f"{'method':<22} {'runtime':<16} {'texts/s':>8} {'vs occlusion/torch':>19}")
    ref = None
    for rt in runtimes:
        p = pred if rt == "torch" else Predictor.load(model_dir, runtime=rt)
        for method in args.methods if rt == "torch" else [m for m in args.methods if m == "occlusion"]:
            ex = Explainer(p, method=method, ig_steps=args.ig_steps)
            ex.explain(cost_texts[:2], labels=cost_labels)  # warm-up (IG: loads captum)
            t0 = time.perf_counter()
            ex.explain(cost_texts, labels=cost_labels)
            tps = len(cost_texts) / (time.perf_counter() - t0)
            ref = ref or tps
            print(f"{method:<22} {rt:<16} {tps:>8.2f} {tps / ref:>18.2f}x")
            results["cost"].append({"method": method, "runtime": rt, "texts_per_s": tps})
        p.predict(cost_texts[:2])
        t0 = time.perf_counter()
        p.predict(cost_texts)
        plain = len(cost_texts) / (time.perf_counter() - t0)
        print(f"{'(plain scoring)':<22} {rt:<16} {plain:>8.2f} {plain / ref:>18.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
