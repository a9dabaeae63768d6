"""Linking on Spark against the local linker: wall time, rows/s, peak memory and agreement.

Builds ``--rows`` synthetic scored ads (default 100,000; no dataset needed): posters (personas) with
one to three contacts (phones, e-mails, handles), each written with seeded obfuscation (separators,
spelled-out and emoji digits, full-width digits, ``[at]``/``[dot]`` e-mails), a few recycled numbers
that chain posters, hub numbers shared by hundreds of ads, and template texts copied with word
swaps, replacements and emoji; plus null and empty texts. Then links the same Parquet file with
``signals.linking.link_chunks`` (``--workers`` processes, default 2) and with
``batch.spark_link.link_chunks_spark`` on ``local[2]``, and prints for each side the wall time,
rows/s and peak memory (local: this process + its worker processes; Spark: the driver's Python
process + the JVM + its Python workers: summed RSS of the process tree sampled every 0.2 s with
psutil, or from /proc where psutil is not installed), and the pairwise
precision / recall of Spark's personas and template clusters against the local ones.

    nice -n 10 .venv/bin/python bench/link_spark.py [--rows 1000000] [--work /tmp/adrisk-linkspark]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.persona_agreement import pair_counts  # noqa: E402

EMOJI = list("💋🌹🔥💦😘✨💎🍒👄💕🌸⭐😍🎀💯")
_SPELLED = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_KEYCAP = "\ufe0f\u20e3"
_WORDS = [
    "sweet",
    "discreet",
    "upscale",
    "companion",
    "available",
    "all",
    "night",
    "long",
    "generous",
    "gentlemen",
    "only",
    "no",
    "rush",
    "ever",
    "new",
    "in",
    "town",
    "hot",
    "young",
    "petite",
    "sexy",
    "fun",
    "friendly",
    "incall",
    "outcall",
    "special",
    "tonight",
    "real",
    "pics",
    "no",
    "games",
    "looking",
    "for",
    "a",
    "hard",
    "working",
    "warehouse",
    "associate",
    "to",
    "join",
    "our",
    "team",
    "full",
    "time",
    "position",
    "with",
    "benefits",
    "apply",
    "today",
    "room",
    "for",
    "rent",
    "cheap",
    "quiet",
    "clean",
    "near",
    "campus",
    "utilities",
    "included",
    "pet",
    "friendly",
    "parking",
    "car",
    "for",
    "sale",
    "low",
    "miles",
    "one",
    "owner",
    "runs",
    "great",
    "must",
    "see",
    "cash",
    "only",
    "serious",
    "buyers",
    "call",
    "text",
    "anytime",
    "visiting",
    "this",
    "week",
    "only",
    "ask",
    "about",
    "specials",
    "massage",
    "relax",
    "body",
    "treat",
    "yourself",
    "satisfaction",
]


def _obfuscate_phone(digits: str, rng: np.random.Generator) -> str:
    """A 10-digit number written one of the ways ads write it."""
    a, b, c = digits[:3], digits[3:6], digits[6:]
    style = int(rng.integers(0, 8))
    if style == 0:
        return f"{a}-{b}-{c}"
    if style == 1:
        return f"({a}) {b} {c}"
    if style == 2:
        return f"{a}.{b}.{c}"
    if style == 3:
        return " ".join(_SPELLED[int(d)] for d in digits)
    if style == 4:
        return "".join(d + _KEYCAP for d in digits)
    if style == 5:
        return "".join(chr(0xFF10 + int(d)) for d in digits)
    if style == 6:
        return f"{a} {EMOJI[int(rng.integers(0, len(EMOJI)))]} {b} {c}"
    return digits.replace("0", "o").replace("1", "l") if rng.random() < 0.5 else f"{a}{b}{c}"


def _email(name: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return f"{name}@mail.com"
    return f"{name} [at] mail [dot] com"


def synthetic_ads(n: int, seed: int = 7) -> pd.DataFrame:
    """``n`` synthetic scored ads (text, score_*, flagged, city, posted_at) with known structure."""
    rng = np.random.default_rng(seed)
    n_templates = max(2, n // 40)
    templates = [
        " ".join(rng.choice(_WORDS, size=int(rng.integers(18, 36))).tolist()) for _ in range(n_templates)
    ]
    n_personas = max(2, n // 8)
    phones = [f"{int(rng.integers(201, 990))}{int(rng.integers(200, 999))}{int(rng.integers(0, 10_000)):04d}"
              for _ in range(n_personas + 64)]  # fmt: skip
    hubs = phones[n_personas : n_personas + 4]  # shared by hundreds of ads: an agency line
    recycled = phones[n_personas + 4 :]  # reused by many posters: chains personas together
    weights = rng.pareto(1.3, size=n_personas) + 1
    persona = rng.choice(n_personas, size=n, p=weights / weights.sum())
    own_template = rng.integers(0, n_templates, size=n_personas)
    texts: list[str | None] = []
    for i in range(n):
        u = rng.random()
        if u < 0.002:
            texts.append(None)
            continue
        if u < 0.004:
            texts.append("" if u < 0.003 else "   ")
            continue
        p = int(persona[i])
        base = templates[int(own_template[p]) if rng.random() < 0.8 else int(rng.integers(0, n_templates))]
        words = base.split(" ")
        for _ in range(rng.binomial(len(words), 0.03)):
            j = int(rng.integers(0, len(words) - 1))
            words[j], words[j + 1] = words[j + 1], words[j]
        for _ in range(rng.binomial(len(words), 0.03)):
            words[int(rng.integers(0, len(words)))] = str(rng.choice(_WORDS))
        for _ in range(int(rng.integers(0, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), EMOJI[int(rng.integers(0, len(EMOJI)))])
        contact = []
        r = rng.random()
        if r < 0.85:
            contact.append("call " + _obfuscate_phone(phones[p], rng))
        if r > 0.6:
            contact.append("mail " + _email(f"kim{p}", rng))
        if rng.random() < 0.15:
            contact.append(f"ig @kim_{p}")
        if rng.random() < 0.01:
            contact.append("agency " + _obfuscate_phone(hubs[int(rng.integers(0, len(hubs)))], rng))
        if rng.random() < 0.02:
            contact.append("or " + _obfuscate_phone(recycled[int(rng.integers(0, len(recycled)))], rng))
        if rng.random() < 0.1:
            words.insert(0, f"I am {['Kim', 'Ana', 'Lia', 'Eva'][int(rng.integers(0, 4))]}")
        texts.append(" ".join(words) + " " + " ".join(contact))
    score = rng.random(n)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "text": texts,
            "score_adult_services": score,
            "score_scam": rng.random(n) * 0.5,
            "flagged": score >= 0.5,
            "city": rng.choice(["sf", "la", "ny", "chi", "sea"], size=n),
            "posted_at": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 90 * 86400, size=n), unit="s"),
        }
    )


def _rss_tree(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, summed RSS of all its descendants) in bytes: psutil when installed, else /proc."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        proc = psutil.Process(pid)
        kids = 0
        for c in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kids += c.memory_info().rss
        return proc.memory_info().rss, kids
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    page = os.sysconf("SC_PAGE_SIZE")

    def rss(p: int) -> int:
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        return 0

    todo, kids = [pid], 0
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p:
                kids += rss(c)
                todo.append(c)
    return rss(pid), kids


class PeakMemory:
    """Peak summed RSS of this process and its descendants (the JVM, Spark's Python workers, pool
    workers), sampled every ``interval`` seconds on a thread; also the peak of the descendants alone."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        own, kids = _rss_tree(os.getpid())
        self.peak = max(self.peak, own + kids)
        self.peak_children = max(self.peak_children, kids)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _build(rows: int, seed: int, path: str) -> None:
    synthetic_ads(rows, seed).to_parquet(path)


