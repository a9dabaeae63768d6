"""The identity-term audit: is an ad flagged for naming who a person is, rather than what it offers?

Printed and logged by every ``adrisk train`` and ``adrisk evaluate`` beside the shortcut audit
(``training/audit.py``): metric prefix ``identity.``, the table as the artifact
``identity_audit_table.txt``. Two parts:

1. **Benign templates** (``benign_templates``; built here, never taken or labelled from any data set):
   ``TEMPLATES_PER_CATEGORY`` lawful ads in each of ``CATEGORIES`` (massage and spa offers, jobs,
   rentals, goods, services) with one slot for a word describing a person or business. Each template
   is scored with every identity term of ``training/identity_terms.py`` (``TERMS``) and with every
   neutral filler (``NEUTRAL_FILLERS``: "experienced", "local", ...). Per term and label:

   - ``mean_prob``: mean calibrated probability over the templates;
   - ``flag_rate``: share of templates at or above the label's threshold (and, per term, the share
     flagged on any label, the way an ad is flagged);
   - ``gap``: the counterfactual gap (Garg et al. 2019, "Counterfactual Fairness in Text
     Classification through Robustness", AIES): mean over templates of ``|p(template with term) -
     p(template with a neutral filler)|`` (the filler side is the mean over the fillers), i.e. how
     much the probability moves when only the word is swapped; ``shift`` is the signed mean.

   A term's ``gap`` is its largest over the flaggable labels; its ``flag_excess`` is its any-label
   flag rate minus the fillers'. A term **fails** the audit when its gap exceeds ``MAX_TERM_GAP``
   or its flag excess exceeds ``MAX_FLAG_EXCESS``; the audit passes when no term fails and the mean
   gap over terms is at most ``MAX_MEAN_GAP``.

2. **Subgroups of real rows** (Borkan et al. 2019, "Nuanced Metrics for Measuring Unintended Bias
   with Real Data for Text Classification", WWW companion): on the evaluated rows that name a term
   (the subgroup), per label, the subgroup AUC, BPSN AUC (background positives with subgroup
   negatives: low means the subgroup's negatives score like positives, i.e. false flags) and BNSP AUC
   (background negatives with subgroup positives: low means missed positives). Each is reported
   only when the subgroup side holds at least ``MIN_SUBGROUP_ROWS`` rows of every class it ranks.

Metric keys (``identity.`` prefix added by ``prefixed``): ``term.<t>.<label>.{mean_prob,flag_rate,
gap,shift}``, ``term.<t>.{gap,flag_rate,flag_excess}``, ``filler.<label>.{mean_prob,flag_rate}``,
``filler.flag_rate``, ``category.<c>.filler_flag_rate``, ``gap.mean``, ``gap.max`` and
``flag_rate_excess.max`` over every term and the same under ``held_out.`` over the audit-only ones (which no
mitigation sees), ``passed`` (0/1), ``subgroup.<t>.n`` and ``subgroup.<t>.<label>.{auc,bpsn_auc,bnsp_auc}``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

from training.identity_terms import NEUTRAL_FILLERS, TERMS, TERMS_VERSION, IdentityTerm, mentions

MAX_TERM_GAP = 0.10
MAX_MEAN_GAP = 0.03
MAX_FLAG_EXCESS = 0.02
MIN_SUBGROUP_ROWS = 10
SLOT = "{x}"

# Per category: phrases with one slot for a descriptor of a person or business, and endings. Every
# (phrase, ending) pair is one template (``benign_templates``): lawful offers a platform must not remove.
_CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "massage_spa": (
        (
            "Relaxing massage by {x} therapist",
            "Deep tissue massage with {x} licensed masseuse",
            "{x} day spa: facials, pedicures and hot stone massage",
            "Foot reflexology by {x} practitioner",
            "Sports massage for runners, {x} therapist",
            "Prenatal massage by {x} massage therapist",
        ),
        ("clean studio", "60 min", "walk-ins welcome", "gift cards available", "book online"),
    ),
    "jobs": (
        (
            "{x} restaurant hiring line cook",
            "Hiring {x} caregiver for elderly man",
            "{x} nanny available for after-school care",
            "Warehouse needs {x} forklift driver",
            "{x} bookkeeper looking for small business clients",
            "Office assistant wanted at {x} law firm",
        ),
        ("full time", "weekends", "pay weekly", "apply in person", "references required"),
    ),
    "rentals": (
        (
            "Room for rent in quiet home with {x} family",
            "{x} landlord renting 2 bedroom apartment",
            "Furnished studio sublet from {x} grad student",
            "Roommate wanted, {x} couple",
            "Parking space for rent from {x} owner",
            "Shared office space with {x} tenants",
        ),
        ("utilities included", "near downtown", "no pets", "available now", "month to month"),
    ),
    "goods": (
        (
            "{x} cookbook collection for sale",
            "Handmade pottery by {x} artist",
            "{x} grocery store: fresh produce and spices",
            "Used bicycle sold by {x} student",
            "Wedding cakes from {x} bakery",
            "Vintage furniture from {x} collector",
        ),
        ("cash only", "like new", "open daily", "pickup only", "fair price"),
    ),
    "services": (
        (
            "{x} house cleaner available",
            "Hair braiding and cuts by {x} stylist",
            "{x} handyman: plumbing, painting, drywall",
            "Tax preparation by {x} accountant",
            "Dog walking by {x} pet sitter",
            "Piano lessons with {x} teacher",
        ),
        (
            "free estimates",
            "evenings and weekends",
            "references on request",
            "by appointment",
            "affordable rates",
        ),
    ),
}
CATEGORIES = tuple(_CATEGORIES)
TEMPLATES_PER_CATEGORY = 30


@dataclass(frozen=True)
class Template:
    """One benign template: ``text`` holds ``SLOT`` once; ``category`` is one of ``CATEGORIES``."""

    text: str
    category: str

    def fill(self, word: str) -> str:
        """The template with ``word`` in the slot (first letter upper-cased when the slot starts it)."""
        s = self.text.replace(SLOT, word)
        return s[:1].upper() + s[1:]


def benign_templates(per_category: int = TEMPLATES_PER_CATEGORY) -> list[Template]:
    """The audit's benign templates: the first ``per_category`` (phrase, ending) pairs of every
    category, ending-major (so a few still cover every phrase), in a fixed order.

    Raises:
        ValueError: ``per_category`` outside 1..``TEMPLATES_PER_CATEGORY``.
    """
    if not 1 <= per_category <= TEMPLATES_PER_CATEGORY:
        raise ValueError(f"per_category must be in 1..{TEMPLATES_PER_CATEGORY}, got {per_category}")
    return [
        Template(f"{p}, {e}", cat)
        for cat, (phrases, endings) in _CATEGORIES.items()
        for e, p in list(itertools.product(endings, phrases))[:per_category]
    ]


@dataclass
class IdentityAuditResult:
    """Audit numbers (keys without the ``identity.`` prefix), the failing terms, and the printed table."""

    metrics: dict[str, float]
    failing: list[str]
    passed: bool
    table: str = ""
    notes: list[str] = field(default_factory=list)

    def prefixed(self, prefix: str = "identity.") -> dict[str, float]:
        """Every metric with ``prefix`` (the JSON artifact, the gate)."""
        return {f"{prefix}{k}": v for k, v in self.metrics.items()}

    def logged(self, prefix: str = "identity.") -> dict[str, float]:
        """The metrics logged to MLflow: ``prefixed`` less the per-term, per-label ones
        (``term.<t>.<label>.*``, about 700 keys), which stay in the JSON artifact and the table."""
        return {
            f"{prefix}{k}": v
            for k, v in self.metrics.items()
            if not (k.startswith("term.") and k.count(".") == 3)
        }


def _flag(p: np.ndarray, thr: np.ndarray, flaggable: np.ndarray) -> np.ndarray:
    """(T, L) probabilities -> (T,) bool: any flaggable label at or above its threshold."""
    return ((p >= thr) & flaggable).any(axis=1)


def template_metrics(
    score: Callable[[list[str]], np.ndarray],
    labels: Sequence[str],
    thresholds: Sequence[float],
    terms: Sequence[IdentityTerm] = TERMS,
    fillers: Sequence[str] = NEUTRAL_FILLERS,
    flaggable: Sequence[bool] | None = None,
    templates: Sequence[Template] | None = None,
) -> dict[str, float]:
    """Part 1 of the audit (see module docstring): every template scored with every term and filler.

    Args:
        score: texts -> (n, L) calibrated probabilities (the model as served).
        thresholds: (L,) the model's decision thresholds. flaggable: (L,) labels that flag an ad
            (default all; a multi-class benign label is not).
        templates: default ``benign_templates()``.

    Returns:
        Metric keys without prefix (``term.*``, ``filler.*``, ``category.*``).

    Raises:
        ValueError: no fillers or no templates, or ``score`` returned the wrong shape.
    """
    tpl = list(templates) if templates is not None else benign_templates()
    if not fillers or not tpl:
        raise ValueError("the identity audit needs at least one filler and one template")
    thr = np.asarray(thresholds, dtype=np.float64)
    flg = np.ones(len(labels), dtype=bool) if flaggable is None else np.asarray(flaggable, dtype=bool)
    words = [t.text for t in terms] + list(fillers)
    texts = [t.fill(w) for w in words for t in tpl]
    p = np.asarray(score(texts), dtype=np.float64)
    if p.shape != (len(texts), len(labels)):
        raise ValueError(f"score returned shape {p.shape}, expected {(len(texts), len(labels))}")
    p = p.reshape(len(words), len(tpl), len(labels))  # (word, template, label)
    pf = p[len(terms) :]  # (F, T, L) fillers
    ref = pf.mean(axis=0)  # (T, L): the filler side of every counterfactual pair
    filler_any = np.stack([_flag(x, thr, flg) for x in pf])  # (F, T)
    m: dict[str, float] = {"filler.flag_rate": float(filler_any.mean())}
    cats = np.array([t.category for t in tpl])
    for c in dict.fromkeys(cats.tolist()):
        m[f"category.{c}.filler_flag_rate"] = float(filler_any[:, cats == c].mean())
    for j, lab in enumerate(labels):
        m[f"filler.{lab}.mean_prob"] = float(pf[:, :, j].mean())
        m[f"filler.{lab}.flag_rate"] = float((pf[:, :, j] >= thr[j]).mean())
    for i, term in enumerate(terms):
        k, d = term.key, p[i] - ref  # (T, L)
        for j, lab in enumerate(labels):
            m[f"term.{k}.{lab}.mean_prob"] = float(p[i, :, j].mean())
            m[f"term.{k}.{lab}.flag_rate"] = float((p[i, :, j] >= thr[j]).mean())
            m[f"term.{k}.{lab}.gap"] = float(np.abs(d[:, j]).mean())
            m[f"term.{k}.{lab}.shift"] = float(d[:, j].mean())
        m[f"term.{k}.gap"] = float(np.abs(d[:, flg]).mean(axis=0).max()) if flg.any() else 0.0
        m[f"term.{k}.flag_rate"] = float(_flag(p[i], thr, flg).mean())
        m[f"term.{k}.flag_excess"] = m[f"term.{k}.flag_rate"] - m["filler.flag_rate"]
    return m


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s))


def subgroup_metrics(
    texts: Sequence[str],
    targets: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    terms: Sequence[IdentityTerm] = TERMS,
    min_rows: int = MIN_SUBGROUP_ROWS,
) -> dict[str, float]:
    """Part 2 of the audit: Borkan et al. (2019) subgroup AUC, BPSN and BNSP AUC per term and label.

    Args:
        texts: (n,) the evaluated rows; a row is in a term's subgroup when it names the term.
        targets / probs: (n, L) 0/1 and the model's probabilities on ``texts``.
        min_rows: a metric is reported only when the subgroup side holds at least this many rows of
            each class it ranks (and the background side at least this many of its class).

    Returns:
        ``subgroup.<t>.n`` for every term named at least once, ``subgroup.<t>.<label>.{auc,bpsn_auc,
        bnsp_auc}`` where defined.

    Raises:
        ValueError: lengths that disagree.
    """
    y, p = np.asarray(targets), np.asarray(probs, dtype=np.float64)
    if not (len(texts) == len(y) == len(p)):
        raise ValueError(f"texts ({len(texts)}), targets ({len(y)}) and probs ({len(p)}) differ in length")
    m: dict[str, float] = {}
    for term in terms:
        s = np.asarray(mentions(texts, term), dtype=bool)
        if not s.any():
            continue
        m[f"subgroup.{term.key}.n"] = float(s.sum())
        for j, lab in enumerate(labels):
            pos, neg = y[:, j] == 1, y[:, j] == 0
            sp, sn, bp, bn = (s & pos), (s & neg), (~s & pos), (~s & neg)
            k = f"subgroup.{term.key}.{lab}"
            if sp.sum() >= min_rows and sn.sum() >= min_rows:
                m[f"{k}.auc"] = _auc(y[s, j], p[s, j])
            if sn.sum() >= min_rows and bp.sum() >= min_rows:
                r = sn | bp
                m[f"{k}.bpsn_auc"] = _auc(y[r, j], p[r, j])
            if sp.sum() >= min_rows and bn.sum() >= min_rows:
                r = sp | bn
                m[f"{k}.bnsp_auc"] = _auc(y[r, j], p[r, j])
    return m


def _summary(m: dict[str, float], terms: Sequence[IdentityTerm], prefix: str) -> dict[str, float]:
    if not terms:
        return {}
    gaps = [m[f"term.{t.key}.gap"] for t in terms]
    excess = [m[f"term.{t.key}.flag_excess"] for t in terms]
    return {
        f"{prefix}gap.mean": float(np.mean(gaps)),
        f"{prefix}gap.max": float(np.max(gaps)),
        f"{prefix}flag_rate_excess.max": float(np.max(excess)),
    }


def failing_terms(m: dict[str, float], terms: Sequence[IdentityTerm] = TERMS) -> list[str]:
    """Keys of the terms whose gap exceeds ``MAX_TERM_GAP`` or flag excess ``MAX_FLAG_EXCESS``."""
    return [
        t.key
        for t in terms
        if m[f"term.{t.key}.gap"] > MAX_TERM_GAP or m[f"term.{t.key}.flag_excess"] > MAX_FLAG_EXCESS
    ]


def run_identity_audit(
    labels: Sequence[str],
    thresholds: Sequence[float],
    score: Callable[[list[str]], np.ndarray],
    eval_texts: Sequence[str] | None = None,
    eval_targets: np.ndarray | None = None,
    eval_probs: np.ndarray | None = None,
    flaggable: Sequence[bool] | None = None,
    terms: Sequence[IdentityTerm] = TERMS,
    templates_per_category: int = TEMPLATES_PER_CATEGORY,
) -> IdentityAuditResult:
    """The whole identity audit (see module docstring).

    Args:
        labels, thresholds, score, flaggable: the model (see ``template_metrics``).
        eval_texts / eval_targets / eval_probs: the evaluated rows (usually test) and the model's
            (n, L) probabilities on them, for the subgroup part; without them it is skipped.
        terms: default the versioned list (``TERMS``); the summary is kept apart for held-out terms.
        templates_per_category: see ``benign_templates`` (fewer: a faster, coarser audit).

    Raises:
        ValueError: as ``template_metrics`` and ``subgroup_metrics``.
    """
    templates = benign_templates(templates_per_category)
    m = template_metrics(score, labels, thresholds, terms, flaggable=flaggable, templates=templates)
    m |= _summary(m, terms, "")
    m |= _summary(m, [t for t in terms if t.held_out], "held_out.")
    failing = failing_terms(m, terms)
    passed = not failing and m.get("gap.mean", 0.0) <= MAX_MEAN_GAP
    m["passed"] = float(passed)
    if eval_texts is not None and eval_targets is not None and eval_probs is not None:
        m |= subgroup_metrics(eval_texts, eval_targets, eval_probs, labels, terms)
    notes = []
    if failing:
        notes.append(
            f"identity audit: {len(failing)} term(s) move a benign ad's score by more than {MAX_TERM_GAP:.2f} "
            f"or flag more than {MAX_FLAG_EXCESS:.0%} more benign ads than a neutral word: {', '.join(failing)}. "
            "The model treats naming who someone is as evidence; see docs/identity.md for the mitigations."
        )
    res = IdentityAuditResult(m, failing, passed, notes=notes)
    res.table = format_identity_table(res, labels, terms, len(templates))
    return res


def _f(v: float | None, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def format_identity_table(
    res: IdentityAuditResult,
    labels: Sequence[str],
    terms: Sequence[IdentityTerm] = TERMS,
    n_templates: int = 0,
) -> str:
    """Plain-text table: a row per term (group, gap, its largest signed shift, flag rate and excess in
    percentage points, mean probability per label), the fillers' row, the summary, then the subgroup
    metrics that are defined."""
    m = res.metrics
    short = [lab[:10] for lab in labels]
    head = f"{'term':<22} {'group':<11} {'gap':>6} {'flag%':>6} {'+pts':>6}  " + " ".join(
        f"{s:>10}" for s in short
    )
    lines = [
        f"identity audit ({TERMS_VERSION}; {n_templates or len(benign_templates())} benign templates; gap = mean |p(term) - "
        "p(neutral filler)|, largest over labels; flag% = templates flagged on any label)",
        head,
    ]
    for t in terms:
        k = f"term.{t.key}"
        mark = " !" if t.key in res.failing else ("  (held out)" if t.held_out else "")
        lines.append(
            f"{t.text:<22} {t.group:<11} {_f(m[k + '.gap']):>6} {_f(m[k + '.flag_rate'], True):>6} "
            f"{100 * m[k + '.flag_excess']:>+6.1f}  "
            + " ".join(f"{_f(m[f'{k}.{lab}.mean_prob']):>10}" for lab in labels)
            + mark
        )
    lines.append(
        f"{'(neutral fillers)':<22} {'':<11} {'':>6} {_f(m['filler.flag_rate'], True):>6} {'':>6}  "
        + " ".join(f"{_f(m[f'filler.{lab}.mean_prob']):>10}" for lab in labels)
    )
    lines.append(
        f"mean gap {_f(m.get('gap.mean'))} (bound {MAX_MEAN_GAP}), largest {_f(m.get('gap.max'))} "
        f"(bound {MAX_TERM_GAP}), largest flag excess {100 * m.get('flag_rate_excess.max', 0.0):+.1f} pts "
        f"(bound {100 * MAX_FLAG_EXCESS:+.1f}); held-out terms: mean gap {_f(m.get('held_out.gap.mean'))}, "
        f"largest {_f(m.get('held_out.gap.max'))}: {'PASS' if res.passed else 'FAIL'}"
    )
    sub = []
    for t in terms:
        for lab in labels:
            k = f"subgroup.{t.key}.{lab}"
            if any(f"{k}.{x}" in m for x in ("auc", "bpsn_auc", "bnsp_auc")):
                sub.append(
                    f"{t.text:<22} {lab:<24} {int(m[f'subgroup.{t.key}.n']):>5} {_f(m.get(k + '.auc')):>6} "
                    f"{_f(m.get(k + '.bpsn_auc')):>6} {_f(m.get(k + '.bnsp_auc')):>6}"
                )
    if sub:
        lines += [
            "",
            f"subgroups of the evaluated rows naming a term (Borkan et al. 2019; >= {MIN_SUBGROUP_ROWS} rows "
            "per class on the subgroup side)",
            f"{'term':<22} {'label':<24} {'rows':>5} {'AUC':>6} {'BPSN':>6} {'BNSP':>6}",
            *sub,
        ]
    lines += [""] + res.notes if res.notes else []
    return "\n".join(lines)
