"""Moderation policy as data: what a platform does with a model's calibrated scores.

A policy is a versioned YAML file (pydantic-validated; reference: docs/policy.md) that maps each
category's calibrated probability to an **action** (``allow`` / ``review`` / ``remove``, or the
platform's own names, ordered least to most severe) and a **severity level**, both through
probability bands; overrides them per tenant; can run observe-only (decide and log, act with the
first action); and adds rules beside the model: a contact blocklist (phones, e-mails, URLs, handles,
matched through ``signals.contacts.ContactExtractor`` so obfuscated forms match, stored as keyed
HMAC-SHA256 digests, never in clear) and term block / allow lists.

Evaluation is split so that a logged decision can be replayed without the text:
``PolicyEngine.rule_hits(text)`` finds the rules that match the text (blocklisted contacts, blocked
terms), and ``PolicyEngine.decide(scores, hits, tenant)`` is a pure function of the scores, those
hits and the tenant. The server and the batch job share both; without a policy file the model's own
thresholds are the policy (``default_policy``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.normalize import normalize_text
from signals.contacts import ContactExtractor

DEFAULT_TENANT = "default"

# Values of the DSA Transparency Database's statement-of-reasons schema that a policy may name
# (https://transparency.dsa.ec.europa.eu/page/api-documentation); keywords are checked by form only.
DSA_CATEGORIES = (
    "STATEMENT_CATEGORY_ANIMAL_WELFARE",
    "STATEMENT_CATEGORY_CONSUMER_INFORMATION",
    "STATEMENT_CATEGORY_CYBER_VIOLENCE",
    "STATEMENT_CATEGORY_CYBER_VIOLENCE_AGAINST_WOMEN",
    "STATEMENT_CATEGORY_DATA_PROTECTION_AND_PRIVACY_VIOLATIONS",
    "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH",
    "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS",
    "STATEMENT_CATEGORY_NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS",
    "STATEMENT_CATEGORY_NON_CONSENSUAL_BEHAVIOUR",
    "STATEMENT_CATEGORY_NOT_SPECIFIED_NOTICE",
    "STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
    "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT",
    "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
    "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY",
    "STATEMENT_CATEGORY_SCAMS_AND_FRAUD",
    "STATEMENT_CATEGORY_SELF_HARM",
    "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE",
    "STATEMENT_CATEGORY_UNSAFE_AND_ILLEGAL_PRODUCTS",
    "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS",
    "STATEMENT_CATEGORY_VIOLENCE",
)
DSA_VISIBILITY = (
    "DECISION_VISIBILITY_CONTENT_REMOVED",
    "DECISION_VISIBILITY_CONTENT_DISABLED",
    "DECISION_VISIBILITY_CONTENT_DEMOTED",
    "DECISION_VISIBILITY_CONTENT_AGE_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_INTERACTION_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_LABELLED",
    "DECISION_VISIBILITY_OTHER",
)
DsaGround = Literal["DECISION_GROUND_ILLEGAL_CONTENT", "DECISION_GROUND_INCOMPATIBLE_CONTENT"]
DsaAutomatedDecision = Literal[
    "AUTOMATED_DECISION_FULLY", "AUTOMATED_DECISION_PARTIALLY", "AUTOMATED_DECISION_NOT_AUTOMATED"
]
_KEYWORD = re.compile(r"^KEYWORD_[A-Z_]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}$"

# the statement categories of risky-ads-v1's labels when a policy names none (docs/policy.md)
DEFAULT_STATEMENT_CATEGORIES: dict[str, dict[str, Any]] = {
    "adult_services": {
        "category": "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE",
        "keywords": ["KEYWORD_GOODS_SERVICES_NOT_PERMITTED"],
    },
    "trafficking_indicators": {
        "category": "STATEMENT_CATEGORY_VIOLENCE",
        "keywords": ["KEYWORD_HUMAN_TRAFFICKING"],
    },
    "scam": {"category": "STATEMENT_CATEGORY_SCAMS_AND_FRAUD", "keywords": ["KEYWORD_INAUTHENTIC_LISTINGS"]},
}
OTHER_CATEGORY = {"category": "STATEMENT_CATEGORY_OTHER_VIOLATION_TC", "keywords": []}


class PolicyError(ValueError):
    """A policy that cannot be used; the message is one line naming the field and the rule."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Band(_Strict):
    """Calibrated probabilities ``[from, to)``; a band ending at 1 includes 1."""

    lo: float = Field(alias="from", ge=0.0, le=1.0, description="lower bound, included")
    hi: float = Field(alias="to", ge=0.0, le=1.0, description="upper bound, excluded (1 included)")

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if not self.lo < self.hi:
            raise ValueError(f"band [{self.lo:g}, {self.hi:g}): 'from' must be below 'to'")
        return self

    def contains(self, p: float) -> bool:
        return self.lo <= p < self.hi or (self.hi == 1.0 and p == 1.0)


