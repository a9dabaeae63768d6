"""The identity-term audit (training/identity_audit.py) and its term list, with fake scoring functions."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from training.identity_audit import (
    CATEGORIES,
    MAX_FLAG_EXCESS,
    MAX_TERM_GAP,
    MIN_SUBGROUP_ROWS,
    SLOT,
    TEMPLATES_PER_CATEGORY,
    benign_templates,
    run_identity_audit,
    subgroup_metrics,
    template_metrics,
)
from training.identity_terms import GROUPS, NEUTRAL_FILLERS, TERMS, TERMS_VERSION, mentions, mitigation_terms

LABELS = ("adult_services", "trafficking_indicators", "scam")
THRESHOLDS = (0.79, 0.5, 0.5)
# Words that carry the trafficking label's real signals (youth, movement, control) or the offer itself:
# the identity list must never contain them, or the audit would punish a model for learning the label.
TRAFFICKING_SIGNALS = (
    "young", "teen", "fresh", "new", "girl", "petite", "barely", "travel", "traveling", "visiting",
    "arrived", "town", "daddy", "management", "exotic",
)  # fmt: skip


def keyed_on(word: str | None, base: float = 0.3, lift: float = 0.6):
    """A fake model: adult_services ``base`` for every text, ``base + lift`` when ``word`` is named."""
    pat = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE) if word else None

    def score(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(LABELS)))
        out[:, 0] = [base + (lift if pat and pat.search(t) else 0.0) for t in texts]
        out[:, 1:] = 0.05
        return out

    return score


def test_audit_flags_a_model_that_keys_on_one_identity_term():
    res = run_identity_audit(LABELS, THRESHOLDS, keyed_on("Korean"), templates_per_category=3)
    assert res.failing == ["korean"] and not res.passed
    assert res.metrics["term.korean.gap"] == pytest.approx(0.6)
    assert res.metrics["term.korean.flag_rate"] == 1.0 and res.metrics["filler.flag_rate"] == 0.0
    assert res.metrics["term.korean.adult_services.shift"] == pytest.approx(0.6)
    assert res.metrics["term.asian.gap"] == pytest.approx(0.0)
    assert res.metrics["gap.max"] == pytest.approx(0.6)
    assert "korean" in res.notes[0] and " !" in next(
        r for r in res.table.splitlines() if r.startswith("Korean")
    )


def test_audit_passes_a_model_that_ignores_identity_terms():
    res = run_identity_audit(
        LABELS, THRESHOLDS, keyed_on("massage", base=0.2, lift=0.7), templates_per_category=3
    )
    assert res.failing == [] and res.passed and res.metrics["passed"] == 1.0
    assert res.metrics["gap.max"] == pytest.approx(0.0)
    assert res.metrics["filler.flag_rate"] > 0  # the offer is flagged, for every word alike
    assert res.metrics["flag_rate_excess.max"] == pytest.approx(0.0)


def test_a_small_lift_that_crosses_the_threshold_fails_on_flag_excess_not_on_gap():
    res = run_identity_audit(
        LABELS, THRESHOLDS, keyed_on("Thai", base=0.75, lift=0.05), templates_per_category=2
    )
    assert res.metrics["term.thai.gap"] < MAX_TERM_GAP
    assert res.metrics["term.thai.flag_excess"] > MAX_FLAG_EXCESS and res.failing == ["thai"]


def test_gap_is_measured_against_the_mean_of_the_fillers():
    filler = NEUTRAL_FILLERS[0]
    m = template_metrics(keyed_on(filler, base=0.2, lift=0.4), LABELS, THRESHOLDS)
    # every identity term sits 0.4 / len(fillers) below the filler side's mean
    assert m["term.asian.adult_services.shift"] == pytest.approx(-0.4 / len(NEUTRAL_FILLERS))
    assert m["filler.adult_services.mean_prob"] == pytest.approx(0.2 + 0.4 / len(NEUTRAL_FILLERS))


def test_non_flaggable_labels_do_not_count():
    def score(texts):
        out = np.full((len(texts), 3), 0.1)
        out[:, 2] = [0.9 if "Korean" in t else 0.1 for t in texts]
        return out

    m = template_metrics(score, LABELS, THRESHOLDS, flaggable=[True, True, False])
    assert m["term.korean.gap"] == 0.0 and m["term.korean.flag_rate"] == 0.0
    assert m["term.korean.scam.gap"] == pytest.approx(0.8)  # still reported per label


def test_wrong_score_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        template_metrics(lambda t: np.zeros((len(t), 2)), LABELS, THRESHOLDS)


def test_templates_are_benign_offers_with_one_slot_in_every_category():
    tpl = benign_templates()
    assert len(tpl) == len(CATEGORIES) * TEMPLATES_PER_CATEGORY
    assert all(t.text.count(SLOT) == 1 for t in tpl) and len({t.text for t in tpl}) == len(tpl)
    assert {t.category for t in benign_templates(2)} == set(CATEGORIES)
    assert tpl[0].fill("experienced")[0].isupper() or not tpl[0].text.startswith(SLOT)
    with pytest.raises(ValueError):
        benign_templates(0)


def test_term_list_is_well_formed_and_leaves_out_the_trafficking_signals():
    keys = [t.key for t in TERMS]
    assert len(keys) == len(set(keys)) and all(re.fullmatch(r"[a-z0-9_]+", k) for k in keys)
    assert {t.group for t in TERMS} == set(GROUPS)
    assert any(t.held_out for t in TERMS) and len(mitigation_terms()) < len(TERMS)
    forms = {f for t in TERMS for f in t.forms} | set(NEUTRAL_FILLERS)
    assert not forms & set(TRAFFICKING_SIGNALS)
    assert all(mentions([t.text], t) == [True] for t in TERMS)


def test_mentions_match_whole_words_any_case_and_hyphen_or_space():
    by = {t.key: t for t in TERMS}
    texts = ["UPSCALE LATINA", "latinas", "african-american owned", "Spanish speaking nanny", "caucasian"]
    assert mentions(texts, by["latina"]) == [True, False, False, False, False]
    assert mentions(texts, by["african_american"]) == [False, False, True, False, False]
    assert mentions(texts, by["spanish_speaking"]) == [False, False, False, True, False]
    assert mentions(texts, by["asian"]) == [False] * 5


def _subgroup_data(n_each: int):
    """Subgroup rows name 'Korean'; its negatives score like positives (false flags)."""
    texts, y, p = [], [], []
    for i in range(n_each):
        texts += ["Korean bakery", "Korean escort", "plain bakery", "plain escort"]
        y += [0, 1, 0, 1]
        p += [0.8 + i * 1e-4, 0.9 + i * 1e-4, 0.1 + i * 1e-4, 0.7 - i * 1e-4]
    y = np.array(y, dtype=float)[:, None].repeat(3, axis=1)
    return texts, y, np.array(p)[:, None].repeat(3, axis=1)


def test_subgroup_metrics_catch_false_flags_of_a_subgroup():
    texts, y, p = _subgroup_data(MIN_SUBGROUP_ROWS)
    m = subgroup_metrics(texts, y, p, LABELS)
    k = "subgroup.korean.adult_services"
    assert m["subgroup.korean.n"] == 2 * MIN_SUBGROUP_ROWS
    assert m[f"{k}.auc"] == 1.0  # inside the subgroup the ranking is right
    assert m[f"{k}.bpsn_auc"] < 0.5  # ...but its negatives outrank background positives
    assert m[f"{k}.bnsp_auc"] == 1.0
    assert not any(key.startswith("subgroup.asian") for key in m)


def test_subgroup_metrics_need_enough_rows_per_class():
    texts, y, p = _subgroup_data(MIN_SUBGROUP_ROWS - 1)
    m = subgroup_metrics(texts, y, p, LABELS)
    assert "subgroup.korean.n" in m and not any(k.endswith("auc") for k in m)
    with pytest.raises(ValueError, match="differ in length"):
        subgroup_metrics(texts[:-1], y, p, LABELS)


def test_audit_with_rows_adds_subgroups_and_a_table_section():
    texts, y, p = _subgroup_data(MIN_SUBGROUP_ROWS)
    res = run_identity_audit(LABELS, THRESHOLDS, keyed_on(None), texts, y, p, templates_per_category=1)
    assert "identity.subgroup.korean.adult_services.bpsn_auc" in res.prefixed()
    assert "Borkan" in res.table and all(math.isfinite(v) for v in res.metrics.values())


def test_every_train_run_logs_the_identity_audit(trained_tiny_model):
    import json

    import mlflow

    m = trained_tiny_model
    mlflow.set_tracking_uri(m.tracking_uri)
    run = mlflow.get_run(m.run_id)
    for key in (
        "gap.mean",
        "gap.max",
        "flag_rate_excess.max",
        "held_out.gap.max",
        "term.asian.gap",
        "passed",
        "seconds",
    ):
        assert f"identity.{key}" in run.data.metrics, key
    assert run.data.tags["adrisk.identity.terms_version"] == TERMS_VERSION
    client = mlflow.MlflowClient()
    assert {"identity_audit.json", "identity_audit_table.txt"} <= {
        a.path for a in client.list_artifacts(m.run_id)
    }
    with open(client.download_artifacts(m.run_id, "identity_audit.json")) as f:
        report = json.load(f)
    assert report["terms_version"] == TERMS_VERSION and "identity.gap.max" in report["metrics"]
    per_label = "identity.term.asian.adult_services.gap"  # in the JSON and the table, not in MLflow's metrics
    assert per_label in report["metrics"] and per_label not in run.data.metrics
    assert json.loads((m.artifact_dir / "adrisk.json").read_text())["identity_mask"] is None  # not masked


def test_evaluate_prints_and_reports_the_identity_audit(tmp_path, tiny_artifact, capsys):
    import json

    from adrisk.cli import main
    from tests.conftest import TINY_CONFIG

    rows = [{"text": f"Korean spa {i}", "labels": ["adult_services"] if i % 2 else []} for i in range(12)]
    data, rep = tmp_path / "d.jsonl", tmp_path / "r.json"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_artifact),
                "--data",
                str(data),
                "--report",
                str(rep),
                "--config",
                str(TINY_CONFIG),
            ]
        )
        == 0
    )
    assert f"identity audit ({TERMS_VERSION}" in capsys.readouterr().out
    report = json.loads(rep.read_text())
    assert report["identity_audit"]["terms_version"] == TERMS_VERSION
    assert "identity.gap.max" in report["metrics"] and "identity.subgroup.korean.n" in report["metrics"]
