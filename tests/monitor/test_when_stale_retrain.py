"""``adrisk retrain --when-stale``: a real (tiny) retrain records the verdict that asked for it on the
challenger's MLflow run."""

from __future__ import annotations

import json

import mlflow

from adrisk.cli import main
from monitor.verdict import EXIT_CODES, Status, Verdict, write_verdict
from tests.conftest import DATA_DIR, REPO


def test_retrain_verdict_is_recorded_on_the_challenger_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    verdict = Verdict(
        status=Status.RETRAIN,
        retrain=True,
        exit_code=EXIT_CODES[Status.RETRAIN],
        reasons=["scam: prevalence 0.1200 [0.1000, 0.1400] vs reference 0.0400"],
        model={"name": "risky-ads-tiny", "version": None},
    )
    write_verdict(tmp_path / "verdict.json", verdict)
    sets = [f"output_dir={tmp_path / 'out'}", f"data.path={DATA_DIR}", "baseline.enabled=false",
            "train.max_steps=2", "gate.min_macro_ap=0.0", "gate.max_ece=1.0"]  # fmt: skip
    args = ["retrain", "--config", str(REPO / "configs" / "tiny.yaml"), "--dry-run"]
    args += [x for s in sets for x in ("--set", s)] + ["--when-stale", str(tmp_path / "verdict.json")]
    rc = main(args)
    assert rc in (0, 3), capsys.readouterr().err  # would promote, or rejected: either way it trained
    mv = mlflow.MlflowClient().get_model_version("risky-ads-tiny", "1")
    run = mlflow.get_run(mv.run_id)
    assert run.data.tags["adrisk.monitor.status"] == "retrain"
    assert "prevalence" in run.data.tags["adrisk.monitor.reasons"]
    recorded = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/monitor/verdict.json")
    assert recorded["reasons"] == verdict.reasons and recorded["status"] == "retrain"
    assert "retrain" in capsys.readouterr().err
    json.dumps(recorded)  # the recorded verdict is plain JSON
