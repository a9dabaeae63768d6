"""Cross-ad signals: persona linking, template clusters and cluster risk, streamed over chunked input.

Three products, computed in two streaming passes over the same chunks the scoring job reads
(``batch.tables.iter_chunks``), memory linear in the number of ads (a few hundred bytes per ad: a
MinHash signature, band keys, ids and scores; never the texts):

* **Personas.** Ads that share a normalised contact (``signals.contacts``: phone, e-mail, URL, handle)
  or an identical text (``text_identity``: NFKC, invisible characters dropped, white space folded;
  texts of at least ``min_tokens`` words) get
  one ``persona_id``: connected components of the ad-contact graph (``scipy.sparse.csgraph``). A
  *hub* contact, shared by more than ``hub_cap`` ads (a site's own number, an agency line), is not
  used for linking, and an ad with more than ``max_contacts_per_ad`` contacts (a spam list) links by
  none of them; both cuts are counted in ``LinkResult.report``. A component of more than
  ``max_persona`` ads is resolved again, since one transitive closure over reused and recycled
  numbers can chain unrelated posters without end: ads linked by identical text or by two or more
  distinct contacts stay together (a must-link, as record linkage weighs agreeing fields), and
  single-contact links merge only while the persona stays within the bound (``_split_component``);
  each split is counted and the largest are listed in the report. The id is the smallest row
  number in the persona, so it is stable across runs and chunk sizes.
* **Template clusters.** As in InfoShield (Lee et al., ICDE 2021), near-duplicate ads are grouped
  after contacts, numbers and names are masked: word ``shingle_size``-gram shingles, MinHash
  signatures (Broder 1997) with ``datasketch``'s permutations (scheme ``affine32``; the values equal
  ``datasketch.MinHash.update_batch``, computed for a batch of ads at once in numpy instead of one
  ``MinHash`` object and one Python hash call per shingle), LSH banding with ``datasketch``'s optimal
  (bands, rows) for the threshold, and every candidate pair verified by its estimated Jaccard
  similarity >= ``similarity`` before it joins a cluster (connected components). Each cluster has an
  id (smallest row number), size, a representative (its first ad) and a template: the words every
  sampled member shares with the representative, and slots where they differ (``difflib``
  alignment against the representative, InfoShield's interpretable output).
* **Cluster risk.** Per persona and per template cluster of two or more ads: size, distinct
  contacts and places, the members' model scores (max, mean, share flagged: read from the scoring
  job's own ``score_<label>``/``flagged`` columns, never a second model pass), first/last seen when
  a time column exists, and a review priority ``(0.5 + mean score) * log2(1 + size) *
  (1 + log2(distinct contacts + 1) / 4)`` (scores absent: 1 instead of 0.5 + mean) by which the
  table is ranked.

Logs and the report never contain ad text or contact values, only counts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from signals.contacts import ContactExtractor

logger = logging.getLogger(__name__)

TIME_COLUMNS = ("posted_at", "timestamp", "created_at", "posted", "date", "time")
PLACE_COLUMNS = ("city", "place", "location", "region", "area")
CLUSTER_COLUMNS = (
    "kind",
    "cluster_id",
    "size",
    "score_max",
    "score_mean",
    "share_flagged",
    "n_places",
    "first_seen",
    "last_seen",
    "n_contacts",
    "priority",
    "representative_row",
)
LINK_COLUMNS = ("contacts", "persona_id", "template_id", "template_size")
SLOT = "\u27e8\u2026\u27e9"  # ⟨…⟩ marks a slot in a template's text form
_EMPTY = "[]"
_FLAG_VALUES = {"true": 1.0, "1": 1.0, "1.0": 1.0, "false": 0.0, "0": 0.0, "0.0": 0.0}
_MASK_NUM = re.compile(r"\d+(?:[.,:/-]\d+)*")
_NAME_CUE = re.compile(
    r"\b(?:[Ii]\s*am|[Ii]'?m|[Nn]ame\s+is|[Aa]sk\s+for|[Cc]all\s+me|[Tt]his\s+is|[Ii]t'?s)\s+"
    r"([A-Z][a-z]{1,15})\b"
)
_WORD = re.compile(r"<\w+>|#|[^\W\d_]+")
_MAX_HASH = np.uint64((1 << 32) - 1)


class LinkError(ValueError):
    """A user-facing problem with the linking configuration or input (message names no ad content)."""


@dataclass
class LinkConfig:
    """Settings of one linking pass (all have defaults; see the module docstring for their role).

    Attributes:
        text_column: the ad text column.
        region, strict_phones, hash_key: passed to ``signals.contacts.ContactExtractor``.
        hub_cap: a contact shared by more than this many ads is not used for linking (>= 2).
        max_persona: a persona component of more ads is split at its single-contact links (>= 2).
        max_contacts_per_ad: an ad with more contacts links by none of them (they stay in its row).
        link_identical_text: identical normalised texts (>= ``min_tokens`` words) link ads too.
        similarity: Jaccard similarity (0-1] of masked shingle sets for two ads to share a template.
        num_perm: MinHash permutations (signature length).
        shingle_size: words per shingle.
        min_tokens: ads with fewer masked words join no template cluster (too short to be a template).
        template_sample: members aligned against the representative to find the template's slots.
        flag_threshold: a score at or above it counts as flagged when the input has no ``flagged``.
        time_column, place_column: None = detected from ``TIME_COLUMNS`` / ``PLACE_COLUMNS``; "" = none.
        seed: MinHash permutation seed.
        batch_size: ads per numpy MinHash batch (bounds the temporary arrays' memory).
        workers: processes for the per-ad work of pass 1 (1 = this process); output identical.
    """

    text_column: str = "text"
    region: str = "US"
    strict_phones: bool = False
    hash_key: bytes | str | None = None
    hub_cap: int = 50
    max_persona: int = 50
    max_contacts_per_ad: int = 20
    link_identical_text: bool = True
    similarity: float = 0.5
    num_perm: int = 64
    shingle_size: int = 3
    min_tokens: int = 6
    template_sample: int = 6
    flag_threshold: float = 0.5
    time_column: str | None = None
    place_column: str | None = None
    seed: int = 1
    batch_size: int = 2048
    workers: int = 1

    def validate(self) -> None:
        """Raises LinkError naming the first bad setting."""
        if not 0 < self.similarity <= 1:
            raise LinkError(f"similarity must be in (0, 1], got {self.similarity}")
        if self.hub_cap < 2:
            raise LinkError(f"hub_cap must be >= 2, got {self.hub_cap}")
        if self.max_persona < 2:
            raise LinkError(f"max_persona must be >= 2, got {self.max_persona}")
        for name in (
            "num_perm",
            "shingle_size",
            "min_tokens",
            "template_sample",
            "max_contacts_per_ad",
            "batch_size",
            "workers",
        ):
            if int(getattr(self, name)) < 1:
                raise LinkError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LinkResult:
    """Per-ad ids (arrays of length ``n``, row order) plus the ranked cluster table and a report.

    Attributes:
        persona_id, template_id: int64 ids (smallest row number of the ad's component).
        template_size: int64 size of the ad's template cluster (1 = no near-duplicate).
        contacts: one JSON list per ad (``[{type, value, start, end[, platform]}, ...]``).
        clusters: one row per persona / template cluster of >= 2 ads, ranked by ``priority``.
        report: counts (ads, ads without text, hub contacts cut and the ads they touched, ...).
    """

    persona_id: np.ndarray
    template_id: np.ndarray
    template_size: np.ndarray
    contacts: list[str]
    clusters: pd.DataFrame
    report: dict = field(default_factory=dict)


def _key_hash(s: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


_INVISIBLE = re.compile("[\ufe00-\ufe0f\u200b-\u200f\u2060-\u2064\ufeff\xad]")


def text_identity(text: str) -> str:
    """The form in which two texts count as identical for persona linking: format characters and
    variation selectors dropped, Unicode NFKC, white space folded. Equal ``model.normalize`` output
    for all but HTML-markup differences, at a fifth of its CPU cost on escort ads (10.7 vs 50.9 us; emoji
    are not spelled out)."""
    return " ".join(unicodedata.normalize("NFKC", _INVISIBLE.sub("", text)).split())


def mask_text(text: str, contacts) -> str:
    """``text`` with contacts replaced by ``<type>``, names after a cue ("I am Kim") by ``<name>`` and
    numbers by ``#``: what template clustering compares."""
    parts, pos = [], 0
    for c in contacts:
        parts.append(text[pos : c.start])
        parts.append(f" <{c.type}> ")
        pos = c.end
    parts.append(text[pos:])
    masked = "".join(parts)
    masked = _NAME_CUE.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + "<name>", masked)
    return _MASK_NUM.sub("#", masked)


class _Permutations:
    """datasketch's MinHash permutations (scheme ``affine32``, its default since 2.0: MurmurHash3
    finaliser pre-mix, then ``a * h + b`` mod 2**32 with odd ``a``), applied to a whole batch at once."""

    def __init__(self, num_perm: int, seed: int) -> None:
        from datasketch import MinHash
        from datasketch.minhash import _fmix

        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a = np.asarray(a, dtype=np.uint32)
        self.b = np.asarray(b, dtype=np.uint32)
        self._fmix = _fmix

    def signatures(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """MinHash signatures (uint32, ``[n_sets, num_perm]``) of sets given as 32-bit hash values
        ``hashes`` split by ``offsets`` (``n_sets + 1`` ascending; every set non-empty).

        Equal to ``datasketch.MinHash(num_perm, seed, hashfunc=int).update_batch(set).hashvalues``."""
        hv = self._fmix(hashes.astype(np.uint32), 32)[:, None]
        with np.errstate(over="ignore"):
            phv = hv * self.a[None, :] + self.b[None, :]  # wraps mod 2**32: the permutation
        return np.minimum.reduceat(phv, offsets[:-1], axis=0)


_WORKER_STATE: dict = {}


def _worker_state(cfg: LinkConfig) -> tuple[ContactExtractor, _Permutations]:
    """This process's extractor and permutations for ``cfg`` (built once per process)."""
    key = (cfg.region, cfg.strict_phones, cfg.hash_key, cfg.num_perm, cfg.seed)
    state = _WORKER_STATE.get(key)
    if state is None:
        extractor = ContactExtractor(cfg.region, strict=cfg.strict_phones, hash_key=cfg.hash_key)
        state = _WORKER_STATE[key] = (extractor, _Permutations(cfg.num_perm, cfg.seed))
    return state


def _word_id(word: str) -> int:
    return zlib.crc32(word.encode("utf-8", "surrogatepass"))


def _process_texts(texts: list, base: int, cfg: LinkConfig) -> dict:
    """The per-ad work of one chunk (rows ``base``, ``base + 1``, ...): contacts, persona keys and
    MinHash signatures. A module-level function so worker processes can run it."""
    extractor, perm = _worker_state(cfg)
    stats = {
        "ads_without_text": 0,
        "ads_over_contact_cap": 0,
        "contacts": 0,
        "ads_too_short_for_templates": 0,
    }
    contacts_json: list[str] = []
    pair_ad, pair_key, pair_text = [], [], []
    tok_ids: list[int] = []
    offsets = [0]
    sig_rows = []
    k = cfg.shingle_size
    for i, text in enumerate(texts):
        row = base + i
        if not isinstance(text, str) or not text.strip():
            stats["ads_without_text"] += 1
            contacts_json.append(_EMPTY)
            continue
        contacts = extractor.extract(text)
        stats["contacts"] += len(contacts)
        if contacts:
            contacts_json.append(json.dumps([c.to_dict() for c in contacts], ensure_ascii=False))
            if len(contacts) > cfg.max_contacts_per_ad:
                stats["ads_over_contact_cap"] += 1
            else:
                for key in {c.key for c in contacts}:
                    pair_ad.append(row)
                    pair_key.append(_key_hash(key))
                    pair_text.append(False)
        else:
            contacts_json.append(_EMPTY)
        words = _WORD.findall(mask_text(text, contacts).lower())
        if cfg.link_identical_text and len(words) >= cfg.min_tokens:
            pair_ad.append(row)
            pair_key.append(_key_hash("text:" + text_identity(text)))
            pair_text.append(True)
        if len(words) < cfg.min_tokens:
            stats["ads_too_short_for_templates"] += 1
            continue
        ids = list(map(_word_id, words))
        n_sh = max(len(ids) - k + 1, 1)
        tok_ids.extend(ids if len(ids) >= k else ids + [0] * (k - len(ids)))
        offsets.append(offsets[-1] + n_sh + k - 1)
        sig_rows.append(row)
    sigs = None
    if sig_rows:
        sigs = _signatures(
            np.asarray(tok_ids, dtype=np.uint64), np.asarray(offsets, dtype=np.int64), perm, cfg
        )
    return {
        "contacts": contacts_json,
        "pair_ad": np.asarray(pair_ad, dtype=np.int64),
        "pair_key": np.asarray(pair_key, dtype=np.uint64),
        "pair_text": np.asarray(pair_text, dtype=bool),
        "sigs": sigs,
        "sig_rows": np.asarray(sig_rows, dtype=np.int64),
        "stats": stats,
    }


def _signatures(tok: np.ndarray, offsets: np.ndarray, perm: _Permutations, cfg: LinkConfig) -> np.ndarray:
    """Signatures of ads whose token ids lie in ``tok[offsets[i]:offsets[i+1]]`` (>= k tokens each)."""
    k = cfg.shingle_size
    out = []
    n_ads = len(offsets) - 1
    for lo in range(0, n_ads, cfg.batch_size):
        hi = min(lo + cfg.batch_size, n_ads)
        t = tok[offsets[lo] : offsets[hi]]
        # shingle hash at every position p: mix of tokens p..p+k-1 (32-bit, FNV-like multiply-xor)
        h = np.zeros(len(t) - k + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):
                h = (h ^ t[j : len(t) - k + 1 + j]) * np.uint64(0x100000001B3)
                h ^= h >> np.uint64(29)
        h &= _MAX_HASH
        # keep the shingles that start inside their own ad (the last k-1 positions of an ad cross over)
        local = offsets[lo : hi + 1] - offsets[lo]
        starts = local[:-1]
        lens = np.diff(local) - (k - 1)
        keep = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens, strict=True)])
        new_off = np.concatenate([[0], np.cumsum(lens)])
        out.append(perm.signatures(h[keep], new_off))
    return np.concatenate(out)


