"""Label-free estimates of prevalence and of precision / recall at the model's thresholds.

* Calibration on the reference: where the reference has labels, each label's probabilities are
  recalibrated on it, as NannyML's CBPE does, so that the reference's expected confusion matrix
  matches its realised one: by isotonic regression (scikit-learn) where the reference flags enough
  ads of the label, else by Platt scaling (a logistic regression on the probability's logit; Platt,
  "Probabilistic Outputs for Support Vector Machines", 1999). Isotonic regression overfits a small
  calibration set (Niculescu-Mizil & Caruana, "Predicting Good Probabilities With Supervised
  Learning", ICML 2005): above the threshold its blocks rest on the few flagged reference ads, and
  when those are all positives it maps every flagged ad to 1, an expected precision of exactly 1.
  Platt's two parameters are fitted on every reference ad. Without labels the model's own calibrated
  probabilities are used as they are.
* Prevalence: the mean calibrated probability, and the EM re-estimation of the priors of Saerens,
  Latinne & Decaestecker, "Adjusting the Outputs of a Classifier to New a Priori Probabilities: A
  Simple Procedure" (Neural Computation, 2002), one label at a time (one-vs-rest), with a bootstrap
  interval over the window's ads. Under a pure prevalence (label) shift the posteriors adjusted to
  the new priors are calibrated again.
* Nested labels: where every reference positive of a label also carries another label (trafficking
  indicators are only ever found in adult-service ads), its prior is estimated *within* that parent:
  its conditional posterior ``p(label | parent, x)`` is its recalibrated posterior over the parent's,
  its EM prior is the prior among the parent's ads (each window ad weighted by its parent posterior),
  and its posterior under a new prior is the parent's (moved or not) times the moved conditional.
  A change in the parent's prevalence then leaves the conditional alone, as it should when the
  parent's share moved and the label's share within it did not (the prevalence of each label is a
  label shift of the *root* of its hierarchy; an EM on the nested label's own marginal would read
  more adult ads as more trafficking evidence).
* Precision and recall: confidence-based performance estimation (CBPE, NannyML): the expected
  confusion matrix at each label's threshold from the adjusted posteriors, ``E[TP] = sum over
  flagged ads of q``, ``E[FP] = sum over flagged of 1 - q``, ``E[FN] = sum over unflagged of q``. Its
  interval is where the realised figure of this window would fall if the posteriors are right
  (Bernoulli draws). Both assume p(x | y) unchanged; under input drift they carry a warning.
* Realised figures where labels exist: the window's own labels, or moderator feedback exported by
  ``adrisk feedback export`` (matched by normalised text), with a Clopper-Pearson interval (scipy).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# A label is recalibrated on the reference only with at least this many positives and negatives there.
MIN_CALIBRATION_CLASS = 20
# Isotonic regression only where the reference flags at least this many ads of the label (else Platt).
MIN_ISOTONIC_FLAGGED = 50


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


class PlattScaling:
    """Platt scaling (Platt 1999): ``sigmoid(a + b logit(p))``, a logistic regression of the target on
    the probability's logit (scikit-learn; ``C=1e6``, a ridge just large enough to keep separable data
    finite).

    Args:
        p: (n,) probabilities.
        y: (n,) 0/1 targets, both classes present (else scikit-learn raises ValueError).
    """

    def __init__(self, p: np.ndarray, y: np.ndarray):
        from sklearn.linear_model import LogisticRegression

        t = (np.asarray(y) > 0.5).astype(np.int64)
        self.model = LogisticRegression(C=1e6, tol=1e-10, max_iter=200).fit(_logit(p)[:, None], t)

    def predict(self, p: np.ndarray) -> np.ndarray:
        """(n,) probabilities -> (n,) recalibrated probabilities."""
        return self.model.predict_proba(_logit(p)[:, None])[:, 1]


class ReferenceCalibration:
    """Per-label recalibration fitted on labelled reference probabilities: isotonic where the
    reference flags at least ``MIN_ISOTONIC_FLAGGED`` ads of the label at its threshold (or no
    thresholds are given), else Platt scaling; identity for a label with fewer than
    ``MIN_CALIBRATION_CLASS`` positives or negatives, or without reference labels.

    Args:
        probs: (n, L) reference calibrated probabilities.
        labels: (n, L) 0/1 reference targets, or None.
        thresholds: (L,) the labels' decision thresholds, or None (isotonic wherever labels suffice).
    """

    def __init__(self, probs: np.ndarray, labels: np.ndarray | None, thresholds: np.ndarray | None = None):
        from sklearn.isotonic import IsotonicRegression

        self.models: list = []
        self.methods: list[str | None] = []
        for j in range(probs.shape[1]):
            y = None if labels is None else labels[:, j]
            if y is None or min(y.sum(), len(y) - y.sum()) < MIN_CALIBRATION_CLASS:
                self.models.append(None)
                self.methods.append(None)
            elif thresholds is not None and (probs[:, j] >= thresholds[j]).sum() < MIN_ISOTONIC_FLAGGED:
                self.models.append(PlattScaling(probs[:, j], y))
                self.methods.append("platt")
            else:
                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
                self.models.append(iso.fit(probs[:, j], y))
                self.methods.append("isotonic")
        # the label each is nested in (its prior is then estimated within that parent's ads)
        self.parents: list[int | None] = (
            [None] * probs.shape[1]
            if labels is None
            else [
                k if k is not None and self.models[j] and self.models[k] else None
                for j, k in enumerate(nested_parents(labels))
            ]
        )

    @property
    def fitted(self) -> list[bool]:
        return [m is not None for m in self.models]

    @property
    def order(self) -> list[int]:
        """Label indices, every parent before the labels nested in it."""
        depth = []
        for j in range(len(self.models)):
            d, k = 0, self.parents[j]
            while k is not None:
                d, k = d + 1, self.parents[k]
            depth.append(d)
        return sorted(range(len(self.models)), key=lambda j: depth[j])

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """(n, L) probabilities -> (n, L) recalibrated probabilities."""
        return np.column_stack([self.column(probs[:, j], j) for j in range(len(self.models))])

    def column(self, p: np.ndarray, j: int) -> np.ndarray:
        """(n,) probabilities of label ``j`` -> (n,) recalibrated (float64)."""
        m = self.models[j]
        return (
            np.array(p, dtype=np.float64, copy=True)
            if m is None
            else np.asarray(m.predict(p), dtype=np.float64)
        )


def conditional(q: np.ndarray, j: int, k: int) -> np.ndarray:
    """(n,) label ``j``'s posterior within its parent ``k``'s ads from (n, L) posteriors ``q``:
    ``min(1, q_j / q_k)`` (0 where ``q_k`` is 0)."""
    return np.clip(q[:, j] / np.maximum(q[:, k], 1e-12), 0.0, 1.0) * (q[:, k] > 0)


def nested_parents(labels: np.ndarray) -> list[int | None]:
    """For each label of (n, L) 0/1 reference ``labels``, the label it is nested in, or None: the label
    with the fewest positives among those that every one of its positives also carries and that have
    more positives than it. Needs ``MIN_CALIBRATION_CLASS`` positives of the label."""
    y = np.asarray(labels) > 0.5
    counts = y.sum(axis=0)
    out: list[int | None] = []
    for j in range(y.shape[1]):
        pos = y[:, j]
        cands = [
            k
            for k in range(y.shape[1])
            if k != j and counts[j] >= MIN_CALIBRATION_CLASS and counts[k] > counts[j] and y[pos, k].all()
        ]
        out.append(min(cands, key=lambda k: counts[k]) if cands else None)
    return out


def adjust_posteriors(q: np.ndarray, base: float | np.ndarray, prior: float | np.ndarray) -> np.ndarray:
    """Binary posteriors ``q`` (made under prior ``base``) adjusted to prior ``prior`` (Saerens et al.
    2002, eq. 2.4): ``r q / (r q + s (1 - q))`` with ``r = prior / base``, ``s = (1 - prior) / (1 - base)``.
    Broadcasts (e.g. ``q`` (B, n) with ``prior`` (B, 1))."""
    r = np.asarray(prior) / base
    s = (1 - np.asarray(prior)) / (1 - base)
    num = r * q
    den = num + s * (1 - q)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), q)


def em_prior(q: np.ndarray, base: float, weights: np.ndarray | None = None) -> np.ndarray:
    """The EM re-estimate of a binary label's prior on new data (Saerens et al. 2002).

    EM's fixed point ``prior = mean(adjust_posteriors(q, base, prior))`` is the maximum-likelihood
    prior, where the mixture log-likelihood ``sum log(prior q / base + (1 - prior)(1 - q) / (1 - base))``
    (concave in the prior) peaks; it is found by bisection on the likelihood's derivative (60 halvings
    instead of EM's slow steps when the classes overlap).

    Args:
        q: (n,) or (B, n) posteriors calibrated under prior ``base`` (0 < base < 1); rows of a 2-D
            array are independent problems (bootstrap resamples).
        base: the prior under which ``q`` is calibrated.
        weights: optional, shaped like ``q``: each ad's weight in the likelihood (a nested label's
            ads weighted by their parent posterior: the prior among the parent's ads).

    Returns:
        () or (B,) priors in [0, 1].
    """
    q = np.asarray(q, dtype=np.float64)
    w = (
        np.ones_like(q)
        if weights is None
        else np.broadcast_to(np.asarray(weights, dtype=np.float64), q.shape)
    )
    if not 0 < base < 1:
        return np.sum(w * q, axis=-1) / np.maximum(np.sum(w, axis=-1), 1e-300)
    a = q / base  # likelihood ratio terms: p(x|y=1) and p(x|y=0) up to a common factor
    b = (1 - q) / (1 - base)

    def slope(prior: np.ndarray) -> np.ndarray:  # d/d prior of the log-likelihood
        den = prior * a + (1 - prior) * b
        return np.sum(w * (a - b) / np.maximum(den, 1e-300), axis=-1, keepdims=True)

    lo = np.zeros(q.shape[:-1] + (1,))
    hi = np.ones_like(lo)
    for _ in range(60):
        mid = (lo + hi) / 2
        up = slope(mid) > 0
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    return ((lo + hi) / 2)[..., 0]


def _em(cal: ReferenceCalibration, p_ref: np.ndarray, p_cur: np.ndarray) -> dict[str, np.ndarray]:
    """The reference priors and the window's EM priors of every label under one recalibration: ``base``,
    ``em`` (L,), and for nested labels ``within_base``, ``within_em`` (L,; NaN elsewhere), the prior
    among the parent's ads. A root label's EM adjusts its own posterior; a nested label's runs on its
    conditional posteriors weighted by the parent's adjusted posteriors, and its prevalence is the
    mean of the parent's adjusted posterior times its adjusted conditional."""
    n_labels = p_ref.shape[1]
    q_ref, q_cur = cal(p_ref), cal(p_cur)
    base = np.clip(q_ref.mean(axis=0), 1e-4, 1 - 1e-4)
    em = np.zeros(n_labels)
    within_base, within_em = np.full(n_labels, np.nan), np.full(n_labels, np.nan)
    post = np.zeros_like(q_cur)  # each label's posteriors moved to its EM prior
    for j in cal.order:
        k = cal.parents[j]
        if k is None:
            em[j] = em_prior(q_cur[:, j], float(base[j]))
            post[:, j] = adjust_posteriors(q_cur[:, j], float(base[j]), em[j])
            continue
        c_ref, c_cur = conditional(q_ref, j, k), conditional(q_cur, j, k)
        w_ref = q_ref[:, k]
        within_base[j] = np.clip(np.sum(w_ref * c_ref) / max(np.sum(w_ref), 1e-12), 1e-4, 1 - 1e-4)
        within_em[j] = em_prior(c_cur, float(within_base[j]), weights=post[:, k])
        post[:, j] = post[:, k] * adjust_posteriors(c_cur, float(within_base[j]), within_em[j])
        em[j] = post[:, j].mean()
    return {"base": base, "em": em, "within_base": within_base, "within_em": within_em}


