"""``adrisk link --engine spark`` (and ``score --link --engine spark``): the link pass with Spark doing
the per-ad work and the graph work; the same ``LinkResult`` (and so the same output files) as
``signals.linking.link_chunks``.

What runs where:

* **Driver, streaming.** Reads the scored file chunk by chunk (``batch.tables.iter_chunks``, the local
  linker's reader) and stages ``row, text, score, flag, time, place`` in a Parquet directory (scores,
  flags, times and places computed by the local linker's own ``Linker._record_scores``). Memory: one
  chunk. On a cluster the staging directory must be on storage the executors read (``work_dir``).
* **Spark tasks, per ad** (``mapInPandas``): ``signals.linking._process_texts``, the local linker's
  per-ad function: contacts (``signals.contacts.ContactExtractor``), the identical-text key, masked
  word shingles and their MinHash signatures (datasketch's ``affine32`` permutations) and the LSH band
  keys with the local linker's banding (datasketch's optimal (bands, rows) for the threshold and the
  same band mixing constants). A null or empty text keeps its row (no contacts, no signature, its own
  persona and template).
* **Spark, graph.** The hub cap (a contact shared by more than ``hub_cap`` ads is not used), personas
  as connected components of the ad-contact graph (each non-hub key joins its ads to its smallest row),
  template candidates as ads sharing a band key with the bucket's smallest row, verified by estimated
  Jaccard >= ``similarity`` (the local rule, bit for bit), connected components by the iterative
  large-star / small-star join (Kiveris et al., SoCC 2014; no GraphFrames). Persona components above
  ``max_persona`` are resolved again by ``groupBy(component).applyInPandas`` running the local
  linker's ``_split_large_personas`` on that component alone (the same size-constrained single
  linkage: it only ever sees one component's pairs, so the result is the same as the local pass).
* **Spark, cluster risk.** Size, score max/mean, share flagged, distinct places and contacts, first
  and last seen per persona / template cluster of 2+ ads (``groupBy``); templates from the first
  ``template_sample + 1`` members of each template cluster (masked in tasks, aligned by
  ``signals.linking._template`` per cluster). The driver ranks the table (the local sort) and
  writes the files and the HTML report (the top ``top`` clusters).

Ids are the smallest row number of each persona / cluster, as in the local pass, so the two engines
give the same ids, not only the same partition.

Why not ``pyspark.ml.feature.MinHashLSH``: its hash family (``(a * i + b) mod p`` over vector indices)
and its exact-Jaccard join are not the local linker's (datasketch permutations, estimated Jaccard over
the signature), so its clusters would differ from ``adrisk link`` near the threshold. Here the
signatures are computed in the tasks by the same code, and the banding and verification are Spark
joins; the output equals the local linker's (tests/batch/test_spark_link.py).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from signals.linking import (
    SPLITS_LISTED,
    LinkConfig,
    Linker,
    LinkError,
    LinkResult,
    _process_texts,
    _split_large_personas,
    _template,
    mask_text,
)

logger = logging.getLogger(__name__)

ROWS_PER_TASK = 50_000  # stage-1 partitions: at least 2 per task slot, at most this many rows each
_INT64_MIN = np.iinfo(np.int64).min
_ADS_SCHEMA = (
    "row long, contacts string, keys array<long>, text_key long, sig array<long>, bands array<long>, "
    "no_text boolean, n_contacts int, over_cap boolean"
)


# -- per-ad work in Spark tasks -----------------------------------------------------------------------
def _band_keys(sigs: np.ndarray, bands: int, rows: int, mult: np.ndarray) -> np.ndarray:
    """Band keys ``[n, bands]`` (uint64) exactly as ``Linker._templates`` computes them."""
    out = np.empty((len(sigs), bands), dtype=np.uint64)
    for b in range(bands):
        band = sigs[:, b * rows : (b + 1) * rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            out[:, b] = (band * mult[None, :]).sum(axis=1, dtype=np.uint64)
    return out


def _ads_fn(cfg: LinkConfig, bands: int, rows: int, mult: np.ndarray):
    """mapInPandas: (row, text) batches -> one row per ad (``_ADS_SCHEMA``)."""

    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            texts = [_decode(t) for t in pdf["text"].tolist()]
            n = len(texts)
            out = _process_texts(texts, 0, cfg)
            keys: list[list[int]] = [[] for _ in range(n)]
            text_key: list[int | None] = [None] * n
            for a, k, is_text in zip(
                out["pair_ad"].tolist(), out["pair_key"].view(np.int64).tolist(), out["pair_text"].tolist(),
                strict=True,
            ):  # fmt: skip
                if is_text:
                    text_key[a] = k
                else:
                    keys[a].append(k)
            sig: list = [None] * n
            band: list = [None] * n
            if out["sigs"] is not None:
                sigs = out["sigs"]
                bk = _band_keys(sigs, bands, rows, mult).view(np.int64)
                s64 = sigs.astype(np.int64)
                for j, r in enumerate(out["sig_rows"].tolist()):
                    sig[r] = s64[j]
                    band[r] = bk[j]
            n_contacts = [0 if c == "[]" else len(json.loads(c)) for c in out["contacts"]]
            yield pd.DataFrame(
                {
                    "row": pdf["row"].to_numpy(dtype=np.int64),
                    "contacts": out["contacts"],
                    "keys": keys,
                    "text_key": pd.array(text_key, dtype="Int64"),
                    "sig": sig,
                    "bands": band,
                    "no_text": [t is None or not t.strip() for t in texts],
                    "n_contacts": np.asarray(n_contacts, dtype=np.int32),
                    "over_cap": [c > cfg.max_contacts_per_ad for c in n_contacts],
                }
            )

    return fn


def _masked_fn(cfg: LinkConfig):
    """mapInPandas: (c, row, text bytes) -> (c, row, masked text), as the local pass masks template members."""

    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from signals.linking import _worker_state

        extractor, _ = _worker_state(cfg)
        for pdf in batches:
            pdf = pdf.copy()
            texts = [_decode(t) or "" for t in pdf["text"].tolist()]
            pdf["masked"] = [mask_text(t, extractor.extract(t)) for t in texts]
            yield pdf[["c", "row", "masked"]]

    return fn


def _template_fn(pdf: pd.DataFrame) -> pd.DataFrame:
    """applyInPandas per template cluster: ``_template`` of its first members (row order)."""
    pdf = pdf.sort_values("row")
    text, segments = _template(pdf["masked"].tolist())
    return pd.DataFrame(
        {
            "c": [int(pdf["row"].min())],
            "template": [text],
            "segments": [json.dumps(segments, ensure_ascii=False)],
        }
    )


def _split_fn(bound: int):
    """applyInPandas per persona component above ``bound``: the local ``_split_large_personas`` on it."""

    def fn(pdf: pd.DataFrame) -> pd.DataFrame:
        ad = pdf["row"].to_numpy(dtype=np.int64)
        rows = np.unique(ad)
        local = np.searchsorted(rows, ad)
        labels, splits = _split_large_personas(
            np.zeros(len(rows), dtype=np.int64),
            local,
            pdf["key"].to_numpy(dtype=np.int64),
            pdf["is_text"].to_numpy(dtype=bool),
            bound,
        )
        split: list[str | None] = [None] * len(rows)
        if splits:
            (s,) = splits
            split[0] = json.dumps({**s, "component": int(rows[0])})
        return pd.DataFrame({"row": rows, "persona": rows[labels], "split": split})

    return fn


# -- connected components: large-star / small-star -----------------------------------------------------
def star_components(edges, *, max_rounds: int = 100):
    """Connected components of the undirected graph ``edges`` (columns ``src``, ``dst``: long) by the
    alternating large-star / small-star joins (Kiveris, Lattanzi, Mirrokni, Rastogi, Vassilvitskii,
    "Connected Components in MapReduce and Beyond", SoCC 2014): O(log^2 n) rounds, each a few joins.

    Returns:
        A DataFrame ``(node, label)`` for every node of an edge, ``label`` the smallest node of its
        component (nodes on no edge are their own component and are not listed).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def fingerprint(df) -> tuple:
        row = df.agg(F.count("*").alias("n"), F.bit_xor(F.xxhash64("u", "v")).alias("h")).first()
        return int(row["n"]), row["h"]

    e = (
        edges.where(F.col("src") != F.col("dst"))
        .select(F.least("src", "dst").alias("u"), F.greatest("src", "dst").alias("v"))
        .distinct()
        .localCheckpoint(eager=False)
    )
    seen = fingerprint(e)  # the first action materialises the checkpoint
    for rounds in range(1, max_rounds + 1):
        # large star: every node links its strictly larger neighbours to its smallest neighbour (or itself)
        both = e.select(F.col("u").alias("x"), F.col("v").alias("y")).unionAll(
            e.select(F.col("v").alias("x"), F.col("u").alias("y"))
        )
        large = (
            both.withColumn("m", F.min("y").over(Window.partitionBy("x")))
            .where(F.col("y") > F.col("x"))
            .select(F.least("m", "x").alias("u"), F.col("y").alias("v"))
            .distinct()
        )
        # small star: every node links itself and its smaller neighbours to its smallest neighbour
        small = (
            large.withColumn("m", F.min("u").over(Window.partitionBy("v")))
            .select(
                F.explode(
                    F.array(
                        F.struct(F.col("m").alias("u"), F.col("u").alias("v")),
                        F.struct(F.col("m").alias("u"), F.col("v").alias("v")),
                    )
                ).alias("e")
            )
            .select("e.u", "e.v")
            .where(F.col("u") != F.col("v"))
            .distinct()
            .localCheckpoint(eager=False)
        )
        now = fingerprint(small)  # (edges, xor of their 64-bit hashes): unchanged = converged
        e = small
        if now == seen:
            logger.info("spark link: components converged in %d rounds", rounds)
            break
        seen = now
    else:
        raise LinkError(f"connected components did not converge in {max_rounds} rounds")
    return (
        e.select(F.col("v").alias("node"), F.col("u").alias("label"))
        .unionAll(e.select(F.col("u").alias("node"), F.col("u").alias("label")))
        .groupBy("node")
        .agg(F.min("label").alias("label"))
    )