class Linker:
    """Streaming linker: ``add(chunk)`` for every chunk (pass 1), then ``finish(chunks)`` with a fresh
    iterator over the same chunks (pass 2, to sample member texts for the templates).

    Raises:
        LinkError: bad configuration, or a chunk without the text column.
    """

    def __init__(self, config: LinkConfig | None = None) -> None:
        self.cfg = config or LinkConfig()
        self.cfg.validate()
        try:
            self.extractor = ContactExtractor(
                self.cfg.region, strict=self.cfg.strict_phones, hash_key=self.cfg.hash_key
            )
        except ValueError as e:
            raise LinkError(str(e)) from None
        from datasketch.lsh import _optimal_param

        self.bands, self.rows = _optimal_param(self.cfg.similarity, self.cfg.num_perm, 0.5, 0.5)
        self.perm = _Permutations(self.cfg.num_perm, self.cfg.seed)
        rng = np.random.default_rng(self.cfg.seed)
        self._band_mult = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self.n = 0
        self._sigs: list[np.ndarray] = []  # per chunk: signatures of the ads with enough words
        self._sig_rows: list[np.ndarray] = []  # their row numbers
        self._pair_ad: list[np.ndarray] = []  # (row, key hash, is_text) for persona linking
        self._pair_key: list[np.ndarray] = []
        self._pair_text: list[np.ndarray] = []
        self._contacts: list[str] = []
        self._score: list[np.ndarray] = []
        self._flag: list[np.ndarray] = []
        self._time: list[np.ndarray] = []
        self._place: list[np.ndarray] = []
        self._time_col = self.cfg.time_column
        self._place_col = self.cfg.place_column
        self.stats: dict[str, Any] = {
            "ads": 0,
            "ads_without_text": 0,
            "ads_over_contact_cap": 0,
            "contacts": 0,
            "ads_too_short_for_templates": 0,
        }

    # -- pass 1 -------------------------------------------------------------------------------------
    def _prepare(self, df: pd.DataFrame) -> tuple[list, int]:
        """Check the chunk, record its scores/times/places; returns (texts, first row number)."""
        cfg = self.cfg
        if cfg.text_column not in df.columns:
            raise LinkError(f"text column {cfg.text_column!r} not found in the input")
        if self._time_col is None:
            self._time_col = next((c for c in TIME_COLUMNS if c in df.columns), "")
        if self._place_col is None:
            self._place_col = next((c for c in PLACE_COLUMNS if c in df.columns), "")
        texts = df[cfg.text_column].tolist()
        base = self.n
        self._record_scores(df, len(texts))
        self.n += len(texts)
        self.stats["ads"] = self.n
        return texts, base

    def _absorb(self, out: dict) -> None:
        self._contacts.extend(out["contacts"])
        self._pair_ad.append(out["pair_ad"])
        self._pair_key.append(out["pair_key"])
        self._pair_text.append(out["pair_text"])
        if out["sigs"] is not None:
            self._sigs.append(out["sigs"])
            self._sig_rows.append(out["sig_rows"])
        for k, v in out["stats"].items():
            self.stats[k] += v

    def add(self, df: pd.DataFrame) -> None:
        """Extract, mask, sign and record one chunk (rows numbered after the previous chunks')."""
        texts, base = self._prepare(df)
        self._absorb(_process_texts(texts, base, self.cfg))

    def add_all(self, chunks: Iterable[pd.DataFrame]) -> None:
        """``add`` for every chunk; with ``cfg.workers > 1`` the per-ad work (extraction, masking,
        signatures) runs in that many processes, at most ``workers + 1`` chunks in flight, results
        taken in order (ids and output identical to one process)."""
        if self.cfg.workers <= 1:
            for chunk in chunks:
                self.add(chunk)
            return
        import multiprocessing as mp
        from collections import deque

        with mp.get_context("spawn").Pool(self.cfg.workers) as pool:
            pending: deque = deque()
            for chunk in chunks:
                texts, base = self._prepare(chunk)
                pending.append(pool.apply_async(_process_texts, (texts, base, self.cfg)))
                if len(pending) > self.cfg.workers:
                    self._absorb(pending.popleft().get())
            while pending:
                self._absorb(pending.popleft().get())

    def _record_scores(self, df: pd.DataFrame, m: int) -> None:
        score_cols = [c for c in df.columns if str(c).startswith("score_")]
        if score_cols:
            s = df[score_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
            with np.errstate(all="ignore"):
                score = np.where(
                    np.isnan(s).all(axis=1), np.nan, np.nanmax(np.where(np.isnan(s), -1, s), axis=1)
                )
        else:
            score = np.full(m, np.nan)
        if "flagged" in df.columns:
            # bool, nullable boolean, or text (a CSV output): "True"/"False"/"" -> 1/0/NaN
            flag = (
                df["flagged"].map(lambda v: _FLAG_VALUES.get(str(v).strip().lower(), np.nan)).to_numpy(float)
            )
        else:
            flag = np.where(np.isnan(score), np.nan, (score >= self.cfg.flag_threshold).astype(float))
        self._score.append(score.astype(np.float32))
        self._flag.append(flag.astype(np.float32))
        if self._time_col and self._time_col in df.columns:
            t = pd.to_datetime(df[self._time_col], errors="coerce", utc=True)
            self._time.append(t.to_numpy(dtype="datetime64[ns]").astype(np.int64))
        else:
            self._time.append(np.full(m, np.iinfo(np.int64).min, dtype=np.int64))
        if self._place_col and self._place_col in df.columns:
            self._place.append(
                np.fromiter(
                    (
                        _key_hash(str(v).strip().lower()) if isinstance(v, str) and v.strip() else 0
                        for v in df[self._place_col].tolist()
                    ),
                    dtype=np.uint64,
                    count=m,
                )
            )
        else:
            self._place.append(np.zeros(m, dtype=np.uint64))

    # -- between the passes -------------------------------------------------------------------------
    def _personas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ad = np.concatenate(self._pair_ad) if self._pair_ad else np.zeros(0, np.int64)
        key = np.concatenate(self._pair_key) if self._pair_key else np.zeros(0, np.uint64)
        is_text = np.concatenate(self._pair_text) if self._pair_text else np.zeros(0, bool)
        _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
        hub = (counts[inv] > self.cfg.hub_cap) & ~is_text
        self.stats["hub_cap"] = self.cfg.hub_cap
        self.stats["hub_contacts_cut"] = int(len(np.unique(inv[hub])))
        self.stats["hub_links_cut"] = int(hub.sum())
        self.stats["largest_hub"] = int(counts[inv[hub]].max()) if hub.any() else 0
        use = ~hub
        labels = _components(self.n, inv[use], ad[use])
        labels, splits = _split_large_personas(labels, ad[use], inv[use], is_text[use], self.cfg.max_persona)
        self.stats["max_persona"] = self.cfg.max_persona
        self.stats["personas_split"] = len(splits)
        self.stats["persona_split_ads"] = int(sum(x["ads"] for x in splits))
        self.stats["persona_split_parts"] = int(sum(x["parts"] for x in splits))
        self.stats["persona_splits"] = sorted(splits, key=lambda x: (-x["ads"], x["component"]))[
            :SPLITS_LISTED
        ]
        self.stats["distinct_contacts"] = int(len(np.unique(key[~is_text])))
        return labels, ad[~is_text], key[~is_text]

    def _templates(self) -> np.ndarray:
        if not self._sigs:
            return np.arange(self.n, dtype=np.int64)
        sig = np.concatenate(self._sigs)
        rows = np.concatenate(self._sig_rows)
        self._sigs = []
        src, dst = [], []
        for b in range(self.bands):
            band = sig[:, b * self.rows : (b + 1) * self.rows].astype(np.uint64)
            with np.errstate(over="ignore"):
                keys = (band * self._band_mult[None, :]).sum(axis=1, dtype=np.uint64)
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            new = np.ones(len(sk), dtype=bool)
            new[1:] = sk[1:] != sk[:-1]
            first = np.maximum.accumulate(np.where(new, np.arange(len(sk)), 0))
            cand = ~new
            src.append(order[first[cand]])
            dst.append(order[cand])
        s = np.concatenate(src)
        d = np.concatenate(dst)
        if len(s):
            m = np.int64(len(rows))
            pairs = np.unique(s.astype(np.int64) * m + d)  # one int64 per pair: a 1-D sort, not a row sort
            s, d = pairs // m, pairs % m
            ok = np.zeros(len(s), dtype=bool)
            step = 1 << 18
            for lo in range(0, len(s), step):
                a, bb = sig[s[lo : lo + step]], sig[d[lo : lo + step]]
                ok[lo : lo + step] = (a == bb).mean(axis=1) >= self.cfg.similarity
            s, d = s[ok], d[ok]
        self.stats["template_candidate_pairs_verified"] = int(len(s))
        local = _components(len(rows), s, d, bipartite=False)
        labels = np.arange(self.n, dtype=np.int64)
        labels[rows] = rows[local] if len(rows) else labels[rows]
        return labels

    # -- pass 2 and the table -----------------------------------------------------------------------
    def finish(self, chunks: Iterable[pd.DataFrame] | None = None) -> LinkResult:
        """Components, cluster risk and templates. ``chunks``: the same rows again (for the templates'
        texts); None = clusters get no template text."""
        persona, contact_ad, contact_key = self._personas()
        template = self._templates()
        score = np.concatenate(self._score) if self._score else np.zeros(0, np.float32)
        flag = np.concatenate(self._flag) if self._flag else np.zeros(0, np.float32)
        tim = np.concatenate(self._time) if self._time else np.zeros(0, np.int64)
        place = np.concatenate(self._place) if self._place else np.zeros(0, np.uint64)
        t_size = np.bincount(template, minlength=self.n)[template] if self.n else np.zeros(0, np.int64)
        tables = []
        for kind, labels in (("persona", persona), ("template", template)):
            tables.append(_cluster_table(kind, labels, score, flag, tim, place, contact_ad, contact_key))
        clusters = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        if chunks is not None and len(clusters):
            texts = self._collect_template_texts(chunks, clusters, template)
            tpl = {cid: _template(members) for cid, members in texts.items()}
            clusters["template"] = [
                tpl.get(c, (None, None))[0] if k == "template" else None
                for k, c in zip(clusters["kind"], clusters["cluster_id"], strict=True)
            ]
            clusters["template_segments"] = [
                json.dumps(tpl[c][1], ensure_ascii=False) if k == "template" and c in tpl else None
                for k, c in zip(clusters["kind"], clusters["cluster_id"], strict=True)
            ]
        clusters = clusters.sort_values(
            ["priority", "size", "cluster_id"], ascending=[False, False, True], kind="stable"
        ).reset_index(drop=True)
        clusters.insert(0, "rank", np.arange(1, len(clusters) + 1))
        self.stats["personas_multi"] = int((clusters["kind"] == "persona").sum()) if len(clusters) else 0
        self.stats["templates_multi"] = int((clusters["kind"] == "template").sum()) if len(clusters) else 0
        return LinkResult(
            persona.astype(np.int64),
            template.astype(np.int64),
            t_size.astype(np.int64),
            self._contacts,
            clusters,
            dict(self.stats),
        )

    def _collect_template_texts(self, chunks, clusters, template) -> dict[int, list[str]]:
        want = set(clusters.loc[clusters["kind"] == "template", "cluster_id"].tolist())
        got: dict[int, list[str]] = {}
        row = 0
        for df in chunks:
            texts = df[self.cfg.text_column].tolist()
            for i, text in enumerate(texts):
                cid = int(template[row + i])
                if cid in want and isinstance(text, str):
                    lst = got.setdefault(cid, [])
                    if len(lst) < self.cfg.template_sample + 1:
                        lst.append(mask_text(text, self.extractor.extract(text)))
            row += len(texts)
        if row != self.n:
            raise LinkError(f"the second pass read {row} rows, the first {self.n}; the input changed")
        return got


def _components(n: int, a: np.ndarray, b: np.ndarray, bipartite: bool = True) -> np.ndarray:
    """Component label per node = smallest node index in its component. ``bipartite``: ``a`` are key
    indices, ``b`` node indices (nodes sharing a key are joined); else ``a``-``b`` are node edges."""
    if bipartite:
        n_keys = int(a.max()) + 1 if len(a) else 0
        size = n + n_keys
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (b, a + n)), shape=(size, size))
    else:
        size = n
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(size, size))
    _, comp = connected_components(graph.tocsr(), directed=False)
    smallest = np.full(comp.max() + 1 if size else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, comp[:n], np.arange(n, dtype=np.int64))
    return smallest[comp[:n]]