def main(argv: list[str] | None = None) -> int:
    from batch.spark import get_spark
    from batch.spark_link import link_chunks_spark
    from batch.tables import iter_chunks
    from signals.linking import LinkConfig, link_chunks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--work", default="/tmp/adrisk-linkspark")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2, help="local linker processes (default 2)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--chunk-size", type=int, default=50_000)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"ads-{args.rows}-{args.seed}.parquet"
    if not corpus.exists():  # built in a child process: its memory is not the linkers'
        t0 = time.perf_counter()
        p = mp.get_context("spawn").Process(target=_build, args=(args.rows, args.seed, str(corpus)))
        p.start()
        p.join()
        if p.exitcode != 0:
            print("corpus build failed", file=sys.stderr)
            return 1
        print(f"corpus: {args.rows} ads in {time.perf_counter() - t0:.0f}s (not counted)", flush=True)
    cfg = LinkConfig(workers=args.workers)
    with PeakMemory() as mem_local:
        t0 = time.perf_counter()
        local = link_chunks(lambda: iter_chunks(corpus, args.chunk_size), cfg)
        wall_local = time.perf_counter() - t0
    spark = get_spark(args.master)
    spark.sparkContext.setLogLevel("ERROR")
    with PeakMemory() as mem_spark:
        t0 = time.perf_counter()
        sp = link_chunks_spark(lambda: iter_chunks(corpus, args.chunk_size), LinkConfig(), spark=spark)
        wall_spark = time.perf_counter() - t0
    spark.stop()
    gib = 1024**3
    print(f"ads: {args.rows}  personas (2+): {local.report['personas_multi']} local / "
          f"{sp.report['personas_multi']} spark  template clusters (2+): {local.report['templates_multi']} "
          f"local / {sp.report['templates_multi']} spark  persona components split: "
          f"{local.report['personas_split']} / {sp.report['personas_split']}")  # fmt: skip
    for name, wall, mem in (
        (f"local linker ({args.workers} processes)", wall_local, mem_local),
        (f"spark {args.master} (driver + JVM + python workers)", wall_spark, mem_spark),
    ):
        print(
            f"{name}: wall {wall:.1f}s, {args.rows / wall:,.0f} rows/s, peak memory {mem.peak / gib:.2f} GiB "
            f"(child processes {mem.peak_children / gib:.2f} GiB)"
        )
    for kind, a, b in (
        ("personas", sp.persona_id, local.persona_id),
        ("template clusters", sp.template_id, local.template_id),
    ):
        prec, rec, pp, tp = pair_counts(a, b)
        same = bool(np.array_equal(a, b))
        print(f"{kind}: spark vs local pairwise precision {prec:.4f} recall {rec:.4f} "
              f"(pairs {pp} / {tp}; identical ids: {same})")  # fmt: skip
    print(f"contacts column identical: {sp.contacts == local.contacts}; cluster table rows "
          f"{len(sp.clusters)} spark / {len(local.clusters)} local; cpu count {os.cpu_count()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
