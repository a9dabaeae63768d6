"""Champion/challenger gate with tiny models: floors, golden sets, promotion, rejection, idempotence,
dry run, rollback (one lifecycle, four trainings), the lock, and feedback flowing into a retrain's
training data with gate-set duplicates excluded. The gate's rules alone: test_gate_rules.py."""

from __future__ import annotations

import json

import mlflow
import pytest
from filelock import FileLock

from model.registry import get_alias
from serve.feedback_store import FeedbackStore
from tests.conftest import DATA_DIR, REPO, new_mlflow_store
from training.config import load_config
from training.data import load_data
from training.retrain import (
    Outcome,
    lock_path,
    retrain,
    rollback,
)

TINY = REPO / "configs" / "tiny.yaml"
NAME = "risky-ads-tiny"


@pytest.fixture()
def workdir(tmp_path, monkeypatch, mlflow_store_template):
    """The CLI's default store (``mlflow.db`` in the working directory), already migrated."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    new_mlflow_store(tmp_path / "mlflow.db", mlflow_store_template)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return tmp_path


def _cfg(tmp_path, *sets):
    return load_config(
        TINY,
        [
            f"output_dir={tmp_path / 'out'}",
            f"data.path={DATA_DIR}",
            "baseline.enabled=false",
            "gate.min_macro_ap=0.0",
            "gate.ap_tolerance=0.15",
            "gate.max_recall_drop=1.0",
            "gate.max_ece=1.0",
            "gate.per_source_ap_tolerance=null",
            *sets,
        ],
    )


def _run_id(version: str) -> str:
    return mlflow.MlflowClient().get_model_version(NAME, version).run_id


def _decision(version: str) -> dict:
    run_id = _run_id(version)
    report = mlflow.artifacts.load_dict(f"runs:/{run_id}/gate/report.json")
    return mlflow.get_run(run_id).data.tags | {"report": report}


def _golden_and_feedback(workdir) -> tuple[str, str]:
    """A golden set (6 rows) and a feedback export (4 rows: two new texts, one repeating a test-split
    text, one repeating a golden text); returns their ``--set`` overrides."""
    golden = workdir / "golden.jsonl"
    rows = [
        {"text": f"golden listing {i}, text me for details", "labels": ["scam"] if i % 2 else []}
        for i in range(6)
    ]
    golden.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(workdir)
    test_text = load_data(cfg.data, cfg.label_schema, cfg.seed).test.texts[0]
    fb = workdir / "feedback.jsonl"
    feedback = [
        ("brand new text one, call 555 0100", ["scam"]),
        ("another fresh listing for review", []),
        (test_text + " ", ["adult_services"]),
        (rows[1]["text"] + "  ", ["scam"]),
    ]
    fb.write_text(
        "".join(json.dumps({"text": t, "labels": ls, "source": "feedback"}) + "\n" for t, ls in feedback)
    )
    return f"gate.golden_files=[{golden}]", f"data.extra_train_files=[{fb}]"


@pytest.mark.slow
def test_gate_lifecycle(workdir):
    # 1. first model: no champion -> absolute floors; a weak (2-step) model passes the 0.0 floor. A golden
    # set joins the gate set, and feedback rows that repeat a gate text (test split or golden) are
    # excluded from its training data and counted
    weak = _cfg(workdir, "train.max_steps=2", *_golden_and_feedback(workdir))
    res = retrain(weak)
    assert res.outcome is Outcome.PROMOTED and res.decision.champion_version is None
    assert get_alias(NAME, "champion") == "1" and get_alias(NAME, "previous") is None
    assert "first-model floor" in res.table  # the CLI prints it
    assert "golden:golden" in {r.slice for r in res.decision.rows}
    report = mlflow.artifacts.load_dict(f"runs:/{_run_id('1')}/data_report.json")
    assert report["extra_train"] == {"rows": 4, "excluded_gate_duplicates": 2, "kept": 2, "repeats": 1}
    assert report["rows"]["train"] == 240 + 2

    # 2. same data and config again: nothing to do
    assert retrain(weak).outcome is Outcome.UNCHANGED

    # 3. a properly trained challenger beats it on the gate set -> promoted, previous = old champion
    res = retrain(_cfg(workdir, "train.epochs=3"))
    dec = res.decision
    assert res.outcome is Outcome.PROMOTED, dec.reason
    better = {(r.label, r.metric): r for r in dec.rows if r.slice == "all"}
    assert better[("macro", "ap")].challenger > better[("macro", "ap")].champion
    assert (get_alias(NAME, "champion"), get_alias(NAME, "previous")) == ("2", "1")
    assert _decision("2")["adrisk.gate.decision"] == "promoted"

    # 4. trained on shuffled labels -> rejected, aliases untouched, decision recorded on its run
    res = retrain(_cfg(workdir, "train.epochs=3", "data.shuffle_train_labels=true"))
    dec = res.decision
    assert res.outcome is Outcome.REJECTED and not dec.promoted
    assert any(r.metric == "ap" and r.passed is False for r in dec.failures())
    assert (get_alias(NAME, "champion"), get_alias(NAME, "previous")) == ("2", "1")
    d = _decision("3")
    assert d["adrisk.gate.decision"] == "rejected" and d["report"]["promoted"] is False
    assert {"champion", "challenger", "delta", "rule", "passed"} <= set(d["report"]["rows"][0])

    # 5. dry run of a passing challenger moves nothing
    res = retrain(_cfg(workdir, "train.epochs=3", "seed=11"), dry_run=True)
    dec = res.decision
    assert res.outcome is Outcome.WOULD_PROMOTE and not dec.promoted
    assert get_alias(NAME, "champion") == "2"

    # 6. rollback swaps champion and previous
    assert rollback(NAME) == ("1", "2")
    assert (get_alias(NAME, "champion"), get_alias(NAME, "previous")) == ("1", "2")


def test_concurrent_retrain_refuses_while_locked(workdir):
    from model.registry import configure_tracking

    configure_tracking()
    cfg = _cfg(workdir)
    with FileLock(str(lock_path(cfg))):  # another process's retrain holds the lock
        res = retrain(cfg, wait_seconds=0.2)
    assert res.outcome is Outcome.BUSY and res.decision is None
    assert get_alias(NAME, "champion") is None  # nothing trained or moved


def test_feedback_export_is_training_data_without_gate_duplicates(workdir):
    """The store's export is a training file (source ``feedback``); rows repeating a validation or test
    text are excluded from the training split and counted (a retrain passes its golden texts too:
    ``test_gate_lifecycle``)."""
    store = FeedbackStore(f"sqlite:///{workdir / 'fb.db'}")
    cfg0 = _cfg(workdir)
    dup = load_data(cfg0.data, cfg0.label_schema, cfg0.seed).test.texts[0]
    store.add("brand new text one, call 555 0100", ["scam"], reviewer="mod-1")
    store.add("another fresh listing for review", [], reviewer="mod-2")
    store.add(dup + " ", ["adult_services"], reviewer="mod-1")  # repeats a gate-set text
    out = workdir / "feedback.jsonl"
    assert store.export(out) == 3
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["source"] for r in rows} == {"feedback"} and rows[0]["labels"] == ["scam"]

    cfg = _cfg(workdir, f"data.extra_train_files=[{out}]")
    bundle = load_data(cfg.data, cfg.label_schema, cfg.seed)
    assert bundle.report["extra_train"] == {"rows": 3, "excluded_gate_duplicates": 1, "kept": 2, "repeats": 1}
    assert len(bundle.train) == 240 + 2
    assert "brand new text one, call 555 0100" in bundle.train.texts and dup + " " not in bundle.train.texts

    # data.extra_train_repeats: each kept feedback row is trained on that many times, the excluded one never
    cfg5 = _cfg(workdir, f"data.extra_train_files=[{out}]", "data.extra_train_repeats=5")
    heavy = load_data(cfg5.data, cfg5.label_schema, cfg5.seed)
    assert heavy.report["extra_train"] == {"rows": 3, "excluded_gate_duplicates": 1, "kept": 2, "repeats": 5}
    assert len(heavy.train) == 240 + 2 * 5
    assert (
        heavy.train.texts.count("brand new text one, call 555 0100") == 5
        and dup + " " not in heavy.train.texts
    )
    i = [k for k, t in enumerate(heavy.train.texts) if t == "another fresh listing for review"]
    assert len(i) == 5 and not heavy.train.targets[i].any()  # the labels travel with every copy