SPLITS_LISTED = 20  # the largest split components listed in the report (all are counted)


def _split_large_personas(
    labels: np.ndarray, ad: np.ndarray, key: np.ndarray, is_text: np.ndarray, bound: int
) -> tuple[np.ndarray, list[dict]]:
    """Persona labels with every component of more than ``bound`` ads split by ``_split_component``.

    Args:
        labels: component label per ad (smallest row number), ``[n]``.
        ad, key, is_text: the linking pairs (row, key index, whether the key is an identical text).
        bound: the largest persona reached by single-contact links.

    Returns:
        (labels, splits): new labels (smallest row number of each part) and one dict per split
        component: ``component`` (its old id), ``ads``, ``parts``, ``largest_part``, ``contacts_cut``
        (contacts whose ads now lie in 2+ personas), ``parts_over_bound`` (parts held together by
        must-links alone).
    """
    n = len(labels)
    sizes = np.bincount(labels, minlength=n) if n else np.zeros(0, np.int64)
    if not n or sizes.max() <= bound:
        return labels, []
    labels = labels.copy()
    big = sizes[labels[ad]] > bound
    ad, key, is_text = ad[big], key[big], is_text[big]
    order = np.argsort(labels[ad], kind="stable")
    ad, key, is_text = ad[order], key[order], is_text[order]
    comp_of_pair = labels[ad]
    cuts = np.flatnonzero(np.r_[True, comp_of_pair[1:] != comp_of_pair[:-1], True])
    big_rows = np.flatnonzero(sizes[labels] > bound)  # ascending; grouped by component below
    big_rows = big_rows[np.argsort(labels[big_rows], kind="stable")]
    row_cuts = np.flatnonzero(np.r_[True, labels[big_rows][1:] != labels[big_rows][:-1], True])
    splits = []
    for (lo, hi), (rlo, rhi) in zip(
        zip(cuts[:-1], cuts[1:], strict=True), zip(row_cuts[:-1], row_cuts[1:], strict=True), strict=True
    ):
        comp = int(comp_of_pair[lo])
        rows = big_rows[rlo:rhi]
        parts = _split_component(rows, ad[lo:hi], key[lo:hi], is_text[lo:hi], bound)
        if len(parts) == 1:
            continue
        for members in parts:
            labels[members] = members.min()
        k_part = pd.DataFrame({"k": key[lo:hi], "p": labels[ad[lo:hi]]})
        splits.append(
            {
                "component": comp,
                "ads": len(rows),
                "parts": len(parts),
                "largest_part": int(max(len(m) for m in parts)),
                "contacts_cut": int((k_part.groupby("k")["p"].nunique() > 1).sum()),
                "parts_over_bound": int(sum(len(m) > bound for m in parts)),
            }
        )
    return labels, splits


