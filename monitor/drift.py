"""Input and score drift between a reference window and a current one.

* Text: a domain classifier (TF-IDF word 1-2-grams and character 3-4-grams, logistic regression)
  learns to tell current ads from reference ads; its cross-fitted ROC AUC is the drift score, with
  Evidently's semantics (``TextEvals`` / text-content drift: drift when the AUC exceeds 0.55, or the
  95th percentile of a random classifier's AUC for windows too small for that to be safe). It also
  gives the terms most typical of each side and the most typical ads per side (ids only).
* Embeddings: maximum mean discrepancy (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012) of
  the model's own sentence embeddings, Gaussian kernel with the median-distance bandwidth, and a
  permutation p-value; and the share of current ads unlike any reference ad: farther from their
  nearest reference neighbour than ``NOVEL_QUANTILE`` of the reference ads are from theirs (outside
  their own group), the k-nearest-neighbour out-of-distribution score of Sun et al., "Out-of-
  Distribution Detection with Deep Nearest Neighbors" (ICML 2022), at k = 1.
* Scores: per label, the population stability index over reference deciles and the two-sample
  Kolmogorov-Smirnov test (scipy) of the calibrated probabilities, and the flag rates.

Ads are not independent draws: one poster's ads share a phone number and templated text. Both the
cross-fitting folds and the permutations therefore move whole groups (``ad_groups``: ads linked by a
shared contact, identical text or a near-duplicate template, ``signals.linking``); otherwise a
template seen in the training folds is "recognised" in the held-out fold and the drift statistics
fire on any two disjoint samples of the same traffic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

logger = logging.getLogger(__name__)

# Evidently's default drift threshold of a domain classifier's ROC AUC.
AUC_THRESHOLD = 0.55
# A current ad farther from the reference than this quantile of the reference's own nearest-neighbour
# distances is "novel" (on unshifted traffic about 1 - NOVEL_QUANTILE of the ads are).
NOVEL_QUANTILE = 0.99
# Characters of each ad the domain classifier reads (the model's window is shorter than this).
TEXT_CHARS = 1000
FOLDS = 3


@dataclass
class TextDrift:
    """The domain classifier's result (see the module docstring)."""

    auc: float
    threshold: float
    drifted: bool
    top_terms: dict[str, list[str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "auc": round(self.auc, 4),
            "threshold": round(self.threshold, 4),
            "drifted": self.drifted,
            "rows": self.rows,
            "top_terms": self.top_terms,
            "examples": self.examples,
        }


@dataclass
class EmbeddingDrift:
    """MMD of sentence embeddings with its permutation p-value, and the share of novel current ads."""

    mmd2: float
    p_value: float
    alpha: float
    drifted: bool
    sample: dict[str, int]
    novel_share: float = 0.0

    def to_dict(self) -> dict:
        return {
            "mmd2": round(self.mmd2, 6),
            "p_value": round(self.p_value, 4),
            "alpha": self.alpha,
            "drifted": self.drifted,
            "novel_share": round(self.novel_share, 4),
            "novel_quantile": NOVEL_QUANTILE,
            "sample": self.sample,
        }


def ad_groups(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Group ads that one poster likely wrote, and mask their contacts.

    Args:
        texts: (n,) ad texts.

    Returns:
        (groups, masked): (n,) int64 group ids (connected components of "same persona or same template
        cluster", ``signals.linking``), and the texts with contacts replaced by ``<type>``, numbers by
        ``#`` and cued names by ``<name>`` (``signals.linking.mask_text``), so that neither the domain
        classifier's terms nor anything derived from them carries a contact value.
    """
    import json

    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from signals.linking import LinkConfig, link_frame, mask_text

    n = len(texts)
    res = link_frame(pd.DataFrame({"text": texts}), LinkConfig(time_column="", place_column=""))
    a = np.r_[np.arange(n), np.arange(n)]
    b = np.r_[res.persona_id, res.template_id].astype(np.int64)
    graph = coo_matrix((np.ones(2 * n), (a, b)), shape=(n, n))
    _, groups = connected_components(graph, directed=False)
    masked = []
    for t, cj in zip(texts, res.contacts, strict=True):
        cs = [SimpleNamespace(**c) for c in json.loads(cj)] if cj and cj != "[]" else []
        masked.append(mask_text(t, sorted(cs, key=lambda c: c.start)))
    return groups.astype(np.int64), masked


def random_auc_quantile(n_ref: int, n_cur: int, q: float = 0.95, draws: int = 1000, seed: int = 0) -> float:
    """The ``q`` quantile of the ROC AUC of a classifier that scores at random, for these class sizes
    (Evidently's bootstrap threshold for small windows)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    scores = rng.random((draws, n_ref + n_cur))
    ranks = rankdata(scores, axis=1)[:, n_ref:]  # the current side's ranks
    auc = (ranks.sum(axis=1) - n_cur * (n_cur + 1) / 2) / (n_ref * n_cur)
    return float(np.quantile(auc, q))


def _vectorize(texts: list[str]):
    """TF-IDF word 1-2-grams (readable terms) and character 3-4-grams within words (spellings,
    obfuscations, scripts), fitted on both windows together (no side labels involved)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    from model.normalize import normalize_text

    docs = [normalize_text(t)[:TEXT_CHARS] for t in texts]
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=30000, sublinear_tf=True)
    chars = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(3, 4), min_df=2, max_features=30000, sublinear_tf=True
    )
    xw = words.fit_transform(docs)
    xc = chars.fit_transform(docs)
    return hstack([xw, xc]).tocsr(), words.get_feature_names_out()


def text_drift(
    ref_masked: list[str],
    cur_masked: list[str],
    ref_ids: list[str],
    cur_ids: list[str],
    groups: np.ndarray,
    *,
    threshold: float | None = None,
    seed: int = 0,
    top_k: int = 15,
    n_examples: int = 5,
) -> TextDrift:
    """Domain-classifier drift of the texts (see the module docstring).

    Args:
        ref_masked, cur_masked: contact-masked texts of each side (``ad_groups``).
        ref_ids, cur_ids: their ids (examples are reported by id, never by text).
        groups: (n_ref + n_cur,) group ids, reference rows first; a group never straddles folds.
        threshold: AUC above which the text drifted; None: Evidently's rule,
            ``max(AUC_THRESHOLD, random_auc_quantile(n_ref, n_cur))``.

    Returns:
        TextDrift; ``auc`` is the ROC AUC of out-of-fold probabilities (``sklearn``
        ``StratifiedGroupKFold``, ``FOLDS`` folds; class-weighted logistic regression).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    n_ref, n_cur = len(ref_masked), len(cur_masked)
    y = np.r_[np.zeros(n_ref), np.ones(n_cur)].astype(np.int64)
    x, terms = _vectorize(list(ref_masked) + list(cur_masked))
    oof = np.full(len(y), 0.5)
    coef = np.zeros(x.shape[1])
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    n_fits = 0
    for tr, te in folds.split(x, y, groups):
        if len(np.unique(y[tr])) < 2:  # a fold without one side (tiny windows): leave its rows at 0.5
            continue
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000, solver="liblinear")
        clf.fit(x[tr], y[tr])
        oof[te] = clf.predict_proba(x[te])[:, 1]
        coef += clf.coef_[0]
        n_fits += 1
    auc = float(roc_auc_score(y, oof))
    thr = (
        threshold
        if threshold is not None
        else max(AUC_THRESHOLD, random_auc_quantile(n_ref, n_cur, seed=seed))
    )
    w = coef[: len(terms)] / max(n_fits, 1)  # the readable (word) features only
    order = np.argsort(w)
    top_cur = [str(terms[i]) for i in order[::-1][:top_k] if w[i] > 0]
    top_ref = [str(terms[i]) for i in order[:top_k] if w[i] < 0]
    ex_cur = [cur_ids[i] for i in np.argsort(-oof[n_ref:], kind="stable")[:n_examples]]
    ex_ref = [ref_ids[i] for i in np.argsort(oof[:n_ref], kind="stable")[:n_examples]]
    return TextDrift(
        auc=auc,
        threshold=float(thr),
        drifted=bool(auc > thr),
        top_terms={"current": top_cur, "reference": top_ref},
        examples={"current": ex_cur, "reference": ex_ref},
        rows={"reference": n_ref, "current": n_cur},
    )


def mmd_test(
    x_ref: np.ndarray,
    x_cur: np.ndarray,
    g_ref: np.ndarray,
    g_cur: np.ndarray,
    *,
    permutations: int = 200,
    alpha: float = 0.01,
    seed: int = 0,
) -> EmbeddingDrift:
    """Kernel two-sample test of embeddings with a group permutation p-value.

    Args:
        x_ref, x_cur: (n_ref, d) and (n_cur, d) embeddings.
        g_ref, g_cur: their group ids; each (side, group) block is permuted as a whole.
        permutations: permutation draws; the p-value is ``(1 + #{MMD_perm >= MMD}) / (1 + draws)``.
        alpha: drift when the p-value is below it.

    Returns:
        EmbeddingDrift with the biased (V-statistic) squared MMD of a Gaussian kernel whose bandwidth
        is the median pairwise distance, and ``novel_share`` (``novel_share``).
    """
    z = np.vstack([x_ref, x_cur]).astype(np.float64)
    n_ref, n = len(x_ref), len(z)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    novel = novel_share(sq[:n_ref, :n_ref], sq[n_ref:, :n_ref], np.asarray(g_ref))
    iu = np.triu_indices(n, 1)
    med = float(np.median(sq[iu])) or 1.0
    k = np.exp(-sq / med)  # exp(-d^2 / (2 sigma^2)) with sigma^2 = median(d^2) / 2
    # blocks: one per (side, group); a permutation draws which blocks are "current"
    side = np.r_[np.zeros(n_ref), np.ones(n - n_ref)].astype(np.int64)
    keys = np.r_[g_ref, g_cur].astype(np.int64) * 2 + side
    _, block = np.unique(keys, return_inverse=True)
    n_blocks = int(block.max()) + 1
    cur_blocks = len(np.unique(block[n_ref:]))
    rng = np.random.default_rng(seed)
    assign = np.zeros((n_blocks, permutations + 1))
    assign[np.unique(block[n_ref:]), 0] = 1.0  # column 0: the observed split
    for j in range(1, permutations + 1):
        assign[rng.choice(n_blocks, cur_blocks, replace=False), j] = 1.0
    a = assign[block]  # (n, P+1) 1 = current
    na = a.sum(0)
    nb = n - na
    ka = k @ a
    q = (a * ka).sum(0)  # a'Ka
    c = ka.sum(0)  # 1'Ka
    s = k.sum()
    ok = (na > 0) & (nb > 0)
    mmd = np.full(a.shape[1], -np.inf)
    mmd[ok] = (
        q[ok] / na[ok] ** 2 + (s - 2 * c[ok] + q[ok]) / nb[ok] ** 2 - 2 * (c[ok] - q[ok]) / (na[ok] * nb[ok])
    )
    p = float((1 + np.sum(mmd[1:] >= mmd[0])) / (1 + permutations))
    return EmbeddingDrift(
        mmd2=float(mmd[0]),
        p_value=p,
        alpha=alpha,
        drifted=bool(p < alpha),
        sample={"reference": n_ref, "current": n - n_ref},
        novel_share=novel,
    )


def novel_share(d_ref: np.ndarray, d_cur: np.ndarray, g_ref: np.ndarray) -> float:
    """Share of current ads farther from their nearest reference ad than ``NOVEL_QUANTILE`` of the
    reference ads are from their nearest reference ad of another group (a reference ad's own
    near-duplicates would make the reference look denser than a fresh sample of it).

    Args:
        d_ref: (n_ref, n_ref) squared distances among reference ads.
        d_cur: (n_cur, n_ref) squared distances from current to reference ads.
        g_ref: (n_ref,) reference group ids.
    """
    same = g_ref[:, None] == g_ref[None, :]
    nn_ref = np.where(same, np.inf, d_ref).min(axis=1)
    nn_ref = nn_ref[np.isfinite(nn_ref)]
    if nn_ref.size == 0:
        return 0.0
    return float(np.mean(d_cur.min(axis=1) > np.quantile(nn_ref, NOVEL_QUANTILE)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index ``sum (c - r) ln(c / r)`` over the reference's quantile bins
    (``bins`` deciles by default; tied edges merged), shares floored at ``eps``."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(
        reference
    )
    c = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    r, c = np.maximum(r, eps), np.maximum(c, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def score_drift(
    p_ref: np.ndarray, p_cur: np.ndarray, labels: tuple[str, ...], thresholds: list[float], psi_limit: float
) -> dict[str, dict]:
    """Per label: PSI, KS statistic and p-value (``scipy.stats.ks_2samp``), flag rates at the label's
    threshold on each side, and ``drifted`` (PSI above ``psi_limit``).

    Args:
        p_ref, p_cur: (n_ref, L) and (n_cur, L) calibrated probabilities.
    """
    from scipy.stats import ks_2samp

    out = {}
    for j, name in enumerate(labels):
        ks = ks_2samp(p_ref[:, j], p_cur[:, j])
        value = psi(p_ref[:, j], p_cur[:, j])
        out[name] = {
            "psi": round(value, 4),
            "ks": round(float(ks.statistic), 4),
            "ks_p_value": float(f"{ks.pvalue:.3g}"),
            "flag_rate_reference": round(float(np.mean(p_ref[:, j] >= thresholds[j])), 4),
            "flag_rate_current": round(float(np.mean(p_cur[:, j] >= thresholds[j])), 4),
            "drifted": bool(value > psi_limit),
        }
    return out
