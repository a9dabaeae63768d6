"""Linking benchmark: a synthetic corpus whose template clusters are known by construction.

Builds ``--n`` ads (default 1,000,000) from risky-ads-v1 texts: base texts of at least 20 words
(cut at 1,000 characters), no two of them near-duplicates (exact word-3-shingle Jaccard < 0.3 among
datasketch MinHashLSH candidates at 0.3; datasketch's own sha1 MinHash, independent of
``signals.linking``), each copied a heavy-tailed number of times (Pareto weights). Every copy is perturbed:
about 2% of its words swapped with a neighbour and 2% replaced by random corpus words, every digit
re-drawn in half of the copies (new phone numbers and prices), and 1-3 emoji inserted. The corpus is
written to Parquet by a child process (its memory does not count), then the full ``--link`` pass of
``signals.linking.link_chunks`` (extraction + persona linking + template clusters + templates; no model
scoring) streams over it with ``batch.tables.iter_chunks``, the per-ad work in ``--workers`` processes
(default 2). Prints wall and CPU time (all processes), peak RSS of the linking process and of its
largest child, and pairwise precision/recall of ``template_id`` against the construction.

    nice -n 10 .venv/bin/python bench/linking.py [--n 1000000] [--work /tmp/adrisk-linkbench]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch.tables import iter_chunks  # noqa: E402
from bench.persona_agreement import pair_counts  # noqa: E402
from signals.linking import LinkConfig, link_chunks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EMOJI = list("💋🌹🔥💦😘✨💎🍒👄💕🌸⭐😍🎀💯")
_WORDS = re.compile(r"\w+")


def base_texts(data: Path, seed: int) -> list[str]:
    """Distinct, mutually non-near-duplicate base texts (>= 20 words, <= 1,000 chars)."""
    from datasketch import MinHash, MinHashLSH

    texts = []
    for split in ("train", "validation", "test"):
        df = pd.read_json(data / f"{split}.jsonl", lines=True, dtype=False)
        texts += df["text"].tolist()
    seen, pool = set(), []
    for t in texts:
        t = t[:1000].rsplit(" ", 1)[0] if len(t) > 1000 else t
        words = _WORDS.findall(t.lower())
        key = " ".join(words)
        if len(words) >= 20 and key not in seen:
            seen.add(key)
            pool.append((t, {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}))
    lsh = MinHashLSH(threshold=0.3, num_perm=64)
    kept = []
    for i, (t, sh) in enumerate(pool):
        m = MinHash(num_perm=64, seed=seed)
        m.update_batch([s.encode() for s in sh])
        if any(len(sh & pool[j][1]) / len(sh | pool[j][1]) >= 0.3 for j in lsh.query(m)):
            continue
        lsh.insert(i, m)
        kept.append(t)
    return kept


def perturb(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    """One perturbed copy (see the module docstring for the rates)."""
    words = text.split(" ")
    n = len(words)
    for _ in range(rng.binomial(n, 0.02)):
        i = int(rng.integers(0, max(n - 1, 1)))
        if i + 1 < n:
            words[i], words[i + 1] = words[i + 1], words[i]
    for _ in range(rng.binomial(n, 0.02)):
        words[int(rng.integers(0, n))] = vocab[int(rng.integers(0, len(vocab)))]
    for _ in range(int(rng.integers(1, 4))):
        words.insert(int(rng.integers(0, n + 1)), EMOJI[int(rng.integers(0, len(EMOJI)))])
    out = " ".join(words)
    if rng.random() < 0.5:
        digits = iter(rng.integers(0, 10, size=sum(c.isdigit() for c in out)).tolist())
        out = "".join(str(next(digits)) if c.isdigit() else c for c in out)
    return out


def build_corpus(n: int, path: Path, data: Path, seed: int) -> None:
    """Write ``n`` perturbed ads with their construction cluster (``truth``) to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    bases = base_texts(data, seed)
    vocab = sorted({w for t in bases for w in t.split(" ") if w.isalpha()})
    weights = rng.pareto(1.2, size=len(bases)) + 1
    truth = rng.choice(len(bases), size=n, p=weights / weights.sum())
    writer = None
    step = 50_000
    for lo in range(0, n, step):
        tr = truth[lo : lo + step]
        texts = [perturb(bases[b], rng, vocab) for b in tr]
        table = pa.table({"id": np.arange(lo, lo + len(tr)), "text": texts, "truth": tr})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    print(f"corpus: {n} ads from {len(bases)} base texts ({len(np.unique(truth))} used)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--work", default="/tmp/adrisk-linkbench")
    default = os.environ.get("ADRISK_DATA_DIR") or ROOT.parent / "shared" / "datasets" / "risky-ads-v1"
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--similarity", type=float, default=LinkConfig.similarity)
    ap.add_argument("--chunk-size", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument(
        "--workers", type=int, default=2, help="processes for the per-ad work (default 2: both cores)"
    )
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus-{args.n}-{args.seed}.parquet"
    if not corpus.exists():
        t0 = time.perf_counter()
        p = mp.get_context("spawn").Process(
            target=build_corpus, args=(args.n, corpus, Path(args.data), args.seed)
        )
        p.start()
        p.join()
        if p.exitcode != 0:
            print("corpus build failed", file=sys.stderr)
            return 1
        print(f"corpus built in {time.perf_counter() - t0:.0f}s (not counted)", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    cpu_children0 = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    cfg = LinkConfig(similarity=args.similarity, workers=args.workers)
    res = link_chunks(lambda: iter_chunks(corpus, args.chunk_size), cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # KiB -> GiB
    rss_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 / 1024  # largest worker
    cpu += sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - cpu_children0
    truth = pd.read_parquet(corpus, columns=["truth"])["truth"].to_numpy()
    prec, rec, pp, tp = pair_counts(res.template_id, truth)
    r = res.report
    print(
        f"ads: {r['ads']}  contacts: {r['contacts']}  template clusters (2+): {r['templates_multi']}  "
        f"true clusters (2+): {int((np.bincount(truth) >= 2).sum())}  personas (2+): {r['personas_multi']}"
    )
    print(
        f"personas: largest {int(np.bincount(res.persona_id).max())} ads (max persona {r['max_persona']}); "
        f"{r['personas_split']} component(s) above it ({r['persona_split_ads']} ads) split into "
        f"{r['persona_split_parts']} personas"
    )
    print(
        f"full link pass (extraction + personas + template clusters + templates): wall {wall:.1f}s "
        f"({wall / 60:.2f} min, target <= 10), CPU {cpu:.1f}s (all processes), peak RSS {rss:.2f} GiB "
        f"(target <= 4) + largest child process {rss_workers:.2f} GiB ({args.workers} worker(s); the corpus "
        "build when it ran in this call)"
    )
    print(
        f"template clusters vs construction: pairwise precision {prec:.4f} (target >= 0.95), "
        f"recall {rec:.4f} (target >= 0.90); predicted pairs {pp}, true pairs {tp}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