def _split_component(
    rows: np.ndarray, ad: np.ndarray, key: np.ndarray, is_text: np.ndarray, bound: int
) -> list[np.ndarray]:
    """Resolve one persona component (ads ``rows``, sorted; linking pairs ``ad``-``key``) again,
    requiring two independent links for any merge beyond ``bound`` ads.

    1. Must-links: ads sharing an identical text, or two or more distinct contacts (a pair agreeing
       on two independent fields, the evidence record linkage weighs: Fellegi and Sunter 1969), are
       merged into one node (connected components), whatever its size.
    2. Single links: nodes are merged along the contacts they share, the pairs sharing the most
       contacts first (ties: smallest row numbers first, so the result does not depend on chunking),
       only while the merged part holds at most ``bound`` ads: a size-constrained single-linkage
       (Kruskal's order with a capacity), so a chain is cut where it must be and nowhere else.

    Returns:
        The parts as arrays of row numbers (together exactly ``rows``).
    """
    m = len(rows)
    a = np.searchsorted(rows, ad)
    _, k = np.unique(key, return_inverse=True)
    incidence = coo_matrix((np.ones(len(a), dtype=np.int32), (a, k)), shape=(m, int(k.max()) + 1)).tocsr()
    incidence.data[:] = 1  # an ad holding a key twice still holds it once
    text = np.isin(np.arange(incidence.shape[1]), k[is_text])
    shared = (incidence[:, ~text] @ incidence[:, ~text].T).tocoo()  # distinct contacts per ad pair
    twice = (shared.data >= 2) & (shared.row < shared.col)
    same_text = (incidence[:, text] @ incidence[:, text].T).tocoo()
    must = coo_matrix(
        (np.ones(int(twice.sum()) + same_text.nnz, dtype=np.int8),
         (np.r_[shared.row[twice], same_text.row], np.r_[shared.col[twice], same_text.col])),
        shape=(m, m),
    )  # fmt: skip
    _, node = connected_components(must.tocsr(), directed=False)  # must-link node per ad
    edges = pd.DataFrame({"u": node[shared.row], "v": node[shared.col], "w": shared.data})
    edges = edges[edges["u"] < edges["v"]].groupby(["u", "v"], sort=True)["w"].sum()
    part = _merge_within_bound(edges, np.bincount(node), bound)
    return [rows[members] for members in _group_rows(part[node])]


