"""``adrisk review-queue``: the ads a moderator should label first, by uncertainty and diversity.

A new site has many unlabelled ads and moderators who can label a few hundred. The queue picks
``budget`` of them with BADGE (Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain
Gradient Lower Bounds"): every ad becomes its *gradient embedding*, the gradient of the loss at the
model's own hypothesised labels with respect to the last layer, ``g = (p' - y_hat) (x) h`` (``h``: the
representation the classifier reads, ``p'``: the label probabilities re-centred on the model's
thresholds, ``p' = sigmoid(z - logit(threshold))``, ``y_hat = [p' >= 0.5]``). Its norm is large where
the model is unsure (``p'`` near 0.5) and ``h`` is large; k-means++ seeding (Arthur & Vassilvitskii
2007) on these embeddings then picks ads that are both uncertain and unlike each other (each next ad
drawn with probability proportional to its squared distance to the nearest ad already picked).

``strategy="random"`` (``--strategy random``) draws the picks uniformly instead (``random_select``):
what docs/adaptation.md §2 recommends for a new site's rounds, whose model has not yet learnt what
the site's own ads look like. One pick per template cluster either way (``signals.linking``'s MinHash
template clusters, plus identical normalised texts): a moderator never labels forty copies of one ad. Every pick carries a reason
(the label it is least sure of, its score and threshold, its distance to the earlier picks, its
cluster's size); reasons never quote ad text.

The output file holds the picked rows (input columns kept) with ``queue_rank``, ``row`` (the input
row number, 0-based), ``reason``, ``score.<label>``, ``template_id``, ``template_size``, and empty
``labels`` / ``reviewer`` columns for the moderators' answers, which ``adrisk feedback import`` reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from batch.tables import ScoreError, file_format, iter_chunks
from model.pyfunc import is_missing

logger = logging.getLogger(__name__)

ANSWER_COLUMNS = ("labels", "reviewer")
STRATEGIES = ("badge", "random")


@dataclass
class Pick:
    """One queued ad: its row in the scored arrays, the label it is least sure of, and why."""

    row: int
    label: int
    distance: float  # to the nearest earlier pick in gradient-embedding space (inf for the first)
    reason: str = ""


@dataclass
class QueueReport:
    """Counts for the user: rows read, rows without text, eligible clusters, picks."""

    rows: int = 0
    without_text: list[int] = field(default_factory=list)
    labelled: int = 0  # ads already labelled (--labelled) with text
    already_labelled: int = 0  # input ads in a template cluster with an already labelled ad: not queued
    clusters: int = 0
    picked: int = 0
    budget: int = 0

    def summary(self) -> str:
        """One or two lines (counts and row numbers only, never ad text)."""
        parts = [f"queued {self.picked} of {self.rows} ads (budget {self.budget})"]
        if self.rows == 0:
            return "the input has no rows: the queue is empty"
        if self.without_text:
            shown = ", ".join(map(str, self.without_text[:10])) + (
                " ..." if len(self.without_text) > 10 else ""
            )
            parts.append(
                f"{len(self.without_text)} ad(s) without text cannot be judged and were not queued (rows {shown})"
            )
        if self.already_labelled:
            parts.append(
                f"{self.already_labelled} ad(s) share a template cluster with one of the {self.labelled} "
                "ads already labelled and were not queued"
            )
        if self.picked < self.budget:
            parts.append(
                f"only {self.clusters} template cluster(s) without a labelled ad among the ads with text: "
                "one ad represents each"
            )
        return "; ".join(parts)


def gradient_embeddings(
    logits: np.ndarray,
    thresholds: np.ndarray,
    hidden: np.ndarray,
    multi_class: bool = False,
) -> np.ndarray:
    """BADGE gradient embeddings: sigmoid outputs (multi-label / binary) re-centred on the thresholds,
    or softmax outputs (``multi_class``, thresholds unused) at the predicted class.

    Args:
        logits: (n, L) calibrated logits (``z / T``); thresholds: (L,) probability thresholds in (0, 1).
        hidden: (n, d) the representation the classifier reads.

    Returns:
        (n, L * d) float32: row ``i`` is ``concat_j (p'_ij - y_hat_ij) * hidden_i`` (see module docstring).
    """
    z = np.asarray(logits, dtype=np.float64)
    if multi_class:  # softmax: the gradient at the predicted class (BADGE's own case)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        resid = p - (np.arange(z.shape[1])[None, :] == p.argmax(axis=1)[:, None])
    else:
        thr = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
        shifted = 1.0 / (1.0 + np.exp(-(z - np.log(thr / (1 - thr)))))
        resid = shifted - (shifted >= 0.5)  # (n, L)
    h = np.asarray(hidden, dtype=np.float64)
    return (resid[:, :, None] * h[:, None, :]).reshape(len(resid), -1).astype(np.float32)


def badge_select(
    embeddings: np.ndarray,
    clusters: np.ndarray,
    budget: int,
    seed: int = 0,
    start: list[int] | None = None,
    labelled: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> list[tuple[int, float]]:
    """k-means++ seeding over gradient embeddings, at most one row per cluster (BADGE, Ash et al. 2020).

    The first pick is the row of largest norm (the most uncertain); each next one is drawn with
    probability proportional to its squared distance to the nearest pick so far, among rows whose
    cluster has no pick yet. Rows at distance 0 from a pick (identical embeddings) are drawn only
    when nothing else is left.

    Args:
        embeddings: (n, D). clusters: (n,) cluster id of each row. budget: most picks (>= 0).
        start: rows already picked (e.g. by ``search_select``): they count towards the budget, come
            first in the result (distance inf) and are the seeding's first centres (the bench's
            variants use it).
        labelled: (m, D) gradient embeddings of ads already labelled (not among the rows): centres the
            seeding starts from, so that the first pick too is drawn by its distance to them (the
            bench's "badge-labelled"; not used by ``adrisk review-queue``: it did not earn its keep).
        weights: (n,) non-negative: each row is drawn with probability proportional to its weight times
            its squared distance (the bench's "badge-size": the template cluster's size, information
            density as in Settles & Craven 2008).

    Returns:
        [(row, distance to the nearest earlier pick)], in pick order; ``min(budget, distinct clusters)``
        long. Deterministic for a given ``seed``.
    """
    n = len(embeddings)
    if n == 0 or budget <= 0:
        return []
    rng = np.random.default_rng(seed)
    emb = np.asarray(embeddings, dtype=np.float64)
    clusters = np.asarray(clusters)
    open_ = np.ones(n, dtype=bool)
    sq = np.einsum("ij,ij->i", emb, emb)
    d2 = np.full(n, np.inf)
    if labelled is not None and len(labelled):
        lab = np.asarray(labelled, dtype=np.float64)
        lsq = np.einsum("ij,ij->i", lab, lab)
        for s in range(0, n, 1024):
            d2[s : s + 1024] = np.maximum(
                (sq[s : s + 1024, None] + lsq[None, :] - 2.0 * emb[s : s + 1024] @ lab.T).min(axis=1), 0.0
            )
        first = list(dict.fromkeys(start or []))[:budget]
        picks = [(int(i), float("inf")) for i in first]
        if not first:
            total = d2.sum()
            first = [int(rng.choice(n, p=d2 / total)) if total > 0 else 0]
            picks = [(first[0], float(np.sqrt(d2[first[0]])))]
    else:
        first = list(dict.fromkeys(start or []))[:budget] or [int(np.argmax(sq))]
        picks = [(int(i), float("inf")) for i in first]
    for i in first:
        open_ &= clusters != clusters[i]
        d2 = np.minimum(d2, np.einsum("ij,ij->i", emb - emb[i], emb - emb[i]))
    scale = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    while len(picks) < budget and open_.any():
        w = np.where(open_, d2 * scale, 0.0)
        total = w.sum()
        # when every open row coincides with a pick (total 0), take them in row order
        i = int(rng.choice(n, p=w / total)) if total > 0 else int(np.flatnonzero(open_)[0])
        picks.append((i, float(np.sqrt(d2[i]))))
        open_ &= clusters != clusters[i]
        d2 = np.minimum(d2, np.einsum("ij,ij->i", emb - emb[i], emb - emb[i]))
    return picks


def random_select(clusters: np.ndarray, budget: int, seed: int = 0) -> list[tuple[int, float]]:
    """A uniform random sample of rows, at most one per cluster (the random arm every active-learning
    comparison is held to, and BADGE's own first round, Ash et al. 2020).

    Args:
        clusters: (n,) cluster id of each row. budget: most picks (>= 0).

    Returns:
        [(row, inf)], ``min(budget, distinct clusters)`` long, in draw order. Deterministic for a
        given ``seed``.
    """
    rng = np.random.default_rng(seed)
    picks: list[tuple[int, float]] = []
    seen: set[int] = set()
    for i in rng.permutation(len(clusters)).tolist():
        if len(picks) >= budget:
            break
        if int(clusters[i]) not in seen:
            seen.add(int(clusters[i]))
            picks.append((int(i), float("inf")))
    return picks


def cluster_ids(texts: list[str], template_id: np.ndarray) -> np.ndarray:
    """One cluster per template (``signals.linking``) joined with identical normalised texts
    (``signals.linking.text_identity``, case folded), as connected components (``scipy.sparse.csgraph``):
    (n,) int64 cluster labels."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from signals.linking import text_identity

    n = len(texts)
    first: dict[str, int] = {}
    same_text = np.fromiter(
        (first.setdefault(text_identity(t).casefold(), i) for i, t in enumerate(texts)), np.int64, n
    )
    a = np.concatenate([np.arange(n), np.arange(n)])
    b = np.concatenate([same_text, np.asarray(template_id, dtype=np.int64)])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def queue_reasons(
    picks: list[tuple[int, float]],
    probs: np.ndarray,
    thresholds: np.ndarray,
    logits: np.ndarray,
    labels: tuple[str, ...],
    cluster_size: np.ndarray,
    strategy: str = "badge",
) -> list[Pick]:
    """A reason per pick: the label nearest its threshold (in logit distance), its score and
    threshold, how it was picked (``strategy``: the distance to earlier picks for BADGE) and the
    size of its cluster."""
    thr = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
    margin = np.abs(np.asarray(logits, dtype=np.float64) - np.log(thr / (1 - thr)))
    out = []
    for rank, (i, dist) in enumerate(picks):
        j = int(np.argmin(margin[i]))
        side = "flagged" if probs[i, j] >= thresholds[j] else "not flagged"
        why = f"least sure of {labels[j]}: score {probs[i, j]:.3f}, threshold {thresholds[j]:.3f} ({side})"
        if strategy == "random":
            why += "; drawn at random, one per template cluster"
        elif rank == 0:
            why += "; the most uncertain ad (largest gradient embedding)"
        else:
            why += f"; gradient-embedding distance {dist:.3f} to the nearest earlier pick"
        if cluster_size[i] > 1:
            why += f"; stands for a cluster of {int(cluster_size[i])} near-identical ads"
        out.append(Pick(int(i), j, dist, why))
    return out


def pooled_representation(directory: Path, encoder, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """(n, d) float32: the pooled representation the artifact's classifier head reads (BERT's pooler
    output), from the artifact's torch weights (``transformers.AutoModel``)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from model.encoding import length_sorted_batches

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the classifier head's weights are "unexpected" for AutoModel: fine
    try:
        model = AutoModel.from_pretrained(str(directory), local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)
    model.eval()
    enc = encoder.encode(texts)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for idx in length_sorted_batches(enc.lengths(), batch_size):
            ids, mask = encoder.pad([enc.input_ids[i] for i in idx])
            res = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            pooled = (
                res.pooler_output
                if getattr(res, "pooler_output", None) is not None
                else res.last_hidden_state[:, 0]
            )
            out[idx] = pooled.float().numpy()
    return out


def _labelled_texts(path: Path, text_column: str) -> list[str]:
    """The non-blank texts of a file of ads already labelled (CSV / JSONL / Parquet)."""
    file_format(path)
    if not path.is_file():
        raise ScoreError(f"labelled file not found: {path}")
    df = _read_all(path) if path.stat().st_size else pd.DataFrame()
    if not len(df):
        return []
    if text_column not in df.columns:
        raise ScoreError(f"text column {text_column!r} not found in the labelled file")
    return [v for v in df[text_column] if not is_missing(v) and isinstance(v, str) and v.strip()]


def _read_all(path: Path) -> pd.DataFrame:
    chunks = list(iter_chunks(path, 50_000))
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()


def _write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        df.to_parquet(tmp, index=False)
    elif fmt == "csv":
        df.to_csv(tmp, index=False)
    else:
        text = df.to_json(orient="records", lines=True, force_ascii=False) if len(df) else ""
        tmp.write_text(text if not text or text.endswith("\n") else text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def build_review_queue(
    predictor,
    input_path: Path,
    output_path: Path,
    budget: int,
    text_column: str = "text",
    seed: int = 0,
    labelled_path: Path | None = None,
    strategy: str = "badge",
) -> QueueReport:
    """Pick ``budget`` ads of ``input_path`` for moderators and write them to ``output_path``.

    Args:
        predictor: a loaded ``model.predictor.Predictor`` (its directory holds torch weights).
        input_path, output_path: CSV / JSONL / Parquet (by extension); the output is written atomically.
        budget: most ads to queue (>= 1).
        labelled_path: ads already labelled (earlier rounds' filled-in queues, an ``adrisk feedback
            export``; same formats, ``text_column``): no input ad in a template cluster with one of them
            is queued (the next round of the loop: queue, label, retrain, queue again).
        strategy: ``badge`` (uncertain and diverse, by the model) or ``random`` (a uniform sample,
            one per template cluster: docs/adaptation.md §2).

    Returns:
        QueueReport (see ``summary``).

    Raises:
        ScoreError: a bad budget, unknown format, unreadable input (or labelled file), no
            ``text_column``, an output path equal to the input.
    """
    from signals.linking import LinkConfig, link_frame

    if budget < 1:
        raise ScoreError(f"--budget must be at least 1, got {budget}")
    if strategy not in STRATEGIES:
        raise ScoreError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    fmt_out = file_format(output_path)
    file_format(input_path)
    if not input_path.is_file():
        raise ScoreError(f"input file not found: {input_path}")
    if input_path.resolve() == output_path.resolve():
        raise ScoreError("--output must differ from --input")
    done_texts = _labelled_texts(labelled_path, text_column) if labelled_path is not None else []
    df = _read_all(input_path) if input_path.stat().st_size else pd.DataFrame()
    report = QueueReport(rows=len(df), budget=budget, labelled=len(done_texts))
    labels = predictor.labels
    extra = ["queue_rank", "row", "reason", *[f"score.{n}" for n in labels], "template_id", "template_size"]
    if len(df) and text_column not in df.columns:
        raise ScoreError(f"text column {text_column!r} not found in the input")
    has_text = (
        np.array([not is_missing(v) and isinstance(v, str) and bool(v.strip()) for v in df[text_column]])
        if len(df)
        else np.zeros(0, dtype=bool)
    )
    report.without_text = np.flatnonzero(~has_text).tolist()
    rows = np.flatnonzero(has_text)
    picks: list[Pick] = []
    probs = np.zeros((0, len(labels)))
    template = size = np.zeros(0, dtype=np.int64)
    if len(rows):
        texts = [df[text_column].iloc[i] for i in rows.tolist()]
        scores = predictor.score(texts)
        probs = scores.probabilities
        thr = np.asarray(predictor.meta.threshold_vector(), dtype=np.float64)
        z = np.asarray(scores.logits, dtype=np.float64) / np.asarray(predictor.meta.temperatures)[None, :]
        every = texts + done_texts  # the labelled ads join the linking, so their templates are known
        linked = link_frame(pd.DataFrame({"text": every}), LinkConfig(text_column="text"))
        every_cluster = cluster_ids(every, linked.template_id)
        clusters = every_cluster[: len(texts)]
        done = np.isin(clusters, every_cluster[len(texts) :])
        report.already_labelled = int(done.sum())
        size = np.bincount(clusters, minlength=len(every))[clusters]
        template = clusters
        report.clusters = len(np.unique(clusters[~done]))
        open_rows = np.flatnonzero(~done)  # among the clusters nobody has labelled yet
        if strategy == "random":
            drawn = random_select(clusters[open_rows], budget, seed)
        else:
            hidden = pooled_representation(predictor.directory, predictor.encoder, texts)
            multi_class = predictor.meta.label_schema.problem_type.value == "multi_class"
            grad = gradient_embeddings(z, thr, hidden, multi_class)
            drawn = badge_select(grad[open_rows], clusters[open_rows], budget, seed)
        chosen = [(int(open_rows[i]), d) for i, d in drawn]
        picks = queue_reasons(chosen, probs, thr, z, labels, size, strategy)
    report.picked = len(picks)
    idx = [p.row for p in picks]
    out = df.iloc[rows[idx]].reset_index(drop=True) if len(picks) else df.iloc[:0].copy()
    head = pd.DataFrame(
        {
            "queue_rank": np.arange(1, len(picks) + 1, dtype=np.int64),
            "row": rows[idx].astype(np.int64) if len(picks) else np.zeros(0, np.int64),
            "reason": [p.reason for p in picks],
            **{f"score.{n}": probs[idx, j] if len(picks) else np.zeros(0) for j, n in enumerate(labels)},
            "template_id": rows[template[idx]].astype(np.int64) if len(picks) else np.zeros(0, np.int64),
            "template_size": size[idx].astype(np.int64) if len(picks) else np.zeros(0, np.int64),
        }
    )
    out = pd.concat([head, out.drop(columns=[c for c in extra if c in out.columns])], axis=1)
    for c in ANSWER_COLUMNS:
        if c not in out.columns:
            out[c] = pd.Series([None] * len(out), dtype=object)
    _write(out, output_path, fmt_out)
    logger.info("%s", report.summary())
    return report
