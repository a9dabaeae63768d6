"""Resolve a model URI to a local artifact directory.

Accepted: a local artifact directory (holding ``adrisk.json``), a local MLflow model directory (its
``artifacts/`` holds one), or any URI MLflow resolves (``models:/name@alias``, ``models:/name/3``,
``runs:/<run_id>/model``). MLflow is imported only for the latter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model.artifact import META_FILE, ArtifactError, publish_modes

logger = logging.getLogger(__name__)

PYFUNC_ARTIFACT_KEY = "adrisk_model"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?P<path>/.*)?$")
CACHE_MARKER = ".adrisk-cache.json"


class ModelNotFound(ArtifactError):
    """The registry (named in the message, without credentials) holds no such model, version or alias,
    or does not exist."""


def redact_uri(uri: str) -> str:
    """``uri`` fit for a message: user and password (``user:secret@``) become ``***@``; the query
    string (tokens) is dropped."""
    uri = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@?#]*@", r"\1***@", uri)
    return uri.split("?", 1)[0].split("#", 1)[0]


def _check_registry_exists(store_uri: str, uri: str) -> None:
    """A ``sqlite:///`` store whose file does not exist holds no model: say so, naming it, instead of
    letting MLflow create an empty database (in the working directory, by default) and report the
    model missing from it."""
    if not store_uri.startswith("sqlite:///"):
        return
    path = store_uri[len("sqlite:///") :].split("?", 1)[0]
    if path and path != ":memory:" and not Path(path).is_file():
        raise ModelNotFound(
            f"{uri} not found: the registry {redact_uri(store_uri)} does not exist "
            f"(set MLFLOW_TRACKING_URI / --tracking-uri to the registry that holds it)"
        )


def _registry_entry(uri: str):
    """The registry's ``ModelVersion`` for a ``models:/`` URI (None for other URIs).

    Raises:
        ModelNotFound: the registry does not exist, or holds no such name, alias or version.
    """
    m = _MODELS_URI.match(uri)
    if not m:
        return None
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    registry = mlflow.get_registry_uri()
    _check_registry_exists(registry, uri)
    client = MlflowClient()
    try:
        if m["alias"]:
            return client.get_model_version_by_alias(m["name"], m["alias"])
        return client.get_model_version(m["name"], m["version"])
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        raise ModelNotFound(f"{uri} not found in the registry {redact_uri(registry)}") from None


@dataclass(frozen=True)
class ModelRef:
    """Where a loaded model came from: ``name``/``version`` from the registry when known."""

    uri: str
    directory: Path
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    identity: dict[str, str] | None = None  # the registry version's identity (``version_identity``)


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


def version_identity(mv) -> dict[str, str]:
    """What the registry guarantees about a ``ModelVersion``: its registry, name, version, run id,
    source and creation time. A version deleted and registered again, or a registry recreated at the
    same path, differs in run id and creation time even where the version number repeats."""
    import mlflow

    return {
        "registry": mlflow.get_registry_uri(),
        "name": mv.name,
        "version": str(mv.version),
        "run_id": str(mv.run_id),
        "source": str(mv.source),
        "created": str(mv.creation_timestamp),
    }


def registry_identity(uri: str) -> dict[str, str] | None:
    """For ``models:/name@alias`` or ``models:/name/N``: the ``version_identity`` of the version it
    points at now (one registry read). None for other URIs.

    Raises:
        ModelNotFound: the registry does not exist (a ``sqlite:///`` file is never created here), or
            the name, alias or version is unknown; the message names the registry.
    """
    mv = _registry_entry(uri)
    return None if mv is None else version_identity(mv)


def _cache_identity(uri: str, download_uri: str, mv) -> dict[str, str]:
    """What the tracking store guarantees about what ``download_uri`` holds, as the cache key.

    A model version: its registry, name, version, run id, source and creation time (a version deleted
    and registered again, or a registry recreated at the same path, differs in run id and creation
    time). A ``runs:/`` URI: the tracking store, run id, the run's start time and the path. Anything
    else: the URI (a direct artifact location is taken as immutable).
    """
    import mlflow

    if mv is not None:
        return version_identity(mv)
    m = _RUNS_URI.match(download_uri)
    if m:
        from mlflow import MlflowClient

        tracking = mlflow.get_tracking_uri()
        _check_registry_exists(tracking, uri)
        run = MlflowClient().get_run(m["run_id"])
        return {
            "tracking": tracking,
            "run_id": m["run_id"],
            "start_time": str(run.info.start_time),
            "path": m["path"] or "",
        }
    return {"uri": download_uri}


def _cache_hit(final: Path, identity: dict[str, str]) -> Path | None:
    """The cached artifact directory if ``final`` holds a complete copy of ``identity`` whose weights
    match the sha256 recorded when it was downloaded and in its ``adrisk.json``; else None (and the
    unusable copy is removed)."""
    from model.artifact import WEIGHTS_FILE, load_meta, sha256_file, verify_weights

    if not final.is_dir():
        return None
    try:
        marker = json.loads((final / CACHE_MARKER).read_text(encoding="utf-8"))
        if marker.get("identity") != identity:
            raise ArtifactError("cache entry is for another model version")
        directory = find_artifact_dir(final)
        meta = load_meta(directory)
        verify_weights(directory, meta)
        if marker.get("weights_sha256") != sha256_file(directory / WEIGHTS_FILE):
            raise ArtifactError("weights differ from the downloaded ones")
        return directory
    except (OSError, ValueError) as e:  # ArtifactError and JSON errors are ValueErrors
        logger.warning("cached model %s is unusable (%s); downloading again", final, e)
        shutil.rmtree(final, ignore_errors=True)
        return None


def cache_root() -> Path:
    """Where registry models are cached: ``ADRISK_CACHE_DIR``, else ``~/.cache/adrisk/models``."""
    return Path(os.environ.get("ADRISK_CACHE_DIR") or Path.home() / ".cache" / "adrisk" / "models")


def _cached_download(
    uri: str, download_uri: str, name: str | None, version: str | None, run_id: str | None, mv=None
) -> ModelRef:
    """Download once per model version (or run path) into the cache; reuse after.

    The cache key is what the tracking store guarantees about the version (``_cache_identity``: run
    id, source, creation time), never only its name and number, and every hit is verified: the entry
    must record that identity and its weights must match the sha256 recorded at download and in
    ``adrisk.json``; otherwise it is downloaded again. Entries get the umask's modes (readable by a
    serving user other than the one that downloaded them).
    """
    import mlflow

    from model.artifact import WEIGHTS_FILE, load_meta, sha256_file

    identity = _cache_identity(uri, download_uri, mv)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    store = hashlib.sha256(mlflow.get_registry_uri().encode()).hexdigest()[:12]
    readable = f"{name}-v{version}" if version else re.sub(r"[^A-Za-z0-9._-]+", "_", download_uri)[:80]
    key = f"{readable}-{digest[:16]}"
    final = cache_root() / store / key
    directory = _cache_hit(final, identity)
    if directory is not None:
        return ModelRef(
            uri=uri,
            directory=directory,
            name=name or load_meta(directory).name,
            version=version,
            run_id=run_id,
            identity=identity if mv is not None else None,
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=download_uri, dst_path=str(tmp))
        found = find_artifact_dir(tmp)  # fail before publishing a download that holds no model
        marker = {
            "identity": identity,
            "weights_sha256": sha256_file(found / WEIGHTS_FILE) if (found / WEIGHTS_FILE).is_file() else None,
        }
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        publish_modes(tmp)  # mkdtemp's 0700 and the source's modes must not travel
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
    return ModelRef(
        uri=uri,
        directory=directory,
        name=name,
        version=version,
        run_id=run_id,
        identity=identity if mv is not None else None,
    )


def resolve_model(uri: str, dst_dir: str | os.PathLike[str] | None = None) -> ModelRef:
    """Resolve ``uri`` to a local artifact directory, downloading from MLflow when needed.

    Args:
        uri: see module docstring. An alias is pinned to the version it points at now. A blank URI
            is refused (it must never mean "whatever model lies under the working directory").
        dst_dir: where to download to (default: the shared cache, see ``cache_root``; one download
            per model version, reused by later calls).

    Raises:
        ArtifactError: the URI is blank, or the location holds no adrisk model.
        ModelNotFound: (an ArtifactError) the registry does not exist or does not hold the model;
            the message names the registry, without credentials.
        mlflow.exceptions.MlflowException: MLflow cannot resolve the URI otherwise.

    Loading reads the registry and writes only into the cache (or ``dst_dir``): never into the
    registry's artifact store.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ArtifactError("model URI is empty: give a models:/ URI, a runs:/ URI or a model directory")
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
    mv = _registry_entry(uri)
    if mv is not None:
        name, version, run_id = mv.name, str(mv.version), mv.run_id
        download_uri = f"models:/{name}/{version}"  # pin the alias: what we load is what we report
    elif uri.startswith("runs:"):
        _check_registry_exists(mlflow.get_tracking_uri(), uri)
    if dst_dir is None:
        return _cached_download(uri, download_uri, name, version, run_id, mv)
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=download_uri, dst_path=str(dst)))
    directory = find_artifact_dir(path)
    if name is None:
        from model.artifact import load_meta

        name = load_meta(directory).name
    logger.info("resolved %s to %s (version %s)", uri, directory, version)
    return ModelRef(
        uri=uri,
        directory=directory,
        name=name,
        version=version,
        run_id=run_id,
        identity=version_identity(mv) if mv is not None else None,
    )
