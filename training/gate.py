"""The champion/challenger gate as pure rules: metrics in, one row per compared quantity out.

No MLflow, no files: ``training/retrain.py`` computes both models' metrics on the gate set, calls
``apply_gate`` and acts on the result; the CLI prints ``format_gate_table``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from training.config import GateConfig

GATE_SPLIT = "gate"


@dataclass
class GateRow:
    """One compared quantity: ``rule`` is the check it was held to; ``passed`` None = reported only."""

    slice: str
    label: str
    metric: str
    champion: float | None
    challenger: float | None
    rule: str
    passed: bool | None

    @property
    def delta(self) -> float | None:
        if self.champion is None or self.challenger is None:
            return None
        return self.challenger - self.champion


@dataclass
class GateDecision:
    promoted: bool
    rows: list[GateRow]
    champion_version: str | None
    challenger_version: str | None
    reason: str

    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if r.passed is False]

    def to_dict(self) -> dict:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "rows": [asdict(r) | {"delta": r.delta} for r in self.rows],
        }


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def apply_gate(
    challenger: dict[str, float], champion: dict[str, float] | None, labels, g: GateConfig
) -> list[GateRow]:
    """Evaluate the gate rules. ``champion`` None means a first model: absolute floors apply.

    Returns every compared row (per label overall, per source slice, macro AP, extra-set floors and,
    against a champion, the identity rules of ``identity_rows``), each with its rule.
    """
    rows: list[GateRow] = []
    key = lambda lab, m, src=None: f"{GATE_SPLIT}.{'source.' + src + '.' if src else ''}{lab}.{m}"  # noqa: E731
    c = lambda k: _num(challenger.get(k))  # noqa: E731
    o = lambda k: _num(champion.get(k)) if champion else None  # noqa: E731

    def add(slice_, lab, metric, k, rule, check):
        ch, new = o(k), c(k)
        passed = None if check is None else (check(new, ch) if new is not None else False)
        rows.append(GateRow(slice_, lab, metric, ch, new, rule, passed))

    if champion is None:
        add(
            "all",
            "macro",
            "ap",
            f"{GATE_SPLIT}.macro.ap",
            f">= {g.min_macro_ap} (first-model floor)",
            lambda new, _: new >= g.min_macro_ap,
        )
    else:
        add(
            "all",
            "macro",
            "ap",
            f"{GATE_SPLIT}.macro.ap",
            f">= champion - {g.macro_ap_tolerance}",
            lambda new, old: old is None or new >= old - g.macro_ap_tolerance,
        )
    for lab in labels:
        if champion is None:
            floor = g.min_ap.get(lab)
            add(
                "all",
                lab,
                "ap",
                key(lab, "ap"),
                f">= {floor} (first-model floor)" if floor is not None else "report",
                None if floor is None else (lambda new, _, f=floor: new >= f),
            )
        else:
            add(
                "all",
                lab,
                "ap",
                key(lab, "ap"),
                f">= champion - {g.ap_tolerance}",
                lambda new, old: old is None or new >= old - g.ap_tolerance,
            )
            add(
                "all",
                lab,
                "recall",
                key(lab, "recall"),
                f">= champion - {g.max_recall_drop}",
                lambda new, old: old is None or new >= old - g.max_recall_drop,
            )
        add("all", lab, "ece", key(lab, "ece"), f"<= {g.max_ece}", lambda new, _: new <= g.max_ece)
    sources = sorted({k.split(".")[2] for k in challenger if k.startswith(f"{GATE_SPLIT}.source.")})
    for src in sources:
        for lab in labels:
            n, pos = c(key(lab, "n", src)), c(key(lab, "support", src))
            if not n or not pos or pos == n:
                continue  # no ranking task inside this slice
            tol = g.per_source_ap_tolerance
            if champion is None or tol is None:
                add(src, lab, "ap", key(lab, "ap", src), "report", None)
            else:
                add(
                    src,
                    lab,
                    "ap",
                    key(lab, "ap", src),
                    f">= champion - {tol}",
                    lambda new, old, t=tol: old is None or new >= old - t,
                )
    for k, bound in sorted(g.eval_floors.items()):  # extra evaluation sets (eval.<set>.*): absolute bounds
        set_name, rest = k.split(".", 1)
        lab, metric = rest.rsplit(".", 1) if "." in rest else (rest, "")
        ceiling = metric == "flagged_negatives"  # a share of negatives flagged: lower is better
        add(
            f"eval:{set_name}",
            lab,
            metric,
            f"eval.{k}",
            f"{'<=' if ceiling else '>='} {bound} (eval floor)",
            lambda new, _, b=bound, c=ceiling: new <= b if c else new >= b,
        )
    if champion is not None:
        rows += identity_rows(challenger, champion, g)
    return rows


def identity_rows(challenger: dict[str, float], champion: dict[str, float], g: GateConfig) -> list[GateRow]:
    """The identity rules (docs/identity.md), one row per term and rule, slice ``identity``.

    Per identity term ``t`` of the challenger's audit on the benign templates (``training/identity_audit.py``):

    - ``gap``: its counterfactual gap (``identity.term.<t>.gap``, Garg et al. 2019) may exceed the
      champion's by at most ``g.identity_gap_tolerance``;
    - ``flag_excess``: its benign-template flag rate above the neutral fillers' (``identity.term.<t>.
      flag_excess``: the lawful ads flagged *because* they name ``t``) may exceed the champion's by at
      most ``g.identity_flag_rate_tolerance``. The excess, not the raw rate: a challenger whose
      thresholds flag more benign ads whatever they name is the AP and recall rules' business, not
      an identity bias.

    A None tolerance turns that rule off. A term the champion has no figure for (an older champion,
    a term added to the list) is held to a gap and an excess of 0. A challenger without identity
    metrics yields no rows.

    Args:
        challenger / champion: metric dicts with the ``identity.`` prefix (other keys are ignored).
    """
    rows: list[GateRow] = []
    terms = sorted(
        {k.split(".")[2] for k in challenger if k.startswith("identity.term.") and k.count(".") == 3}
    )
    for metric, tol in (("gap", g.identity_gap_tolerance), ("flag_excess", g.identity_flag_rate_tolerance)):
        if tol is None:
            continue
        for t in terms:
            k = f"identity.term.{t}.{metric}"
            new, old = _num(challenger.get(k)), _num(champion.get(k))
            passed = new is not None and new <= (old or 0.0) + tol
            rows.append(GateRow("identity", t, metric, old, new, f"<= champion + {tol}", passed))
    return rows


def format_gate_table(rows: list[GateRow]) -> str:
    """Plain-text side-by-side table: slice, label, metric, champion, challenger, delta, rule, result.

    The identity rows (two per term, ``identity_rows``) are shown only where they fail; one line
    counts the passing ones (every row stays in the decision's ``gate/report.json``)."""
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    quiet = [r for r in rows if r.slice == "identity" and r.passed is not False]
    rows = [r for r in rows if not (r.slice == "identity" and r.passed is not False)]
    body = [
        [
            r.slice,
            r.label,
            r.metric,
            f(r.champion),
            f(r.challenger),
            "-" if r.delta is None else f"{r.delta:+.4f}",
            r.rule,
            {True: "pass", False: "FAIL", None: ""}[r.passed],
        ]
        for r in rows
    ]
    header = ["slice", "label", "metric", "champion", "challenger", "delta", "rule", "result"]
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(len(header))]
    line = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths]), *(line(b) for b in body)]
    if quiet:
        out.append(f"identity: {len(quiet)} more rows pass (per term, gap and flag excess vs the champion's)")
    return "\n".join(out)
