"""Usage: .venv/bin/python bench/blend_features.py --model DIR [--data risky-ads-v1/test.jsonl] [--limit 2000]

The TF-IDF blend's features as ``Predictor`` computes them (``model/blend.py``: the word-cached
``char_wb`` featuriser) against scikit-learn's own ``TfidfVectorizer.transform`` on the same fitted
vectoriser, in one run: 2,000 texts with a cold cache and again warm, a 24-text batch (the server's
mean batch) and a single ad (medians of 50 calls), with the largest difference between the two
matrices. The model must carry a blend (``adrisk.json`` ``blend``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from model.blend import WordCachedCharNgrams  # noqa: E402
from model.normalize import normalize_text  # noqa: E402
from model.predictor import Predictor  # noqa: E402


def seconds(fn, repeats: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(REPO.parent / "shared/datasets/risky-ads-v1/test.jsonl"))
    ap.add_argument("--limit", type=int, default=2000)
    args = ap.parse_args(argv)
    blend = Predictor.load(args.model, runtime="torch").blend
    if blend is None:
        print(f"{args.model} has no TF-IDF blend", file=sys.stderr)
        return 2
    with open(args.data, encoding="utf-8") as f:
        texts = [normalize_text(json.loads(line)["text"]) for line in f][: args.limit]
    char = next(v for v in blend.vectorizers if WordCachedCharNgrams.applies(v))
    fast = WordCachedCharNgrams(char)
    cold = seconds(lambda: fast.transform(texts))
    warm = seconds(lambda: fast.transform(texts), 3)
    sk = seconds(lambda: char.transform(texts), 3)
    diff = abs(fast.transform(texts) - char.transform(texts)).max()
    print(f"char_wb features of {len(texts)} texts (seconds; scikit-learn's transform is what users run)")
    print("| | scikit-learn | word-cached, cold | word-cached, warm | sklearn / warm |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {len(texts)} texts | {sk:.3f} | {cold:.3f} | {warm:.3f} | {sk / warm:.2f}x |")
    for n in (24, 1):
        batch = texts[:n]
        a, b = seconds(lambda b=batch: char.transform(b), 50), seconds(lambda b=batch: fast.transform(b), 50)
        print(f"| {n} text{'s' if n > 1 else ''} | {a * 1e3:.2f} ms | | {b * 1e3:.2f} ms | {a / b:.2f}x |")
    print(f"largest difference between the two matrices: {diff:.1e}")

    # the blend's whole TF-IDF logits: as served, and with scikit-learn's transforms and the
    # coefficients as stored (what the blend computed before)
    coef = blend.coef

    def before(batch):
        from scipy.sparse import hstack

        return hstack([v.transform(batch) for v in blend.vectorizers]).tocsr() @ coef.T

    print(
        "\nTF-IDF logits per call (median ms): the blend as served against scikit-learn transforms and `feats @ coef.T`"
    )
    print("| texts | before | as served | before / served |")
    print("|---:|---:|---:|---:|")
    blend.tfidf_logits(texts)  # warm the served cache as a running server's is
    for n in (1, 24):
        batch = texts[:n]
        a, b = seconds(lambda b=batch: before(b), 50), seconds(lambda b=batch: blend.tfidf_logits(b), 50)
        print(f"| {n} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
