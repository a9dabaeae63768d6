"""The policy model (signals/policy.py): validation with one clear line per fault, bands, tenants,
observe-only, the contact blocklist (obfuscated forms, keyed digests) and term lists, replay."""

from __future__ import annotations

import json

import pytest
import yaml

from signals.contacts import ContactExtractor
from signals.policy import (
    PolicyEngine,
    PolicyError,
    default_policy,
    key_fingerprint,
    load_policy,
    parse_policy,
)

LABELS = ("adult_services", "trafficking_indicators", "scam")
KEY = "test-contact-key"


def base(**extra) -> dict:
    doc = {
        "version": "p1",
        "categories": {
            "adult_services": {
                "actions": [
                    {"from": 0.5, "to": 0.9, "action": "review"},
                    {"from": 0.9, "to": 1.0, "action": "remove"},
                ],
                "severity": [
                    {"from": 0.3, "to": 0.7, "level": "low"},
                    {"from": 0.7, "to": 0.95, "level": "medium"},
                    {"from": 0.95, "to": 1.0, "level": "high"},
                ],
            },
            "trafficking_indicators": {"actions": [{"from": 0.4, "to": 1.0, "action": "review"}]},
            "scam": {"actions": [{"from": 0.8, "to": 1.0, "action": "remove"}]},
        },
    }
    doc.update(extra)
    return doc


def scores(a=0.0, t=0.0, s=0.0) -> dict[str, float]:
    return {"adult_services": a, "trafficking_indicators": t, "scam": s}


def one_line_error(fn, *args) -> str:
    with pytest.raises(PolicyError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300
    return msg


def test_a_threshold_outside_0_1_is_refused_in_one_line(tmp_path):
    doc = base()
    doc["categories"]["scam"]["actions"][0]["to"] = 1.5
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    msg = one_line_error(load_policy, path)
    assert str(path) in msg and "categories.scam.actions[0].to" in msg and "less than or equal to 1" in msg


def test_overlapping_severity_bands_are_refused_in_one_line():
    doc = base()
    doc["categories"]["adult_services"]["severity"][1]["from"] = 0.6  # [0.3, 0.7) and [0.6, 0.95)
    msg = one_line_error(parse_policy, doc)
    assert "categories.adult_services" in msg and "severity bands overlap" in msg and "[0.6, 0.95)" in msg


def test_an_unknown_category_is_refused_in_one_line():
    doc = base()
    doc["categories"]["scams"] = doc["categories"].pop("scam")
    msg = one_line_error(parse_policy(doc).check_context, LABELS)
    assert msg.startswith("categories.scams: not a label of the model") and "scam" in msg
    # and a label left without rules is named too (add it with {} to never act on it)
    doc = base()
    del doc["categories"]["scam"]
    assert "'scam'" in one_line_error(parse_policy(doc).check_context, LABELS)


def test_an_unknown_tenant_is_refused_in_one_line():
    doc = base(tenants={"kids-markt": {"observe_only": True}})
    pol = parse_policy(doc)
    pol.check_context(LABELS)  # no key context: not checked
    msg = one_line_error(pol.check_context, LABELS, {"default", "kids-market"})
    assert msg.startswith("tenants.kids-markt: unknown tenant") and "kids-market" in msg


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(actions=["allow", "allow"]), "unique"),
        (lambda d: d["categories"]["scam"]["actions"][0].update(action="delete"), "'delete' is not one of"),
        (lambda d: d.update(surprise=1), "surprise: unknown field"),
        (lambda d: d.pop("version"), "version: required field missing"),
        (lambda d: d["categories"]["scam"]["actions"][0].update({"from": 0.9, "to": 0.8}), "below 'to'"),
        (lambda d: d.update(contact_blocklist={"action": "remove", "hashes": ["+14155550123"]}), "hex"),
        (lambda d: d.update(statement={"categories": {"scam": {"category": "SCAM"}}}), "STATEMENT_CATEGORY"),
    ],
    ids=[
        "dup-actions",
        "unknown-action",
        "unknown-field",
        "no-version",
        "empty-band",
        "clear-contact",
        "dsa-enum",
    ],
)
def test_other_bad_policies_are_refused_in_one_line(change, words):
    doc = base()
    change(doc)
    assert words in one_line_error(parse_policy, doc)


