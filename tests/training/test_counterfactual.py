"""Identity-term mitigations (training/counterfactual.py), the identity gate rules and their config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.schema import LabelSchema
from training.config import ConfigError, GateConfig, IdentityConfig, load_config
from training.counterfactual import (
    INSERT_FRAMES,
    CounterfactualSwapper,
    benign_rows,
    cda_split,
    counterfactual_rows,
    identity_mask,
    prepare_bundle,
)
from training.data import DataBundle, Split
from training.gate import apply_gate, format_gate_table
from training.identity_terms import NEUTRAL_FILLERS, TERMS, mentions, mitigation_terms

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HELD_OUT = [t for t in TERMS if t.held_out]
POOL = {t.text.lower() for t in mitigation_terms()} | set(NEUTRAL_FILLERS)
LABELS = ("adult_services", "trafficking_indicators", "scam")
SCHEMA = LabelSchema(labels=LABELS)


def _split(name: str, texts: list[str], y: list[list[int]]) -> Split:
    frame = pd.DataFrame(
        {"text": texts, "source": [f"s{i % 2}" for i in range(len(texts))], "id": range(len(texts))}
    )
    return Split(name, frame, np.asarray(y, dtype=np.float32), fingerprint=f"fp-{name}", path=f"{name}.jsonl")


def _names_a_pool_word(text: str) -> bool:
    return CounterfactualSwapper().names(text)


def test_swap_replaces_every_occurrence_with_one_other_pool_word_keeping_case():
    sw = CounterfactualSwapper()
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = sw.swap("ASIAN massage, asian owned", rng)
        assert out is not None and "asian" not in out.lower()
        first, second = out.split(" massage, ")[0], out.split(", ")[1].rsplit(" owned", 1)[0]
        assert first == first.upper() and first.lower() == second.lower() and second.lower() in POOL
    assert sw.swap("2 bedroom apartment for rent", rng) is None
    assert sw.swap(f"{HELD_OUT[0].text} painter", rng) is None  # held-out terms stay for the audit


def test_cda_swaps_terms_in_rows_of_every_label_and_inserts_terms_into_benign_rows():
    texts = [
        "Latina escort incall",
        "Korean girls, new in town",
        "Wire cash now, Russian bank",
        "experienced painter",
    ]
    texts += [f"sofa for sale {i}" for i in range(40)]
    y = [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]] + [[0, 0, 0]] * 40
    benign = benign_rows(np.asarray(y), SCHEMA)
    assert benign.tolist() == [False, False, False] + [True] * 41
    cf = counterfactual_rows(texts, benign.tolist(), substitution=1.0, copies=1, insert_fraction=0.5, seed=3)
    for i in range(4):  # every label's rows (and the benign one naming a filler) are swapped in place
        assert cf.texts[i] != texts[i] and _names_a_pool_word(cf.texts[i])
    assert cf.texts[4:] == texts[4:]
    copies, inserted = cf.origin[:4].tolist(), cf.origin[4:].tolist()
    assert copies == [0, 1, 2, 3] and all(i >= 4 for i in inserted)  # insertions: benign rows naming none
    assert 5 <= cf.report["rows_inserted"] == len(inserted) <= 35
    for text, i in zip(cf.added[4:], inserted, strict=True):
        assert texts[i] in text and any(mentions([text], t)[0] for t in mitigation_terms())
    # seeded: the same call gives the same texts; another seed other ones
    again = counterfactual_rows(texts, benign.tolist(), 1.0, 1, 0.5, seed=3)
    assert (again.texts, again.added, again.origin.tolist()) == (cf.texts, cf.added, cf.origin.tolist())
    assert counterfactual_rows(texts, benign.tolist(), 1.0, 1, 0.5, seed=4).added != cf.added
    off = counterfactual_rows(texts, benign.tolist(), 0.0, 0, 0.0, seed=3)
    assert off.texts == texts and off.added == [] and len(INSERT_FRAMES) >= 2
    with pytest.raises(ValueError):
        counterfactual_rows(texts, benign.tolist(), 1.5, 0, 0.0, seed=3)


def test_cda_split_keeps_targets_and_columns_aligned():
    split = _split(
        "train",
        ["Asian massage 24/7", "black leather couch", "call me now"],
        [[1, 0, 0], [0, 0, 0], [0, 0, 1]],
    )
    ident = IdentityConfig(cda=True, cda_substitution=0.0, cda_copies=2, cda_insert_fraction=0.0)
    out, report = cda_split(split, ident, SCHEMA, seed=0)
    assert len(out) == len(out.targets) == 3 + 4 and report["rows_appended"] == 4
    assert out.texts[:3] == split.texts and out.fingerprint == split.fingerprint
    for i in range(3, 7):  # an appended copy carries its origin row's labels, source and id
        o = int(out.frame["id"].iloc[i])
        assert out.targets[i].tolist() == split.targets[o].tolist()
        assert out.frame["source"].iloc[i] == split.frame["source"].iloc[o]


def test_prepare_bundle_masks_every_split_and_returns_the_mask_for_the_artifact():
    cfg = load_config(CONFIGS / "tiny.yaml", ["identity.mask=true", 'identity.mask_placeholder="[MASK]"'])
    splits = [
        _split(
            n,
            [f"Upscale LATINA, african-american owned, {HELD_OUT[0].text} cook", "sofa"],
            [[1, 0, 0], [0, 0, 0]],
        )
        for n in ("train", "validation", "test")
    ]
    raw = DataBundle(*splits, report={})
    bundle, mask = prepare_bundle(cfg, raw)
    assert mask is not None and mask.placeholder == "[MASK]" and mask.terms_version
    for s in bundle.splits():
        assert s.texts[0] == f"Upscale [MASK], [MASK] owned, {HELD_OUT[0].text} cook" and s.texts[1] == "sofa"
    assert raw.test.texts[0].startswith("Upscale LATINA")  # the raw test rows stay for the audit's subgroups
    assert raw.report["identity"]["train_rows_masked"] == 1
    off = load_config(CONFIGS / "tiny.yaml")
    same, none = prepare_bundle(off, raw)
    assert same is raw and none is None and identity_mask(off.identity) is None


def test_identity_config_switches():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert (cfg.identity.cda, cfg.identity.mask, cfg.identity.audit) == (False, False, True)
    assert load_config(CONFIGS / "tiny.yaml", ["identity.cda=true"]).identity.cda
    assert load_config(CONFIGS / "tiny.yaml", ["identity.mask=true"]).identity.mask
    for bad in ("identity.cda_substitution=1.5", "identity.templates_per_category=0", "identity.erase=true"):
        with pytest.raises(ConfigError, match="identity"):
            load_config(CONFIGS / "tiny.yaml", [bad])
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(CONFIGS / "tiny.yaml", ["identity.cda=true", "identity.mask=true"])
    cfg = load_config(CONFIGS / "tiny.yaml", ["gate.identity_gap_tolerance=null"])
    assert cfg.gate.identity_gap_tolerance is None and cfg.gate.identity_flag_rate_tolerance == 0.02


def _audit(gap: dict[str, float], excess: dict[str, float]) -> dict[str, float]:
    """Synthetic identity-audit metrics as the gate reads them."""
    out = {"identity.filler.flag_rate": 0.1, "gate.macro.ap": 0.9}
    for t in gap:
        out |= {f"identity.term.{t}.gap": gap[t], f"identity.term.{t}.flag_excess": excess[t]}
    return out


def _identity_rows(chall, champ, g):
    return {(r.label, r.metric): r for r in apply_gate(chall, champ, (), g) if r.slice == "identity"}


def test_gate_rejects_a_challenger_worse_than_the_champion_per_term_beyond_tolerance():
    g = GateConfig(identity_gap_tolerance=0.03, identity_flag_rate_tolerance=0.02)
    champ = _audit({"asian": 0.05, "thai": 0.02}, {"asian": 0.10, "thai": 0.0})
    chall = _audit({"asian": 0.07, "thai": 0.09}, {"asian": 0.11, "thai": 0.05})
    rows = _identity_rows(chall, champ, g)
    assert rows[("asian", "gap")].passed and rows[("asian", "flag_excess")].passed  # within tolerance
    assert rows[("thai", "gap")].passed is False and rows[("thai", "flag_excess")].passed is False
    assert rows[("thai", "gap")].champion == 0.02 and rows[("thai", "gap")].challenger == 0.09
    assert "thai" in " ".join(
        f"{r.label}/{r.metric}" for r in apply_gate(chall, champ, (), g) if r.passed is False
    )
    table = format_gate_table(apply_gate(chall, champ, (), g))
    assert "thai" in table and "asian" not in table and "identity: 2 more rows pass" in table
    # a term the champion was never audited on: held to no gap and no excess
    rows = _identity_rows(_audit({"asian": 0.07}, {"asian": 0.01}), {"gate.macro.ap": 0.9}, g)
    assert rows[("asian", "gap")].passed is False and rows[("asian", "flag_excess")].passed is True
    assert rows[("asian", "gap")].champion is None


def test_gate_identity_rules_are_off_for_a_first_model_or_a_null_tolerance():
    chall = _audit({"asian": 0.5}, {"asian": 1.0})
    g = GateConfig(identity_gap_tolerance=None, identity_flag_rate_tolerance=0.02)
    assert not _identity_rows(chall, None, g)  # a first model: floors only
    rows = _identity_rows(chall, _audit({"asian": 0.0}, {"asian": 0.0}), g)
    assert [(k, r.passed) for k, r in rows.items()] == [(("asian", "flag_excess"), False)]
    assert not _identity_rows({"gate.macro.ap": 0.9}, _audit({"asian": 0.0}, {"asian": 0.0}), GateConfig())


def test_a_mask_trained_artifact_records_its_mask_and_serves_masked_texts(tmp_path, tiny_artifact):
    """The pipeline's save phase writes the mask ``prepare_bundle`` returned into ``adrisk.json``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from model.predictor import Predictor
    from training.pipeline import Calibrated, _save_model

    cfg = load_config(CONFIGS / "tiny.yaml", ["identity.mask=true", 'identity.mask_placeholder="[MASK]"'])
    splits = [
        _split(n, ["Thai massage", "sofa"], [[1, 0, 0], [0, 0, 0]]) for n in ("train", "validation", "test")
    ]
    _, mask = prepare_bundle(cfg, DataBundle(*splits, report={}))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_artifact))
    tok = AutoTokenizer.from_pretrained(str(tiny_artifact))
    cal = Calibrated(None, [1.0] * 3, [0.5] * 3, {}, {}, {})
    art = tmp_path / "model"
    _save_model(cfg, art, model, tok, "tiny", None, DataBundle(*splits), cal, {}, mask)
    p = Predictor.load(art)
    assert p.meta.identity_mask == mask and p.encoder.identity_mask == mask
    np.testing.assert_allclose(
        p.predict_proba(["Thai massage"]), p.predict_proba(["Korean massage"]), atol=1e-6
    )