def _summary(em: float, base: float, em_b: np.ndarray, base_b: np.ndarray) -> dict[str, Any]:
    ratio_b = np.maximum(em_b, 1e-6) / base_b
    return {
        "em": round(float(em), 4),
        "em_interval": [round(float(v), 4) for v in np.quantile(em_b, [0.025, 0.975])],
        "ratio": round(max(float(em), 1e-6) / float(base), 4),
        "ratio_interval": [round(float(v), 4) for v in np.quantile(ratio_b, [0.025, 0.975])],
    }


def prevalence(
    p_ref: np.ndarray,
    y_ref: np.ndarray | None,
    p_cur: np.ndarray,
    labels: tuple[str, ...],
    *,
    draws: int = 200,
    seed: int = 0,
    thresholds: np.ndarray | None = None,
) -> tuple[dict[str, dict], ReferenceCalibration, np.ndarray, list[ReferenceCalibration]]:
    """Label-free prevalence of each label in the current window, against the reference's.

    The interval is a bootstrap over both windows: each draw resamples the reference's ads (and refits
    its recalibration: with a hundred positives the recalibration's own error dominates a rare label's)
    and the window's ads, then re-estimates the reference prior and the window's EM prior.

    Args:
        p_ref, p_cur: (n_ref, L) and (n, L) the model's calibrated probabilities.
        y_ref: (n_ref, L) reference targets, or None.
        thresholds: (L,) decision thresholds: choose each label's recalibration (``ReferenceCalibration``).

    Returns:
        ({label: {mean_probability, em, em_interval, ratio, ratio_interval, calibration[, within]}},
        the reference calibration, (L,) reference priors the recalibrated posteriors are calibrated
        under, the ``draws`` recalibrations refitted on resampled references (for ``cbpe``'s
        ``q_draws``)); intervals are 2.5-97.5% bootstrap percentiles, ``ratio`` is EM prior / reference
        prior. A nested label's ``within`` holds ``parent`` and the same figures for its prior among
        the parent's ads (``reference``: the reference's).
    """
    cal = ReferenceCalibration(p_ref, y_ref, thresholds)
    point = _em(cal, p_ref, p_cur)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[np.ndarray]] = {k: [] for k in point}
    cals = []
    for _ in range(draws):
        i_ref = rng.integers(0, len(p_ref), len(p_ref))
        i_cur = rng.integers(0, len(p_cur), len(p_cur))
        cal_b = ReferenceCalibration(p_ref[i_ref], None if y_ref is None else y_ref[i_ref], thresholds)
        cals.append(cal_b)
        for key, v in _em(cal_b, p_ref[i_ref], p_cur[i_cur]).items():
            boot[key].append(v)
    b = {key: np.array(v).reshape(draws, len(labels)) for key, v in boot.items()}
    q_cur = cal(p_cur)
    out = {}
    for j, name in enumerate(labels):
        out[name] = {
            "mean_probability": round(float(q_cur[:, j].mean()), 4),
            **_summary(point["em"][j], point["base"][j], b["em"][:, j], b["base"][:, j]),
            "calibration": cal.methods[j],
        }
        k = cal.parents[j]
        if k is not None:
            ok = np.isfinite(b["within_em"][:, j])  # a resample can leave too few positives to nest
            out[name]["within"] = {
                "parent": labels[k],
                "reference": round(float(point["within_base"][j]), 4),
                **_summary(
                    point["within_em"][j],
                    point["within_base"][j],
                    b["within_em"][ok, j],
                    b["within_base"][ok, j],
                ),
            }
    return out, cal, point["base"], cals


