"""``model.uri.resolve_model`` reliability (issue 9): the download cache never answers with a model the
registry no longer holds (kind 1), blank URIs are refused (kind 6), a missing SQLite registry is
named and not created, not-found errors name the registry without secrets, loading never writes into
the registry it reads, and cached copies keep the umask's mode (kinds 8 and 5).

One SQLite registry per module (creating one runs MLflow's migrations: ~10 s on a 2-core machine);
each test registers under its own model name, so tests stay independent in any order.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from model.artifact import WEIGHTS_FILE, ArtifactError, load_meta, save_meta, sha256_file
from model.uri import ModelNotFound, redact_uri, resolve_model
from tests.conftest import new_mlflow_store


@pytest.fixture(scope="module")
def registry(tmp_path_factory, mlflow_store_template):
    """(tracking URI, MlflowClient, artifact root) of a registry shared by this module's tests."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = new_mlflow_store(root / "mlflow.db", mlflow_store_template)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("issue-9", artifact_location=str(root / "artifacts"))
    return uri, client, exp


@pytest.fixture()
def use_registry(registry, monkeypatch):
    uri, client, exp = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return registry


def _register(registry, name: str, artifact_dir: Path):
    """Log ``artifact_dir`` as a run's ``model`` artifacts and register it as the next version of ``name``."""
    from mlflow.exceptions import MlflowException

    _, client, exp = registry
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(artifact_dir), "model")
    client.set_terminated(run.info.run_id)
    with contextlib.suppress(MlflowException):
        client.create_registered_model(name)
    return client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)


def _other_weights(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with different weights (every tensor + 1), its sha256 recorded."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / WEIGHTS_FILE))
    save_file(
        {k: (v + 1 if v.is_floating_point() else v) for k, v in tensors.items()},
        str(dst / WEIGHTS_FILE),
        metadata={"format": "pt"},
    )
    save_meta(dst, load_meta(dst))
    return dst


def test_cache_never_serves_a_version_the_registry_no_longer_holds(
    use_registry, tiny_artifact, tmp_path, monkeypatch
):
    import mlflow

    _register(use_registry, "cache-swap", tiny_artifact)
    first = resolve_model("models:/cache-swap/1")
    assert sha256_file(first.directory / WEIGHTS_FILE) == sha256_file(tiny_artifact / WEIGHTS_FILE)

    calls = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: calls.append(kw) or real(**kw))
    assert resolve_model("models:/cache-swap/1").directory == first.directory  # unchanged: a cache hit
    assert calls == []

    # The registry forgets version 1 and a different model becomes version 1 under the same name.
    use_registry[1].delete_registered_model("cache-swap")
    other = _other_weights(tiny_artifact, tmp_path / "other")
    assert str(_register(use_registry, "cache-swap", other).version) == "1"
    second = resolve_model("models:/cache-swap/1")
    assert sha256_file(second.directory / WEIGHTS_FILE) == sha256_file(other / WEIGHTS_FILE)
    assert sha256_file(second.directory / WEIGHTS_FILE) != sha256_file(tiny_artifact / WEIGHTS_FILE)
    assert len(calls) == 1


def test_cache_hit_with_replaced_weights_is_downloaded_again(use_registry, tiny_artifact):
    _register(use_registry, "cache-tamper", tiny_artifact)
    ref = resolve_model("models:/cache-tamper/1")
    (ref.directory / WEIGHTS_FILE).write_bytes(b"not the weights")
    again = resolve_model("models:/cache-tamper/1")
    assert sha256_file(again.directory / WEIGHTS_FILE) == sha256_file(tiny_artifact / WEIGHTS_FILE)


@pytest.mark.parametrize("uri", ["", "   ", "\t\n"])
def test_blank_uri_is_refused_even_beside_a_model(uri, tiny_artifact, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_artifact, tmp_path / "somewhere" / "model")
    monkeypatch.chdir(tmp_path)  # a blank URI used to search the working directory and load what it found
    with pytest.raises(ArtifactError, match="empty"):
        resolve_model(uri)


def test_missing_sqlite_registry_is_named_and_not_created(tmp_path, monkeypatch):
    db = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(ModelNotFound) as e:
        resolve_model("models:/risky-ads@champion")
    assert str(db) in str(e.value)
    assert not db.exists() and not db.parent.exists()


def test_predict_cli_without_registry_creates_no_mlflow_db(tmp_path, monkeypatch, capsys):
    from adrisk.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["predict", "--model", "models:/risky-ads/1", "a text"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "mlflow.db") in err
    assert "a text" not in err
    assert list(tmp_path.iterdir()) == []


def test_not_found_names_the_registry(use_registry):
    with pytest.raises(ModelNotFound) as e:
        resolve_model("models:/no-such-model/1")
    assert use_registry[0].removeprefix("sqlite:///") in str(e.value)


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("postgresql://adrisk:s3cret@db.internal:5432/mlflow", "postgresql://***@db.internal:5432/mlflow"),
        ("https://token123@mlflow.example/api?access_token=s3cret", "https://***@mlflow.example/api"),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("databricks", "databricks"),
    ],
)
def test_registry_uri_is_shown_without_secrets(uri, shown):
    assert redact_uri(uri) == shown


def _snapshot(root: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    } | {".": (True, 0, root.stat().st_mtime_ns)}


def test_loading_from_registry_never_writes_into_it(use_registry, tiny_artifact):
    from model.predictor import Predictor

    mv = _register(use_registry, "read-only", tiny_artifact)
    source = Path(mv.source)
    run_root = source.parents[1]  # <artifacts>/<run_id>: everything the version's run holds
    before = _snapshot(run_root)
    modes = {p: p.stat().st_mode for p in [run_root, *run_root.rglob("*")]}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        ref = resolve_model("models:/read-only/1")
        Predictor.load(ref.directory).predict(["two bedroom flat"])
    finally:
        for p, m in modes.items():
            p.chmod(stat.S_IMODE(m))
    assert _snapshot(run_root) == before
    assert not ref.directory.is_relative_to(run_root)


def test_cached_copy_keeps_umask_mode(use_registry, tiny_artifact, tmp_path):
    import shutil

    src = tmp_path / "private"
    shutil.copytree(tiny_artifact, src)
    for p in src.iterdir():
        p.chmod(0o600)  # as mkstemp-written files used to be
    _register(use_registry, "modes", src)
    old = os.umask(0o022)
    try:
        ref = resolve_model("models:/modes/1")
    finally:
        os.umask(old)
    entry = ref.directory
    while entry.parent != Path(os.environ["ADRISK_CACHE_DIR"]) and entry.parent != entry:
        entry = entry.parent
    for p in [entry, *entry.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044 and (not p.is_dir() or mode & 0o011 == 0o011), (p, oct(mode))