def _merge_within_bound(edges: pd.Series, node_ads: np.ndarray, bound: int) -> np.ndarray:
    """Union-find over nodes holding ``node_ads`` ads each: join the two ends of every edge, heaviest
    first (ties: smallest node ids), whenever the union holds at most ``bound`` ads. ``edges``: weight
    per ``(u, v)`` node pair (``u < v``). Returns the part (its smallest node id) per node."""
    size = node_ads.astype(np.int64)
    parent = np.arange(len(size))
    u, v = edges.index.get_level_values("u"), edges.index.get_level_values("v")

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in np.lexsort((v, u, -edges.to_numpy())):
        ra, rb = root(int(u[i])), root(int(v[i]))
        if ra != rb and size[ra] + size[rb] <= bound:
            parent[max(ra, rb)] = min(ra, rb)
            size[min(ra, rb)] += size[max(ra, rb)]
    return np.array([root(x) for x in range(len(size))], dtype=np.int64)


def _group_rows(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of ``labels`` grouped by value (each group ascending)."""
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    return [order[lo:hi] for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]


def _cluster_table(kind, labels, score, flag, tim, place, contact_ad, contact_key) -> pd.DataFrame:
    n = len(labels)
    size = np.bincount(labels, minlength=n) if n else np.zeros(0, np.int64)
    multi = size[labels] >= 2
    if not multi.any():
        return pd.DataFrame(columns=CLUSTER_COLUMNS)
    df = pd.DataFrame(
        {
            "c": labels[multi],
            "score": score[multi],
            "flag": flag[multi],
            "t": np.where(tim[multi] == np.iinfo(np.int64).min, np.nan, tim[multi].astype(float)),
            "place": np.where(place[multi] == 0, np.nan, place[multi].astype(float)),
        }
    )
    g = df.groupby("c", sort=True)
    out = pd.DataFrame(
        {
            "size": g.size(),
            "score_max": g["score"].max(),
            "score_mean": g["score"].mean(),
            "share_flagged": g["flag"].mean(),
            "n_places": g["place"].nunique(),
            "first_seen": g["t"].min(),
            "last_seen": g["t"].max(),
        }
    )
    cl = pd.DataFrame({"c": labels[contact_ad], "k": contact_key})
    cl = cl[size[cl["c"].to_numpy()] >= 2] if len(cl) else cl
    out["n_contacts"] = cl.groupby("c")["k"].nunique().reindex(out.index).fillna(0).astype(np.int64)
    out = out.reset_index().rename(columns={"c": "cluster_id"})
    for col in ("first_seen", "last_seen"):
        out[col] = pd.to_datetime(out[col], utc=True)
    mean = out["score_mean"].to_numpy(dtype=float)
    weight = np.where(np.isnan(mean), 1.0, 0.5 + np.nan_to_num(mean))
    out["priority"] = weight * np.log2(1 + out["size"]) * (1 + np.log2(out["n_contacts"] + 1) / 4)
    out.insert(0, "kind", kind)
    out["representative_row"] = out["cluster_id"]
    return out


def _template(members: list[str]) -> tuple[str, list[dict]]:
    """Template of masked member texts: the representative's words shared by every sampled member and
    slots (``{"slot": [variants]}``) where members differ. Returns (text form with ``SLOT``, segments)."""
    rep = members[0].split()
    low = [w.lower() for w in rep]
    shared = np.ones(len(rep), dtype=bool)
    gap_after: dict[int, set[str]] = {}
    for other in members[1:]:
        ow = other.split()
        sm = difflib.SequenceMatcher(None, low, [w.lower() for w in ow], autojunk=False)
        hit = np.zeros(len(rep), dtype=bool)
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag == "equal":
                hit[i1:i2] = True
            elif j2 > j1:
                gap_after.setdefault(i1, set()).add(" ".join(ow[j1:j2])[:80])
        shared &= hit
    segments: list[dict] = []
    for i, w in enumerate(rep):
        extra = gap_after.get(i)
        if extra or not shared[i]:
            variants = set(extra or ())
            if not shared[i]:
                variants.add(w)
            if segments and "slot" in segments[-1]:
                segments[-1]["slot"] = sorted(set(segments[-1]["slot"]) | variants)[:5]
            else:
                segments.append({"slot": sorted(variants)[:5]})
        if shared[i]:
            if segments and "text" in segments[-1]:
                segments[-1]["text"] += " " + w
            else:
                segments.append({"text": w})
    if gap_after.get(len(rep)):
        segments.append({"slot": sorted(gap_after[len(rep)])[:5]})
    text = " ".join(s.get("text", SLOT) for s in segments)
    return text, segments


def link_chunks(
    make_chunks: Callable[[], Iterable[pd.DataFrame]], config: LinkConfig | None = None
) -> LinkResult:
    """Run both passes: ``make_chunks()`` must return a fresh iterator over the same rows each call.

    Returns:
        The LinkResult (ids per row in input order, ranked cluster table, report with ``seconds``).

    Raises:
        LinkError: bad configuration, no text column, or the input changing between the passes.
    """
    t0 = time.perf_counter()
    linker = Linker(config)
    linker.add_all(make_chunks())
    result = linker.finish(make_chunks())
    result.report["seconds"] = round(time.perf_counter() - t0, 2)
    result.report["config"] = {k: v for k, v in asdict(linker.cfg).items() if k != "hash_key"}
    logger.info(
        "linked %d ads: %d personas and %d template clusters of 2+ ads; %d hub contacts cut",
        result.report["ads"],
        result.report["personas_multi"],
        result.report["templates_multi"],
        result.report["hub_contacts_cut"],
    )
    return result


def link_frame(df: pd.DataFrame, config: LinkConfig | None = None, chunk_size: int = 50_000) -> LinkResult:
    """``link_chunks`` over an in-memory DataFrame (split into chunks of ``chunk_size`` rows)."""
    return link_chunks(
        lambda: (df.iloc[i : i + chunk_size] for i in range(0, max(len(df), 1), chunk_size)), config
    )


def link_columns(result: LinkResult) -> pd.DataFrame:
    """The four per-row output columns of ``adrisk score --link`` (``LINK_COLUMNS``), in row order."""
    return pd.DataFrame(
        {
            "contacts": result.contacts,
            "persona_id": result.persona_id,
            "template_id": result.template_id,
            "template_size": result.template_size,
        }
    )


def summary(result: LinkResult) -> str:
    """A few human-readable lines (counts only, never contact values)."""
    r = result.report
    return (
        f"linked {r['ads']} ads ({r['ads_without_text']} without text) in {r.get('seconds', 0)}s: "
        f"{r['personas_multi']} personas and {r['templates_multi']} template clusters of 2+ ads\n"
        f"hub cap {r['hub_cap']}: {r['hub_contacts_cut']} contact(s) shared by more ads were not used "
        f"({r['hub_links_cut']} ad links cut, largest {r['largest_hub']} ads); "
        f"{r['ads_over_contact_cap']} ad(s) with more than the per-ad contact cap linked by none\n"
        f"max persona {r['max_persona']}: {r['personas_split']} persona component(s) above it "
        f"({r['persona_split_ads']} ads) split at single-contact links into {r['persona_split_parts']} "
        "personas (single-contact links merge only within the bound; ads sharing identical text or 2+ "
        "contacts kept together)"
    )