def moved_posteriors(
    cal: ReferenceCalibration,
    probs: np.ndarray,
    base: np.ndarray,
    prev: dict[str, dict],
    labels: tuple[str, ...],
    moved: dict[str, bool],
) -> np.ndarray:
    """(n, L) posteriors of ``probs`` under ``cal``, each label moved to its EM prior where ``moved``
    says so (a nested label: its conditional to its prior within the parent, ``prev[name]["within"]``;
    its posterior is the parent's, moved or not, times that). ``base``, ``prev``: from ``prevalence``."""
    q = cal(probs)
    out = q.copy()
    for j in cal.order:
        name, k = labels[j], cal.parents[j]
        within = prev[name].get("within")
        if k is None or within is None:
            if moved[name]:
                out[:, j] = adjust_posteriors(q[:, j], float(base[j]), prev[name]["em"])
            continue
        c = conditional(q, j, k)
        if moved[name]:
            c = adjust_posteriors(c, within["reference"], within["em"])
        out[:, j] = out[:, k] * c
    return out


def cbpe(
    q: np.ndarray,
    flagged: np.ndarray,
    *,
    draws: int = 1000,
    seed: int = 0,
    q_draws: np.ndarray | None = None,
) -> dict[str, Any]:
    """Expected precision and recall of one label at its threshold (CBPE).

    Args:
        q: (n,) posteriors that the label applies (calibrated for this window).
        flagged: (n,) bool, the model's decision at the label's threshold.
        q_draws: optional (B, n) posteriors from recalibrations refitted on resampled references; the
            simulated labels of draw d come from row d mod B, so the interval also holds the
            recalibration's own error (a parametric bootstrap with parameter uncertainty), not only
            the window's Bernoulli sampling.

    Returns:
        ``precision`` / ``recall`` (None where undefined: nothing flagged, no expected positive),
        their 5-95% intervals of the realised value under Bernoulli labels, and ``flagged``.
    """
    flagged = np.asarray(flagged, dtype=bool)
    tp = float(q[flagged].sum())
    fn = float(q[~flagged].sum())
    nf = int(flagged.sum())
    out: dict[str, Any] = {
        "precision": tp / nf if nf else None,
        "recall": tp / (tp + fn) if tp + fn > 0 else None,
        "flagged": nf,
    }
    rng = np.random.default_rng(seed)
    source = q[None, :] if q_draws is None else np.asarray(q_draws, dtype=np.float64)
    step = min(draws, 1000) if q_draws is None else len(source)  # simulated label rows at a time
    tps, pos = np.zeros(draws), np.zeros(draws)
    for start in range(0, draws, step):
        k = min(step, draws - start)
        y = rng.random((k, len(q))) < source[:k]  # (k, n) labels; source: one row, or rows start.. of q_draws
        tps[start : start + k] = y[:, flagged].sum(1)
        pos[start : start + k] = y.sum(1)
    prec = tps / nf if nf else None
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = np.where(pos > 0, tps / np.maximum(pos, 1), np.nan)
    out["precision_interval"] = None if prec is None else [float(v) for v in np.quantile(prec, [0.05, 0.95])]
    out["precision_sd"] = None if prec is None else float(np.std(prec))
    finite = rec[np.isfinite(rec)]
    out["recall_interval"] = [float(v) for v in np.quantile(finite, [0.05, 0.95])] if finite.size else None
    out["recall_sd"] = float(np.std(finite)) if finite.size else None
    return out


