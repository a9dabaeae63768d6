"""``adrisk serve --follow-alias``: a new registered version swaps in; a broken one is reported and
the previous version keeps serving."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from model.predictor import Predictor
from model.registry import configure_tracking, log_pyfunc_model, set_alias
from serve.state import ModelState, default_loader
from tests.conftest import build_tiny_artifact, cli_env, new_mlflow_store
from tests.serve.conftest import ServerProcess, wait_ready

NAME = "risky-ads-serve-test"
TEXTS = ["hot petite girls 24/7 incall", "2 bedroom apartment for rent"]


def _wait_for(cond, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _register(artifact: Path) -> str:
    with mlflow.start_run():
        return log_pyfunc_model(artifact, NAME).version


def _scores(base: str) -> tuple[str, np.ndarray]:
    body = httpx.post(f"{base}/v1/classify", json={"input": TEXTS}).json()
    return body["model"]["version"], np.array([list(r["category_scores"].values()) for r in body["results"]])


@pytest.fixture()
def restore_tracking():
    """configure_tracking sets process-global MLflow URIs: put them back for later tests."""
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


@pytest.mark.slow
def test_follow_alias_swaps_and_survives_bad_version(
    tmp_path, monkeypatch, tiny_artifact, restore_tracking, mlflow_store_template
):
    monkeypatch.chdir(tmp_path)
    tracking = new_mlflow_store(tmp_path / "mlflow.db", mlflow_store_template)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    configure_tracking(tracking)
    v1 = _register(tiny_artifact)
    set_alias(NAME, "champion", v1)

    srv = ServerProcess(
        ["--model", f"models:/{NAME}@champion", "--follow-alias", "0.5"],
        tmp_path / "server.log",
        env={"MLFLOW_TRACKING_URI": tracking},
        cwd=tmp_path,
    )
    try:
        wait_ready(srv.base, proc=srv.proc)
        info = httpx.get(f"{srv.base}/v1/model").json()
        assert (info["name"], info["version"], info["uri"]) == (NAME, "1", f"models:/{NAME}@champion")
        assert info["follow_alias_s"] == 0.5
        version, before = _scores(srv.base)
        assert version == "1"

        # a second, different model becomes champion: it is loaded and swapped in
        v2_dir = build_tiny_artifact(tmp_path / "v2", seed=1)
        v2 = _register(v2_dir)
        set_alias(NAME, "champion", v2)
        _wait_for(lambda: httpx.get(f"{srv.base}/v1/model").json()["version"] == "2", what="version 2")
        version, after = _scores(srv.base)
        assert version == "2"
        np.testing.assert_allclose(after, Predictor.load(v2_dir).predict_proba(TEXTS), atol=1e-4)
        assert not np.allclose(before, after, atol=1e-4)

        # a version whose weights fail their checksum: reported, version 2 keeps serving
        v3_dir = build_tiny_artifact(tmp_path / "v3", seed=2)
        v3 = _register(v3_dir)
        original = (v3_dir / "model.safetensors").read_bytes()
        stored = [
            p
            for p in tmp_path.rglob("model.safetensors")
            if v3_dir not in p.parents and p.read_bytes() == original
        ]
        assert stored, "the registry's copy of version 3 was not found"
        for p in stored:  # corrupt the registry's copy
            p.write_bytes(original[:-8] + b"corrupt!")
        set_alias(NAME, "champion", v3)
        info = _wait_for(
            lambda: (m := httpx.get(f"{srv.base}/v1/model").json())["load_error"] and m,
            what="load error for version 3",
        )
        assert info["version"] == "2" and info["load_error"]["version"] == "3"
        assert "ArtifactError" in info["load_error"]["error"] or "sha256" in info["load_error"]["error"]
        version, still = _scores(srv.base)
        assert version == "2"
        np.testing.assert_allclose(still, after, atol=1e-6)
        assert "adrisk_model_version 2.0" in httpx.get(f"{srv.base}/metrics").text
        assert "adrisk_model_load_failures_total 1.0" in httpx.get(f"{srv.base}/metrics").text
        assert "version 3" in srv.logs() and "failed" in srv.logs()
    finally:
        srv.stop()


def _register_in_subprocess(tracking: str, artifact: Path, cwd: Path) -> None:
    """Register ``artifact`` as ``champion`` from a fresh process, as ``adrisk train`` would (this
    process's MLflow caches the store it already opened, tables and all)."""
    code = (
        "import mlflow, sys\n"
        "from model.registry import configure_tracking, log_pyfunc_model, set_alias\n"
        "configure_tracking(sys.argv[1])\n"
        "with mlflow.start_run():\n"
        f"    mv = log_pyfunc_model(sys.argv[2], {NAME!r})\n"
        f"set_alias({NAME!r}, 'champion', mv.version)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, tracking, str(artifact)], env=cli_env(), cwd=cwd, check=True, timeout=300
    )


def _open_files(pid: int) -> set[str]:
    """Paths of the files process ``pid`` holds open (Linux ``/proc``)."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            out.add(os.readlink(fd))
    return out


def test_follower_reloads_when_alias_target_identity_changes(tmp_path, tiny_artifact, restore_tracking):
    """The registered model is deleted and another registered under the same name: version 1 again,
    other run, other weights. The follower must load it, not keep the old weights as "version 1"."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure_tracking(tracking)
    set_alias(NAME, "champion", _register(tiny_artifact))
    state = ModelState(
        f"models:/{NAME}@champion",
        default_loader(num_threads=1),
        follow_alias_s=0.2,
        download_dir=str(tmp_path / "dl"),
    )
    state.start()
    try:
        first = _wait_for(lambda: state.current, what="first load")
        MlflowClient().delete_registered_model(NAME)
        other = build_tiny_artifact(tmp_path / "other", seed=1)
        version = _register(other)
        assert version == first.ref.version == "1"
        set_alias(NAME, "champion", version)
        now = _wait_for(lambda: state.current is not first and state.current, what="the re-registered model")
        assert now.ref.version == "1" and now.ref.run_id != first.ref.run_id
        np.testing.assert_allclose(
            now.predictor.predict_proba(TEXTS), Predictor.load(other).predict_proba(TEXTS), atol=1e-5
        )
        assert state.load_error is None
    finally:
        state.stop()


@pytest.mark.slow
def test_follower_holds_no_registry_connection_between_polls(
    tmp_path, monkeypatch, tiny_artifact, restore_tracking
):
    """``mlflow.db`` is moved away while a follower polls, then a new registry is trained into at the
    old path: the follower must hold no connection to the moved file (SQLite's documented hazard:
    pooled connections keep the old inode), report the failing polls in ``/v1/model`` with one log
    line, and serve the new registry's model once it appears."""
    db = tmp_path / "mlflow.db"
    tracking = f"sqlite:///{db}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")  # the test's registry writes (only)
    configure_tracking(tracking)
    set_alias(NAME, "champion", _register(tiny_artifact))
    srv = ServerProcess(
        ["--model", f"models:/{NAME}@champion", "--follow-alias", "0.3"],
        tmp_path / "server.log",
        env={"MLFLOW_TRACKING_URI": tracking, "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": None},
        cwd=tmp_path,
    )
    try:
        wait_ready(srv.base, proc=srv.proc)
        first = httpx.get(f"{srv.base}/v1/model").json()
        assert first["poll_error"] is None
        _, before = _scores(srv.base)
        time.sleep(1.0)  # a few polls
        moved = tmp_path / "moved.db"
        db.rename(moved)
        failing = _wait_for(
            lambda: (
                ((m := httpx.get(f"{srv.base}/v1/model").json())["poll_error"] or {}).get("failures", 0) >= 3
                and m
            ),
            what="three failed polls reported",
        )
        assert failing["version"] == "1" and "ModelNotFound" in failing["poll_error"]["error"]
        held = [p for p in _open_files(srv.proc.pid) if p.startswith(str(moved))]
        assert not held, f"the follower still holds the moved registry open: {held}"
        assert srv.logs().count("polling models:/") == 1, "each failed poll was logged again"

        other = build_tiny_artifact(tmp_path / "other", seed=1)
        _register_in_subprocess(tracking, other, tmp_path)  # trained into a new registry at the old path
        _wait_for(
            lambda: not np.allclose(_scores(srv.base)[1], before, atol=1e-4), what="the new registry's model"
        )
        np.testing.assert_allclose(
            _scores(srv.base)[1], Predictor.load(other).predict_proba(TEXTS), atol=1e-4
        )
        assert httpx.get(f"{srv.base}/v1/model").json()["poll_error"] is None
        with sqlite3.connect(moved) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        srv.stop()
