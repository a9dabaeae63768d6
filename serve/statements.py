"""Statements of reasons (DSA Art. 17) from logged decisions, in the fields of the DSA Transparency
Database's statement-of-reasons schema that adrisk can fill (docs/policy.md, "Statement mapping").

A decision restricts the ad when the policy maps its action to a ``DECISION_VISIBILITY_*`` value
(``statement.visibility``); only those get a statement. The facts name the model, its calibrated
scores, the bands and rules that decided, and the policy version; never the ad text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from signals.policy import Policy

DSA_SOURCE_VOLUNTARY = "SOURCE_VOLUNTARY"  # detected on the platform's own initiative
CONTENT_TYPE_TEXT = "CONTENT_TYPE_TEXT"


def _reason_fact(r: Mapping[str, Any]) -> str:
    if r.get("rule") == "score":
        lo, hi = r["band"]
        return (
            f"the model gave {r['category']} a calibrated probability of {r['score']:.3f}, in the band "
            f"[{lo:.2f}, {hi:.2f}{']' if hi == 1.0 else ')'} the policy maps to '{r['action']}'"
        )
    if r.get("rule") == "contact_blocklist":
        return (
            f"a {r['contact_type']} in the ad is on the platform's contact blocklist (action '{r['action']}')"
        )
    if r.get("rule") == "term":
        return f"the ad contains the blocked term '{r['term']}' (action '{r['action']}')"
    return f"rule {r.get('rule')!r} (action '{r.get('action')}')"


def decision_facts(row: Mapping[str, Any]) -> str:
    """The facts of a decision in words (at most 5000 characters, the schema's limit), no ad text."""
    model = row.get("model_name") or "the model"
    version = f" version {row['model_version']}" if row.get("model_version") else ""
    facts = "; ".join(_reason_fact(r) for r in row.get("reasons") or []) or "no rule fired"
    text = (
        f"Automated decision '{row['action']}' by adrisk under moderation policy {row['policy_version']} "
        f"with {model}{version}: {facts}."
    )
    return text[:5000]


def statement_of_reasons(row: Mapping[str, Any], policy: Policy) -> dict[str, Any] | None:
    """The statement of reasons of a logged decision, or None when its action restricts nothing.

    Args:
        row: a decision row (``serve.decisions.row_dict``).
        policy: the policy version the decision was made under.

    Returns:
        A dict of DSA Transparency Database fields: ``decision_visibility``, ``decision_ground`` and the
        ground's text fields, ``category`` (+ ``category_addition``, ``category_specification``),
        ``content_type``, ``application_date``, ``decision_facts``, ``source_type``,
        ``automated_detection``, ``automated_decision``, ``territorial_scope`` when set, and ``puid``
        (the decision id; a platform replaces it with its own content id).
    """
    cfg = policy.statement
    visibility = cfg.visibility.get(row["action"])
    if visibility is None:
        return None
    primary = policy.statement_category(row.get("category"))
    others: list[str] = []
    for r in row.get("reasons") or []:
        cat = policy.statement_category(r.get("category")).category
        if cat != primary.category and cat not in others:
            others.append(cat)
    facts = decision_facts(row)
    sor: dict[str, Any] = {"decision_visibility": [visibility], "decision_ground": cfg.ground}
    if cfg.ground == "DECISION_GROUND_ILLEGAL_CONTENT":
        sor["illegal_content_legal_ground"] = cfg.ground_text
        sor["illegal_content_explanation"] = facts[:2000]
    else:
        sor["incompatible_content_ground"] = cfg.ground_text
        sor["incompatible_content_explanation"] = facts[:2000]
        sor["incompatible_content_illegal"] = "No"
    if cfg.ground_url:
        sor["decision_ground_reference_url"] = cfg.ground_url
    sor["category"] = primary.category
    if others:
        sor["category_addition"] = others
    if primary.keywords:
        sor["category_specification"] = list(primary.keywords)
    sor.update(
        content_type=[CONTENT_TYPE_TEXT],
        application_date=str(row["created_at"])[:10],
        decision_facts=facts,
        source_type=DSA_SOURCE_VOLUNTARY,
        automated_detection="Yes",
        automated_decision=cfg.automated_decision,
    )
    if cfg.territorial_scope:
        sor["territorial_scope"] = list(cfg.territorial_scope)
    sor["puid"] = row["decision_id"]
    return sor
