"""QA break-it tests for ``adrisk retrain``'s lock: two retrains of one registered model must
exclude each other whatever their output directories."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from model.registry import get_alias
from tests.conftest import DATA_DIR, REPO, new_mlflow_store
from training.config import load_config
from training.retrain import Outcome, lock_path, retrain

TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture()
def workdir(tmp_path, monkeypatch, mlflow_store_template):
    from model.registry import configure_tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    new_mlflow_store(tmp_path / "mlflow.db", mlflow_store_template)  # the CLI's default store, migrated
    configure_tracking()  # MLflow's tracking URI is process-global: never read another test's registry
    return tmp_path


def _cfg(out, *sets):
    return load_config(TINY, [f"output_dir={out}", f"data.path={DATA_DIR}", "baseline.enabled=false", *sets])


def test_lock_is_per_registry_and_model_not_per_output_dir(workdir, tmp_path_factory):
    a = _cfg(workdir / "team-a" / "run")
    b = _cfg(tmp_path_factory.mktemp("elsewhere") / "nightly" / "run")
    assert lock_path(a) == lock_path(b)  # used to be <output_dir>/../.retrain-<name>.lock: two locks
    assert lock_path(a) != lock_path(_cfg(workdir / "x", "model_name=other-model"))
    other_db = _cfg(workdir / "x", f"tracking.tracking_uri=sqlite:///{workdir / 'other' / 'mlflow.db'}")
    assert lock_path(a) != lock_path(other_db)


def test_retrain_with_another_output_dir_is_busy_while_one_runs(workdir, tmp_path_factory):
    # a second process holds the lock as a retrain writing to another output directory would
    holder = _cfg(workdir / "team-a" / "run")
    code = (
        f"import time; from filelock import FileLock; l = FileLock({str(lock_path(holder))!r}); l.acquire(); "
        "print('held', flush=True); time.sleep(30)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=workdir)
    try:
        assert p.stdout.readline().strip() == "held"
        other = _cfg(tmp_path_factory.mktemp("elsewhere") / "nightly" / "run")
        t0 = time.monotonic()
        res = retrain(other, wait_seconds=0.2)
        assert res.outcome is Outcome.BUSY and res.decision is None
        assert time.monotonic() - t0 < 10
        assert get_alias("risky-ads-tiny", "champion") is None
    finally:
        p.kill()
        p.wait()