class ActionBand(Band):
    action: str = Field(description="one of the policy's actions")


class SeverityBand(Band):
    level: str = Field(description="one of the policy's severity_levels")


def _no_overlap(bands: Sequence[Band], what: str) -> None:
    ordered = sorted(bands, key=lambda b: b.lo)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.lo < a.hi:
            raise ValueError(
                f"{what} bands overlap: [{a.lo:g}, {a.hi:g}) and [{b.lo:g}, {b.hi:g}); each probability "
                "may fall in one band only"
            )


class CategoryRules(_Strict):
    """One category's bands; probabilities in no band get the first action / first severity level."""

    actions: tuple[ActionBand, ...] = ()
    severity: tuple[SeverityBand, ...] = ()

    @model_validator(mode="after")
    def _disjoint(self) -> CategoryRules:
        _no_overlap(self.actions, "action")
        _no_overlap(self.severity, "severity")
        return self


_NO_RULES = CategoryRules()


class TenantOverride(_Strict):
    """What differs for one tenant (the tenant comes with the API key)."""

    observe_only: bool | None = Field(None, description="overrides the policy's observe_only")
    categories: dict[str, CategoryRules] = Field(
        default_factory=dict,
        description="these categories' rules for this tenant: each field given (actions, severity) "
        "replaces the policy's, a field left out keeps it",
    )


