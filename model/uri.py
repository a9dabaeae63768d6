"""Resolve a model URI to a local artifact directory.

Accepted: a local artifact directory (holding ``adrisk.json``), a local MLflow model directory (its
``artifacts/`` holds one), or any URI MLflow resolves (``models:/name@alias``, ``models:/name/3``,
``runs:/<run_id>/model``). MLflow is imported only for the latter.
"""

from __future__ import annotations

import logging
import os
import re
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


def resolve_model(uri: str, dst_dir: str | os.PathLike[str] | None = None) -> ModelRef:
    """Resolve ``uri`` to a local artifact directory, downloading from MLflow when needed.

    Args:
        uri: see module docstring. An alias is pinned to the version it points at now.
        dst_dir: where to download to (default: a new temporary directory).

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
    dst = Path(dst_dir) if dst_dir else Path(tempfile.mkdtemp(prefix="adrisk-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=download_uri, dst_path=str(dst)))
    directory = find_artifact_dir(path)
    if name is None:
        from model.artifact import load_meta

        name = load_meta(directory).name
    logger.info("resolved %s to %s (version %s)", uri, directory, version)
    return ModelRef(uri=uri, directory=directory, name=name, version=version, run_id=run_id)
