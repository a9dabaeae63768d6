"""``adrisk serve --follow-alias``: a new registered version swaps in; a broken one is reported and
the previous version keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from model.predictor import Predictor
from model.registry import configure_tracking, log_pyfunc_model, set_alias
from tests.conftest import build_tiny_artifact, new_mlflow_store
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