class ContactBlocklist(_Strict):
    """Contacts (any type) an ad must not carry, as ``ContactExtractor(hash_key=...)`` digests."""

    action: str
    severity: str | None = Field(None, description="severity level a hit sets (default: leaves it)")
    category: str | None = Field(None, description="a model label whose statement category a hit reports")
    region: str = Field("US", description="phone region for numbers written without a country code")
    key_fingerprint: str | None = Field(
        None, description="key_fingerprint() of the hashing key: refuses a server holding another key"
    )
    hashes: tuple[str, ...] = Field(description="hex HMAC-SHA256 digests (adrisk policy hash-contacts)")

    @field_validator("hashes")
    @classmethod
    def _hex(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [i for i, h in enumerate(v) if not _HEX64.match(h)]
        if bad:
            raise ValueError(
                f"hashes[{bad[0]}]: expected 64 lower-case hex digits (a keyed digest, never a contact in clear)"
            )
        return v


class BlockTerm(_Strict):
    term: str = Field(min_length=1, max_length=200)
    action: str
    severity: str | None = None
    category: str | None = Field(None, description="a model label whose statement category a hit reports")


class TermLists(_Strict):
    """Terms matched on the normalised, case-folded text at word boundaries. A blocked term inside an
    allowed phrase does not count (block ``escort``, allow ``ford escort``); an allowed phrase never
    overrides the model."""

    block: tuple[BlockTerm, ...] = ()
    allow: tuple[str, ...] = ()


class StatementCategory(_Strict):
    category: str
    keywords: tuple[str, ...] = ()

    @field_validator("category")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DSA_CATEGORIES:
            raise ValueError("not a STATEMENT_CATEGORY_* value of the DSA Transparency Database")
        return v

    @field_validator("keywords")
    @classmethod
    def _form(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not _KEYWORD.match(k) for k in v):
            raise ValueError("keywords are KEYWORD_* values of the DSA Transparency Database")
        return v


class StatementConfig(_Strict):
    """How decisions become DSA statements of reasons (docs/policy.md, "Statement mapping")."""

    ground: DsaGround = "DECISION_GROUND_INCOMPATIBLE_CONTENT"
    ground_text: str = Field(
        "the platform's terms and conditions", max_length=500, description="the rule or law relied on"
    )
    ground_url: str | None = Field(None, max_length=500)
    visibility: dict[str, str] = Field(
        default_factory=lambda: {"remove": "DECISION_VISIBILITY_CONTENT_REMOVED"},
        description="action -> DECISION_VISIBILITY_*; actions not named restrict nothing (no statement)",
    )
    automated_decision: DsaAutomatedDecision = "AUTOMATED_DECISION_FULLY"
    categories: dict[str, StatementCategory] = Field(
        default_factory=dict, description="label -> DSA category (default: docs/policy.md's table)"
    )
    territorial_scope: tuple[str, ...] | None = None

    @field_validator("visibility")
    @classmethod
    def _visibility(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [a for a, vis in v.items() if vis not in DSA_VISIBILITY]
        if bad:
            raise ValueError(f"{bad[0]}: not a DECISION_VISIBILITY_* value of the DSA Transparency Database")
        return v


class Policy(_Strict):
    """A moderation policy (docs/policy.md documents every field)."""

    version: str = Field(pattern=_NAME, description="stamped on every decision; change it with every edit")
    actions: tuple[str, ...] = Field(
        ("allow", "review", "remove"),
        min_length=1,
        description="least to most severe; the first is the default",
    )
    severity_levels: tuple[str, ...] = Field(("none", "low", "medium", "high"), min_length=1)
    observe_only: bool = Field(False, description="decide and log, but act with the first action")
    categories: dict[str, CategoryRules] = Field(description="one entry per label of the model")
    tenants: dict[str, TenantOverride] = Field(default_factory=dict)
    contact_blocklist: ContactBlocklist | None = None
    terms: TermLists = TermLists()
    statement: StatementConfig = StatementConfig()

    @model_validator(mode="after")
    def _names_defined(self) -> Policy:
        for what, names in (("actions", self.actions), ("severity_levels", self.severity_levels)):
            if len(set(names)) != len(names):
                raise ValueError(f"{what}: names must be unique")
        for where, rules in self._all_rules():
            for i, b in enumerate(rules.actions):
                _known(b.action, self.actions, f"{where}.actions[{i}].action", "actions")
            for i, s in enumerate(rules.severity):
                _known(s.level, self.severity_levels, f"{where}.severity[{i}].level", "severity_levels")
        for tenant, over in self.tenants.items():
            for cat in over.categories:
                if cat not in self.categories:
                    raise ValueError(
                        f"tenants.{tenant}.categories.{cat}: unknown category (not in categories)"
                    )
        bl = self.contact_blocklist
        if bl is not None:
            _known(bl.action, self.actions, "contact_blocklist.action", "actions")
            if bl.severity is not None:
                _known(bl.severity, self.severity_levels, "contact_blocklist.severity", "severity_levels")
        for i, t in enumerate(self.terms.block):
            _known(t.action, self.actions, f"terms.block[{i}].action", "actions")
            if t.severity is not None:
                _known(t.severity, self.severity_levels, f"terms.block[{i}].severity", "severity_levels")
        for action in self.statement.visibility:
            _known(action, self.actions, f"statement.visibility.{action}", "actions")
        return self

    def _all_rules(self):
        yield from ((f"categories.{c}", r) for c, r in self.categories.items())
        for t, over in self.tenants.items():
            yield from ((f"tenants.{t}.categories.{c}", r) for c, r in over.categories.items())

    def check_context(self, labels: Sequence[str], tenants: Collection[str] | None = None) -> None:
        """Check the policy against the model it will judge and the tenants the API keys name.

        Raises:
            PolicyError: a category that is not a label, a label without rules, a rule naming an
                unknown category, or a tenant no key carries (``tenants`` None: not checked).
        """
        for cat in self.categories:
            if cat not in labels:
                raise PolicyError(
                    f"categories.{cat}: not a label of the model (its labels: {', '.join(labels)})"
                )
        missing = [lab for lab in labels if lab not in self.categories]
        if missing:
            raise PolicyError(
                f"categories: no rules for the model's label {missing[0]!r} (give it `{missing[0]}: {{}}` "
                "to never act on it)"
            )
        refs: list[tuple[str, str | None]] = [
            (
                "contact_blocklist.category",
                self.contact_blocklist.category if self.contact_blocklist else None,
            )
        ]
        refs += [(f"terms.block[{i}].category", t.category) for i, t in enumerate(self.terms.block)]
        refs += [(f"statement.categories.{c}", c) for c in self.statement.categories]
        for where, ref in refs:
            if ref is not None and ref not in labels:
                raise PolicyError(f"{where}: {ref!r} is not a label of the model")
        if tenants is not None:
            for t in self.tenants:
                if t not in tenants:
                    raise PolicyError(
                        f"tenants.{t}: unknown tenant (the API keys carry: {', '.join(sorted(tenants)) or 'none'})"
                    )

    def canonical_json(self) -> str:
        """The policy as canonical JSON (sorted keys, aliases): what the decision log stores."""
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def statement_category(self, label: str | None) -> StatementCategory:
        """The DSA category (and keywords) a decision on ``label`` reports."""
        if label is not None and label in self.statement.categories:
            return self.statement.categories[label]
        return StatementCategory(**DEFAULT_STATEMENT_CATEGORIES.get(label or "", OTHER_CATEGORY))


def _known(name: str, names: Sequence[str], where: str, what: str) -> None:
    if name not in names:
        raise ValueError(f"{where}: {name!r} is not one of the policy's {what} {list(names)}")


def _describe(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ""
    for part in err.get("loc", ()):
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (docs/policy.md lists the fields)"
    elif err.get("type") == "missing":
        msg = "required field missing"
    return f"{loc}: {msg}" if loc else msg


def parse_policy(data: Any) -> Policy:
    """A ``Policy`` from parsed YAML/JSON.

    Raises:
        PolicyError: one line naming the first bad field and the rule it breaks.
    """
    if not isinstance(data, dict):
        raise PolicyError("a policy is a mapping with at least 'version' and 'categories'")
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(_describe(e)) from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (YAML; JSON is YAML too).

    Raises:
        PolicyError: unreadable, not YAML, or invalid (one line, prefixed with the path).
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise PolicyError(f"policy {p}: cannot read ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy {p}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise PolicyError(f"policy {p}: not valid YAML{where}") from None
    try:
        return parse_policy(data)
    except PolicyError as e:
        raise PolicyError(f"policy {p}: {e}") from None


def default_policy(
    labels: Sequence[str], thresholds: Mapping[str, float], benign: str | None = None
) -> Policy:
    """The policy a server without ``--policy`` applies: ``review`` at or above each label's own
    threshold (``allow`` below), severity ``high`` there (``none`` below); no statement of reasons
    (``review`` restricts nothing). Its version names its content: ``model-thresholds:<sha256[:12]>``."""
    cats: dict[str, Any] = {}
    for lab in labels:
        t = float(thresholds.get(lab, 1.0))
        if lab == benign or t >= 1.0:
            cats[lab] = {}
        else:
            cats[lab] = {
                "actions": [{"from": t, "to": 1.0, "action": "review"}],
                "severity": [{"from": t, "to": 1.0, "level": "high"}],
            }
    body = {
        "actions": ["allow", "review"],
        "severity_levels": ["none", "high"],
        "categories": cats,
        "statement": {"visibility": {}},
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return parse_policy({"version": f"model-thresholds:{digest}", **body})


def key_fingerprint(key: bytes | str) -> str:
    """A short public fingerprint of a contact-hashing key (HMAC of a fixed label): a policy carrying
    it is refused by a server holding another key, whose digests would never match."""
    k = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(k, b"adrisk contact blocklist key", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one ad.

    Attributes:
        action: the action to enact (the first action when observe-only).
        observed_action: observe-only: what the policy would have done; else None.
        severity: the highest severity level over categories and rule hits.
        category_severity: severity level per category.
        reasons: why, most severe first: ``{"rule": "score", "category", "score", "band", "action"}``,
            ``{"rule": "contact_blocklist", "contact_type", "action"}``, ``{"rule": "term", "term", "action"}``.
        primary_category: the label (or rule's label) of the first reason; None when nothing fired.
    """

    action: str
    observed_action: str | None
    severity: str
    category_severity: dict[str, str]
    reasons: list[dict]
    primary_category: str | None
    policy_version: str
    tenant: str


class PolicyEngine:
    """A policy compiled for evaluation. Thread-safe (immutable after construction).

    Args:
        policy: the validated policy.
        hash_key: the contact-hashing key (``ADRISK_CONTACT_HASH_KEY``); required when the policy has
            a contact blocklist.
        match_contacts: False for replays (``decide`` only): no key needed, ``rule_hits`` finds no
            contacts.

    Raises:
        PolicyError: a blocklist without a key, or with a key whose fingerprint differs from the policy's.
    """

    def __init__(self, policy: Policy, hash_key: bytes | str | None = None, match_contacts: bool = True):
        self.policy = policy
        self._extractor: ContactExtractor | None = None
        self._blocked: frozenset[str] = frozenset()
        bl = policy.contact_blocklist
        if bl is not None and bl.hashes and match_contacts:
            if not hash_key:
                raise PolicyError(
                    "contact_blocklist: needs the hashing key in ADRISK_CONTACT_HASH_KEY (the list holds keyed digests)"
                )
            if bl.key_fingerprint is not None and bl.key_fingerprint != key_fingerprint(hash_key):
                raise PolicyError(
                    "contact_blocklist.key_fingerprint: the digests were made with another key than "
                    "ADRISK_CONTACT_HASH_KEY; none would match"
                )
            try:
                self._extractor = ContactExtractor(bl.region, hash_key=hash_key)
            except ValueError as e:
                raise PolicyError(f"contact_blocklist.region: {e}") from None
            self._blocked = frozenset(bl.hashes)
        self._rank = {a: i for i, a in enumerate(policy.actions)}
        self._sev_rank = {s: i for i, s in enumerate(policy.severity_levels)}
        self._block_re = _term_regex([t.term for t in policy.terms.block])
        self._allow_re = _term_regex(list(policy.terms.allow))
        self._term_index = {_term_key(t.term): i for i, t in enumerate(policy.terms.block)}
        # per tenant, each category's rules with the tenant's override merged field by field
        self._rules: dict[str | None, dict[str, CategoryRules]] = {None: dict(policy.categories)}
        for tenant, over in policy.tenants.items():
            merged = dict(policy.categories)
            for cat, rules in over.categories.items():
                given = {f: getattr(rules, f) for f in rules.model_fields_set}
                merged[cat] = policy.categories[cat].model_copy(update=given)
            self._rules[tenant] = merged

    @property
    def version(self) -> str:
        return self.policy.version

    def rule_hits(self, text: str) -> list[dict]:
        """The rules beside the model that ``text`` matches (no ad text in the result): one
        ``{"rule": "contact_blocklist", "contact_type": T}`` per blocklisted contact type and one
        ``{"rule": "term", "term": TERM}`` per blocked term (as the policy spells it)."""
        hits: list[dict] = []
        if self._extractor is not None:
            types = sorted({c.type for c in self._extractor.extract(text) if c.value in self._blocked})
            hits += [{"rule": "contact_blocklist", "contact_type": t} for t in types]
        if self._block_re is not None:
            folded = _fold(normalize_text(text))
            allowed = (
                [m.span() for m in self._allow_re.finditer(folded)] if self._allow_re is not None else []
            )
            seen: set[int] = set()
            for m in self._block_re.finditer(folded):
                if any(a <= m.start() and m.end() <= b for a, b in allowed):
                    continue
                i = self._term_index.get(_fold(m.group(0)))  # the text is normalised already
                if i is not None and i not in seen:
                    seen.add(i)
                    hits.append({"rule": "term", "term": self.policy.terms.block[i].term})
        return hits

    def decide(self, scores: Mapping[str, float], hits: Sequence[Mapping[str, Any]], tenant: str) -> Decision:
        """The decision for one ad from its calibrated ``scores`` (label -> probability), its rule
        ``hits`` (``rule_hits``) and its ``tenant``: a pure function, so a logged decision replays.

        Raises:
            KeyError: a hit naming a term the policy does not block (a hit from another policy).
        """
        p = self.policy
        over = p.tenants.get(tenant)
        first = p.actions[0]
        reasons: list[dict] = []
        cat_sev: dict[str, str] = {}
        by_label = self._rules.get(tenant) or self._rules[None]
        for label, score in scores.items():
            rules = by_label.get(label) or _NO_RULES
            band = next((b for b in rules.actions if b.contains(score)), None)
            if band is not None and band.action != first:
                reasons.append(
                    {
                        "rule": "score",
                        "category": label,
                        "score": score,
                        "band": [band.lo, band.hi],
                        "action": band.action,
                    }
                )
            sev = next((b for b in rules.severity if b.contains(score)), None)
            cat_sev[label] = sev.level if sev is not None else p.severity_levels[0]
        severities = list(cat_sev.values())
        for hit in hits:
            if hit["rule"] == "contact_blocklist" and p.contact_blocklist is not None:
                bl = p.contact_blocklist
                reasons.append({**hit, "action": bl.action, "category": bl.category})
                severities += [bl.severity] if bl.severity else []
            elif hit["rule"] == "term":
                t = p.terms.block[self._term_index[_term_key(hit["term"])]]
                reasons.append({**hit, "action": t.action, "category": t.category})
                severities += [t.severity] if t.severity else []
        # most severe first; among equals, the higher score first (a stable, replayable order)
        reasons.sort(key=lambda r: (-self._rank[r["action"]], -float(r.get("score", 2.0))))
        decided = reasons[0]["action"] if reasons else first
        observe = over.observe_only if over is not None and over.observe_only is not None else p.observe_only
        return Decision(
            action=first if observe else decided,
            observed_action=decided if observe else None,
            severity=max(severities, key=self._sev_rank.__getitem__, default=p.severity_levels[0]),
            category_severity=cat_sev,
            reasons=reasons,
            primary_category=reasons[0].get("category") if reasons else None,
            policy_version=p.version,
            tenant=tenant,
        )

    def evaluate(self, text: str, scores: Mapping[str, float], tenant: str = DEFAULT_TENANT) -> Decision:
        """``decide(scores, rule_hits(text), tenant)``."""
        return self.decide(scores, self.rule_hits(text), tenant)


def _fold(s: str) -> str:
    return " ".join(s.casefold().split())


def _term_key(term: str) -> str:
    """A term as it is matched: normalised like ad text, case-folded, spaces folded."""
    return _fold(normalize_text(term))


def _term_regex(terms: Sequence[str]) -> re.Pattern[str] | None:
    """One pattern matching any of ``terms`` (``_term_key`` forms) at word boundaries, longest first."""
    forms = sorted({_term_key(t) for t in terms if t.strip()}, key=len, reverse=True)
    if not forms:
        return None
    alts = "|".join(r"\s+".join(re.escape(w) for w in f.split(" ")) for f in forms)
    return re.compile(rf"(?<!\w)(?:{alts})(?!\w)")
