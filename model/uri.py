"""Resolve a model URI to a local artifact directory.

Accepted: a local artifact directory (holding ``adrisk.json``), a local MLflow model directory (its
``artifacts/`` holds one), or any URI MLflow resolves (``models:/name@alias``, ``models:/name/3``,
``runs:/<run_id>/model``). MLflow is imported only for the latter.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model.artifact import META_FILE, ArtifactError

logger = logging.getLogger(__name__)

PYFUNC_ARTIFACT_KEY = "adrisk_model"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class ModelRef:
    """Where a loaded model came from: ``name``/``version`` from the registry when known."""

    uri: str
    directory: Path
    name: str | None = None
    version: str | None = None
    run_id: str | None = None


def find_artifact_dir(root: Path) -> Path:
    """The directory under ``root`` (itself included) that holds ``adrisk.json``.

    Raises:
        ArtifactError: none, or more than one, found.
    """
    if (root / META_FILE).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(META_FILE))
    if len(found) != 1:
        raise ArtifactError(f"expected one adrisk model under {root}, found {len(found)}")
    return found[0]


def registry_version(uri: str) -> tuple[str, str, str | None] | None:
    """For ``models:/name@alias`` or ``models:/name/N``: (name, version, run_id) from the registry.

    Returns None for other URIs. Raises MlflowException when the name, alias or version is unknown.
    """
    m = _MODELS_URI.match(uri)
    if not m:
        return None
    from mlflow import MlflowClient

    client = MlflowClient()
    if m["alias"]:
        mv = client.get_model_version_by_alias(m["name"], m["alias"])
    else:
        mv = client.get_model_version(m["name"], m["version"])
    return m["name"], str(mv.version), mv.run_id


def cache_root() -> Path:
    """Where registry models are cached: ``ADRISK_CACHE_DIR``, else ``~/.cache/adrisk/models``."""
    return Path(os.environ.get("ADRISK_CACHE_DIR") or Path.home() / ".cache" / "adrisk" / "models")


def _cached_download(uri: str, download_uri: str, name: str | None, version: str | None,
                     run_id: str | None) -> ModelRef:
    """Download once per (tracking store, model version or run path) into the cache; reuse after.
    A cached copy whose weights fail their checksum is downloaded again."""
    import mlflow

    from model.artifact import load_meta, verify_weights

    store = hashlib.sha256(mlflow.get_registry_uri().encode()).hexdigest()[:12]
    key = f"{name}-v{version}" if version else re.sub(r"[^A-Za-z0-9._-]+", "_", download_uri)
    final = cache_root() / store / key
    if final.is_dir():
        try:
            directory = find_artifact_dir(final)
            verify_weights(directory, load_meta(directory))
            return ModelRef(uri=uri, directory=directory, name=name or load_meta(directory).name,
                            version=version, run_id=run_id)
        except ArtifactError:
            logger.warning("cached model %s is unusable; downloading again", final)
            shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=download_uri, dst_path=str(tmp))
        find_artifact_dir(tmp)  # fail before publishing a download that holds no model
        try:
            os.replace(tmp, final)  # atomic publish; a concurrent winner is fine too
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    directory = find_artifact_dir(final)
    if name is None:
        name = load_meta(directory).name
    logger.info("resolved %s to %s (version %s)", uri, directory, version)
    return ModelRef(uri=uri, directory=directory, name=name, version=version, run_id=run_id)


def resolve_model(uri: str, dst_dir: str | os.PathLike[str] | None = None) -> ModelRef:
    """Resolve ``uri`` to a local artifact directory, downloading from MLflow when needed.

    Args:
        uri: see module docstring. An alias is pinned to the version it points at now.
        dst_dir: where to download to (default: the shared cache, see ``cache_root``; one download
            per model version, reused by later calls).

    Raises:
        ArtifactError: the location holds no adrisk model.
        mlflow.exceptions.MlflowException: MLflow cannot resolve the URI.
    """
    local = Path(uri).expanduser()
    if "://" not in uri and not uri.startswith(("models:", "runs:")):
        if not local.exists():
            raise ArtifactError(f"model path {uri} does not exist")
        directory = find_artifact_dir(local.resolve())
        from model.artifact import load_meta

        return ModelRef(uri=uri, directory=directory, name=load_meta(directory).name)
    import mlflow

    name = version = run_id = None
    download_uri = uri
    reg = registry_version(uri)
    if reg:
        name, version, run_id = reg
        download_uri = f"models:/{name}/{version}"  # pin the alias: what we load is what we report
    if dst_dir is None:
        return _cached_download(uri, download_uri, name, version, run_id)
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=download_uri, dst_path=str(dst)))
    directory = find_artifact_dir(path)
    if name is None:
        from model.artifact import load_meta

        name = load_meta(directory).name
    logger.info("resolved %s to %s (version %s)", uri, directory, version)
    return ModelRef(uri=uri, directory=directory, name=name, version=version, run_id=run_id)