# -- the driver ---------------------------------------------------------------------------------------
def _encode(text) -> bytes | None:
    return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else None


def _decode(raw) -> str | None:
    return None if raw is None else bytes(raw).decode("utf-8", "surrogatepass")


def _stage(make_chunks: Callable[[], Iterable[pd.DataFrame]], linker: Linker, path: Path) -> int:
    """Stream the chunks into ``path`` (Parquet) as (row, text, score, flag, t, place); returns rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("row", pa.int64()),
            ("text", pa.binary()),  # UTF-8 with surrogatepass: a lone surrogate survives, as locally
            ("score", pa.float32()),
            ("flag", pa.float32()),
            ("t", pa.int64()),
            ("place", pa.int64()),
        ]
    )
    writer = pq.ParquetWriter(path, schema)
    try:
        for df in make_chunks():
            texts, base = linker._prepare(df)
            m = len(texts)
            score, flag = linker._score[-1], linker._flag[-1]
            tim, place = linker._time[-1], linker._place[-1].view(np.int64)
            linker._score, linker._flag, linker._time, linker._place = [], [], [], []  # O(chunk) memory
            table = pa.table(
                {
                    "row": np.arange(base, base + m, dtype=np.int64),
                    "text": pa.array([_encode(t) for t in texts], pa.binary()),
                    "score": pa.array(score, pa.float32(), mask=np.isnan(score)),
                    "flag": pa.array(flag, pa.float32(), mask=np.isnan(flag)),
                    "t": pa.array(tim, pa.int64(), mask=tim == _INT64_MIN),
                    "place": pa.array(place, pa.int64(), mask=place == 0),
                },
                schema=schema,
            )
            writer.write_table(table)
    finally:
        writer.close()
    return linker.n


def _cluster_table(members, attrs, contact_pairs) -> pd.DataFrame:
    """The local ``_cluster_table`` of both kinds, aggregated by Spark. ``members``: (kind, row, c) of
    every ad in a cluster of 2+ ads; ``attrs``: (row, score, flag, t, place); ``contact_pairs``:
    (row, key). Rows: personas then template clusters, each by cluster id (the local order)."""
    from pyspark.sql import functions as F

    from signals.linking import CLUSTER_COLUMNS

    agg = (
        members.join(attrs, "row")
        .groupBy("kind", "c")
        .agg(
            F.count("*").alias("size"),
            F.max("score").alias("score_max"),
            F.avg("score").alias("score_mean"),
            F.avg("flag").alias("share_flagged"),
            F.countDistinct("place").alias("n_places"),
            F.min("t").alias("first_seen"),
            F.max("t").alias("last_seen"),
        )
    )
    nc = (
        members.join(contact_pairs, "row")
        .groupBy("kind", "c")
        .agg(F.countDistinct("key").alias("n_contacts"))
    )
    out = agg.join(nc, ["kind", "c"], "left").toPandas()
    if not len(out):
        return pd.DataFrame(columns=CLUSTER_COLUMNS)
    out["order"] = (out["kind"] == "template").astype(int)
    out = (
        out.sort_values(["order", "c"], kind="stable")
        .reset_index(drop=True)
        .rename(columns={"c": "cluster_id"})
    )
    out["cluster_id"] = out["cluster_id"].astype(np.int64)
    out["size"] = out["size"].astype(np.int64)
    out["n_places"] = out["n_places"].astype(np.int64)
    out["n_contacts"] = out["n_contacts"].fillna(0).astype(np.int64)
    for col in ("score_max", "score_mean", "share_flagged"):
        out[col] = out[col].astype(float)
    for col in ("first_seen", "last_seen"):
        out[col] = pd.to_datetime(out[col].astype(float), utc=True)
    mean = out["score_mean"].to_numpy(dtype=float)
    weight = np.where(np.isnan(mean), 1.0, 0.5 + np.nan_to_num(mean))
    out["priority"] = weight * np.log2(1 + out["size"]) * (1 + np.log2(out["n_contacts"] + 1) / 4)
    out["representative_row"] = out["cluster_id"]
    return out[list(CLUSTER_COLUMNS)]


def link_chunks_spark(
    make_chunks: Callable[[], Iterable[pd.DataFrame]],
    config: LinkConfig | None = None,
    *,
    spark=None,
    master: str | None = None,
    work_dir: str | Path | None = None,
    partitions: int | None = None,
) -> LinkResult:
    """``signals.linking.link_chunks`` with Spark doing the work (see the module docstring).

    Args:
        make_chunks: a fresh iterator over the rows each call (read once here).
        spark / master: the session, as ``batch.spark.get_spark``.
        work_dir: where the staged input goes (a temporary directory, removed at the end; on a
            cluster: shared storage).
        partitions: stage-1 partitions (default: 2 per task slot, at most ``ROWS_PER_TASK`` rows each).

    Returns:
        The LinkResult the local pass returns for the same rows and config (``report["engine"]``
        is ``"spark"``).

    Raises:
        LinkError: as ``link_chunks``; ScoreError: pyspark or Java missing.
    """
    from pyspark.sql import functions as F

    from batch.spark import get_spark

    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    last = [t0]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - last[0], 2)
        last[0] = now
        logger.info("spark link: %s %.1fs", name, phases[name])

    linker = Linker(config)
    cfg = linker.cfg
    session = get_spark(master, spark)
    tmp = Path(tempfile.mkdtemp(prefix="adrisk-spark-link-", dir=work_dir))
    shuffle_key = "spark.sql.shuffle.partitions"
    shuffle_before = session.conf.get(shuffle_key)
    try:
        n = _stage(make_chunks, linker, tmp / "staged.parquet")
        stats = dict(linker.stats)
        phase("stage")
        staged = session.read.parquet(str(tmp / "staged.parquet"))
        slots = max(1, int(session.sparkContext.defaultParallelism))
        parts = partitions or max(2 * slots, math.ceil(n / ROWS_PER_TASK))
        # the graph joins shuffle few bytes per ad: Spark's default 200 partitions is mostly task overhead
        session.conf.set(shuffle_key, str(parts))
        ads = (
            staged.select("row", "text")
            .repartition(max(1, min(parts, n or 1)))
            .mapInPandas(_ads_fn(cfg, linker.bands, linker.rows, linker._band_mult), schema=_ADS_SCHEMA)
            .localCheckpoint(eager=False)  # materialised by the first action below, then reused
        )
        stats |= _per_ad_stats(ads)
        phase("per_ad")

        # -- persona graph: (row, key) pairs, the hub cap, each usable key joining its ads to its first
        contact_pairs = ads.select("row", F.explode("keys").alias("key"))
        pairs = contact_pairs.withColumn("is_text", F.lit(False)).unionAll(
            ads.where(F.col("text_key").isNotNull()).select(
                "row", F.col("text_key").alias("key"), F.lit(True).alias("is_text")
            )
        )
        key_n = pairs.groupBy("key").agg(F.count("*").alias("k_n"))
        pairs = pairs.join(key_n, "key").localCheckpoint(eager=False)
        is_hub = (F.col("k_n") > cfg.hub_cap) & ~F.col("is_text")
        h = pairs.agg(
            F.countDistinct(F.when(is_hub, F.col("key"))).alias("keys"),
            F.sum(is_hub.cast("long")).alias("links"),
            F.max(F.when(is_hub, F.col("k_n"))).alias("largest"),
            F.countDistinct(F.when(~F.col("is_text"), F.col("key"))).alias("distinct"),
        ).first()
        stats["hub_cap"] = cfg.hub_cap
        stats["hub_contacts_cut"] = int(h["keys"] or 0)
        stats["hub_links_cut"] = int(h["links"] or 0)
        stats["largest_hub"] = int(h["largest"] or 0)
        use = pairs.where(~is_hub).select("row", "key", "is_text")
        first = use.groupBy("key").agg(F.min("row").alias("first"))
        p_edges = use.join(first, "key").select(F.col("first").alias("src"), F.col("row").alias("dst"))

        verified = _template_edges(ads, cfg)
        phase("graphs")

        # -- both graphs' components in one run: template nodes are rows + n (disjoint from personas')
        both = p_edges.unionAll(
            verified.select((F.col("src") + n).alias("src"), (F.col("dst") + n).alias("dst"))
        )
        comp = star_components(both).toPandas()
        node, label = comp["node"].to_numpy(dtype=np.int64), comp["label"].to_numpy(dtype=np.int64)
        persona = np.arange(n, dtype=np.int64)
        template = np.arange(n, dtype=np.int64)
        in_p = node < n
        persona[node[in_p]] = label[in_p]
        template[node[~in_p] - n] = label[~in_p] - n
        t_size = np.bincount(template, minlength=n)[template] if n else np.zeros(0, np.int64)
        stats["template_candidate_pairs_verified"] = int(verified.count())
        phase("components")

        # -- persona components above the bound: the local size-constrained single linkage, one per task
        p_sizes = np.bincount(persona, minlength=n) if n else np.zeros(0, np.int64)
        splits = _bound_personas(session, use, persona, p_sizes, cfg.max_persona)
        stats["max_persona"] = cfg.max_persona
        stats["personas_split"] = len(splits)
        stats["persona_split_ads"] = int(sum(x["ads"] for x in splits))
        stats["persona_split_parts"] = int(sum(x["parts"] for x in splits))
        stats["persona_splits"] = sorted(splits, key=lambda x: (-x["ads"], x["component"]))[:SPLITS_LISTED]
        stats["distinct_contacts"] = int(h["distinct"] or 0)
        phase("persona_bound")

        # -- per-row contacts (row order), the cluster table and the templates
        contacts_pdf = ads.select("row", "contacts").toPandas().sort_values("row")
        contacts = contacts_pdf["contacts"].tolist()
        if len(contacts) != n:
            raise LinkError(f"spark returned {len(contacts)} linked rows for {n}")
        member_pdf = _members(persona, template)
        clusters = pd.DataFrame(columns=list(_cols()))
        if len(member_pdf):
            lab = session.createDataFrame(member_pdf, schema="kind string, row long, c long")
            lab = lab.localCheckpoint(eager=False)
            clusters = _cluster_table(lab, staged.select("row", "score", "flag", "t", "place"), contact_pairs)
        phase("cluster_risk")
        tpl: dict[int, tuple[str, str]] = {}
        if len(clusters) and (clusters["kind"] == "template").any():
            tpl = _template_texts(lab, staged, cfg)
        clusters = _ranked_clusters(clusters, tpl)
        phase("template_text")
        stats["personas_multi"] = int((clusters["kind"] == "persona").sum()) if len(clusters) else 0
        stats["templates_multi"] = int((clusters["kind"] == "template").sum()) if len(clusters) else 0
    finally:
        session.conf.set(shuffle_key, shuffle_before)
        shutil.rmtree(tmp, ignore_errors=True)
    result = LinkResult(persona, template, t_size.astype(np.int64), contacts, clusters, stats)
    result.report["seconds"] = round(time.perf_counter() - t0, 2)
    result.report["config"] = {k: v for k, v in asdict(cfg).items() if k != "hash_key"}
    result.report["engine"] = "spark"
    result.report["spark_seconds"] = phases
    counts = [stats[k] for k in ("ads", "personas_multi", "templates_multi", "hub_contacts_cut")]
    logger.info("linked %d ads on spark: %d personas and %d template clusters of 2+ ads; %d hub contacts cut", *counts)  # fmt: skip
    return result


def _members(persona: np.ndarray, template: np.ndarray) -> pd.DataFrame:
    """``(kind, row, c)`` for every ad in a persona or template cluster of two or more ads."""
    n = len(persona)
    members = []
    for kind, labels in (("persona", persona), ("template", template)):
        rows = np.flatnonzero(np.bincount(labels, minlength=n)[labels] >= 2) if n else np.zeros(0, np.int64)
        members.append(pd.DataFrame({"kind": kind, "row": rows.astype(np.int64), "c": labels[rows]}))
    return pd.concat(members, ignore_index=True)


def _per_ad_stats(ads) -> dict[str, int]:
    """The per-ad counts the local pass reports: ads without text, over the contact cap, contacts,
    and ads too short for a template signature."""
    from pyspark.sql import functions as F

    totals = ads.agg(
        F.sum(F.col("no_text").cast("long")).alias("no_text"),
        F.sum(F.col("over_cap").cast("long")).alias("over_cap"),
        F.sum("n_contacts").alias("contacts"),
        F.sum((~F.col("no_text") & F.col("sig").isNull()).cast("long")).alias("too_short"),
    ).first()
    return {
        "ads_without_text": int(totals["no_text"] or 0),
        "ads_over_contact_cap": int(totals["over_cap"] or 0),
        "contacts": int(totals["contacts"] or 0),
        "ads_too_short_for_templates": int(totals["too_short"] or 0),
    }


def _ranked_clusters(clusters: pd.DataFrame, tpl: dict[int, tuple[str, str]]) -> pd.DataFrame:
    """The cluster table as the local pass writes it: template text columns whenever there are
    clusters, ranked by priority, size, then id (``rank`` from 1)."""
    if len(clusters):
        clusters["template"] = [
            tpl.get(c, (None, None))[0] if k == "template" else None
            for k, c in zip(clusters["kind"], clusters["cluster_id"], strict=True)
        ]
        clusters["template_segments"] = [
            tpl[c][1] if k == "template" and c in tpl else None
            for k, c in zip(clusters["kind"], clusters["cluster_id"], strict=True)
        ]
    clusters = clusters.sort_values(
        ["priority", "size", "cluster_id"], ascending=[False, False, True], kind="stable"
    ).reset_index(drop=True)
    clusters.insert(0, "rank", np.arange(1, len(clusters) + 1))
    return clusters


def _template_edges(ads, cfg):
    """Template graph edges ``(src, dst)``: ads sharing an LSH band key with the bucket's first ad,
    kept where their MinHash signatures agree on at least ``cfg.similarity`` of the permutations
    (the local linker's verification rule)."""
    from pyspark.sql import functions as F

    signed = ads.where(F.col("sig").isNotNull()).select("row", "sig", "bands")
    buckets = signed.select("row", F.posexplode("bands").alias("b", "bk"))
    heads = buckets.groupBy("b", "bk").agg(F.min("row").alias("first"))
    cand = (
        buckets.join(heads, ["b", "bk"])
        .where(F.col("row") != F.col("first"))
        .select(F.col("first").alias("src"), F.col("row").alias("dst"))
        .distinct()
    )
    sig_a = signed.select(F.col("row").alias("src"), F.col("sig").alias("sa"))
    sig_b = signed.select(F.col("row").alias("dst"), F.col("sig").alias("sb"))
    equal = F.aggregate(
        F.zip_with("sa", "sb", lambda x, y: F.when(x == y, 1).otherwise(0)),
        F.lit(0),
        lambda acc, x: acc + x,
    )
    return (
        cand.join(sig_a, "src")
        .join(sig_b, "dst")
        .where(equal / F.lit(float(cfg.num_perm)) >= F.lit(float(cfg.similarity)))
        .select("src", "dst")
    )


def _bound_personas(session, use, persona: np.ndarray, p_sizes: np.ndarray, max_persona: int) -> list[dict]:
    """Split every persona component above ``max_persona`` ads with the local size-constrained single
    linkage, one component per task; ``persona`` (row -> persona id) is updated in place.

    Returns:
        One record per split component (its ads, parts and component id), as the local pass reports.
    """
    big_rows = np.flatnonzero(p_sizes[persona] > max_persona)
    if not len(big_rows):
        return []
    big = session.createDataFrame(
        pd.DataFrame({"row": big_rows, "label": persona[big_rows]}), schema="row long, label long"
    )
    sp = (
        use.join(big, "row")
        .groupBy("label")
        .applyInPandas(_split_fn(max_persona), schema="row long, persona long, split string")
        .toPandas()
    )
    persona[sp["row"].to_numpy(dtype=np.int64)] = sp["persona"].to_numpy(dtype=np.int64)
    return [json.loads(x) for x in sp["split"].dropna()]


def _template_texts(lab, staged, cfg) -> dict[int, tuple[str, str]]:
    """``{template cluster id: (template, segments JSON)}`` from up to ``cfg.template_sample + 1``
    member texts per cluster (first rows first), masked and aligned as the local pass does."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("c").orderBy("row")
    sample = (
        lab.where(F.col("kind") == "template")
        .join(staged.select("row", "text"), "row")
        .where(F.col("text").isNotNull())
        .withColumn("i", F.row_number().over(w))
        .where(F.col("i") <= cfg.template_sample + 1)
        .select("c", "row", "text")
        .mapInPandas(_masked_fn(cfg), schema="c long, row long, masked string")
        .groupBy("c")
        .applyInPandas(_template_fn, schema="c long, template string, segments string")
        .toPandas()
    )
    return {
        int(c): (t, s) for c, t, s in zip(sample["c"], sample["template"], sample["segments"], strict=True)
    }


def _cols() -> tuple[str, ...]:
    from signals.linking import CLUSTER_COLUMNS

    return CLUSTER_COLUMNS