def test_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: [unclosed\n", encoding="utf-8")
    assert "not valid YAML (line" in one_line_error(load_policy, path)
    assert "cannot read" in one_line_error(load_policy, tmp_path / "missing.yaml")


def test_bands_actions_and_severity():
    eng = PolicyEngine(parse_policy(base()))
    d = eng.evaluate("an ad", scores(a=0.5))  # the lower bound is in the band
    assert (d.action, d.severity, d.category_severity["adult_services"]) == ("review", "low", "low")
    d = eng.evaluate("an ad", scores(a=0.4999))
    assert (d.action, d.reasons) == ("allow", [])
    d = eng.evaluate("an ad", scores(a=1.0, s=0.85))  # 1.0 is in the band ending at 1
    assert d.action == "remove" and d.severity == "high"
    # every category over its band is a reason, most severe (then highest score) first
    assert [(r["category"], r["action"]) for r in d.reasons] == [
        ("adult_services", "remove"),
        ("scam", "remove"),
    ]
    assert d.primary_category == "adult_services" and d.policy_version == "p1"


def test_tenant_overrides_and_observe_only():
    doc = base(
        observe_only=True,
        tenants={
            "kids-market": {
                "observe_only": False,
                "categories": {"scam": {"actions": [{"from": 0.3, "to": 1.0, "action": "remove"}]}},
            }
        },
    )
    eng = PolicyEngine(parse_policy(doc))
    d = eng.evaluate("an ad", scores(s=0.5))
    # default tenant, observe-only: 0.5 is below its scam band
    assert (d.action, d.observed_action) == ("allow", "allow")
    d = eng.evaluate("an ad", scores(s=0.9))
    assert (d.action, d.observed_action) == ("allow", "remove")  # observe-only: decided, not enacted
    d = eng.evaluate("an ad", scores(s=0.5), tenant="kids-market")
    assert (d.action, d.observed_action, d.tenant) == ("remove", None, "kids-market")


def test_the_contact_blocklist_matches_obfuscated_forms_and_holds_no_contact_in_clear():
    digests = [c.value for c in ContactExtractor("US", hash_key=KEY).extract("call 949-667-2201")]
    doc = base(
        contact_blocklist={
            "action": "remove",
            "severity": "high",
            "key_fingerprint": key_fingerprint(KEY),
            "hashes": digests,
        }
    )
    pol = parse_policy(doc)
    assert "949" not in pol.canonical_json() and "2201" not in pol.canonical_json()
    eng = PolicyEngine(pol, hash_key=KEY)
    d = eng.evaluate("new in town, text 9four9 six6seven 22O1", scores())
    assert d.action == "remove" and d.severity == "high"
    assert d.reasons == [
        {"rule": "contact_blocklist", "contact_type": "phone", "action": "remove", "category": None}
    ]
    assert eng.evaluate("text 949 667 2202", scores()).action == "allow"
    assert "ADRISK_CONTACT_HASH_KEY" in one_line_error(PolicyEngine, pol)
    assert "another key" in one_line_error(PolicyEngine, pol, "some other key")


def test_terms_block_at_word_boundaries_and_allow_exempts_a_phrase():
    doc = base(
        terms={
            "block": [{"term": "No Cops", "action": "review"}, {"term": "escort", "action": "remove"}],
            "allow": ["ford escort"],
        }
    )
    eng = PolicyEngine(parse_policy(doc))
    assert [r["term"] for r in eng.evaluate("Ｎｏ   cops please", scores()).reasons] == ["No Cops"]
    assert eng.evaluate("selling my Ford Escort 1998", scores()).action == "allow"
    assert eng.evaluate("escorts wanted", scores()).action == "allow"  # word boundary: not the term
    assert eng.evaluate("ford escort, and an escort", scores()).action == "remove"


def test_decide_replays_evaluate_from_scores_and_hits():
    doc = base(terms={"block": [{"term": "no cops", "action": "review"}]}, observe_only=True)
    eng = PolicyEngine(parse_policy(doc))
    text, sc = "no cops, new girl", scores(a=0.93, t=0.41)
    hits = eng.rule_hits(text)
    stored = json.loads(json.dumps({"scores": sc, "hits": hits}))  # as the decision log keeps them
    again = PolicyEngine(parse_policy(json.loads(parse_policy(doc).canonical_json())))
    assert again.decide(stored["scores"], stored["hits"], "default") == eng.evaluate(text, sc)


def test_default_policy_is_the_models_thresholds():
    thresholds = {"adult_services": 0.7, "trafficking_indicators": 0.5, "scam": 0.6}
    pol = default_policy(LABELS, thresholds)
    pol.check_context(LABELS)
    eng = PolicyEngine(pol)
    for sc in (scores(a=0.7), scores(a=0.69), scores(t=0.5, s=0.2), scores(s=0.61), scores()):
        flagged = any(sc[n] >= thresholds[n] for n in LABELS)
        d = eng.evaluate("x", sc)
        assert d.action == ("review" if flagged else "allow") and d.severity == (
            "high" if flagged else "none"
        )
    assert (
        pol.version.startswith("model-thresholds:")
        and pol.version == default_policy(LABELS, thresholds).version
    )
    assert pol.version != default_policy(LABELS, {**thresholds, "scam": 0.61}).version