def realised(y: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Realised precision and recall of one label at its threshold from 0/1 labels ``y`` (n,)."""
    y = np.asarray(y) > 0.5
    flagged = np.asarray(flagged, dtype=bool)
    tp = int((y & flagged).sum())
    return {
        "precision": tp / int(flagged.sum()) if flagged.any() else None,
        "recall": tp / int(y.sum()) if y.any() else None,
        "flagged": int(flagged.sum()),
        "positives": int(y.sum()),
    }


def text_key(text: str) -> str:
    """sha256 of the normalised text: how window ads are matched to feedback rows (as the feedback
    store keys them)."""
    from model.normalize import normalize_text

    return hashlib.sha256(normalize_text(text).encode("utf-8", "surrogatepass")).hexdigest()


def feedback_precision(
    texts: list[str],
    flagged: np.ndarray,
    feedback: dict[str, set[str]],
    labels: tuple[str, ...],
) -> dict[str, dict]:
    """Realised precision and recall per label among the window's ads a moderator reviewed.

    Args:
        texts: (n,) window texts.
        flagged: (n, L) bool decisions.
        feedback: normalised-text sha256 -> the label names a moderator gave (``load_feedback``).

    Returns:
        {label: {precision, precision_n, precision_interval, recall, recall_n, reviewed}}: precision
        over reviewed flagged ads, recall over reviewed ads the moderator labelled positive, each with
        a 95% Clopper-Pearson interval (``scipy.stats.binomtest``); None where no ad qualifies.
        Reviewed ads are not a random sample (moderators see flagged ads first): read the recall with care.
    """
    from scipy.stats import binomtest

    hit = [(i, feedback[k]) for i, k in enumerate(map(text_key, texts)) if k in feedback]
    out = {}
    for j, name in enumerate(labels):
        pos = [name in lab for i, lab in hit if flagged[i, j]]
        rec = [bool(flagged[i, j]) for i, lab in hit if name in lab]

        def share(xs: list[bool]) -> tuple[float | None, list[float] | None]:
            if not xs:
                return None, None
            ci = binomtest(int(sum(xs)), len(xs)).proportion_ci(0.95, method="exact")
            return sum(xs) / len(xs), [round(ci.low, 4), round(ci.high, 4)]

        p, p_ci = share(pos)
        r, r_ci = share(rec)
        out[name] = {
            "precision": p,
            "precision_n": len(pos),
            "precision_interval": p_ci,
            "recall": r,
            "recall_n": len(rec),
            "recall_interval": r_ci,
            "reviewed": len(hit),
        }
    return out


def load_feedback(path: str, labels: tuple[str, ...]) -> dict[str, set[str]]:
    """Read an ``adrisk feedback export`` file (JSONL rows with ``text`` and ``labels``) into
    normalised-text sha256 -> label names (the model's labels only; later rows win).

    Raises:
        monitor.window.MonitorError: missing or unreadable file, or no text / labels column.
    """
    from monitor.window import MonitorError, read_frame

    df = read_frame(path, "--feedback")
    missing = [c for c in ("text", "labels") if c not in df.columns]
    if missing:
        raise MonitorError(
            f"--feedback {path}: no {' / '.join(missing)} column (give an adrisk feedback export)"
        )
    out: dict[str, set[str]] = {}
    for text, labs in zip(df["text"], df["labels"], strict=True):
        if isinstance(text, str):
            names = [str(x) for x in (labs if labs is not None else [])]
            out[text_key(text)] = {x for x in names if x in labels}
    return out
