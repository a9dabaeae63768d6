"""Logging an artifact to MLflow as a pyfunc model and registering it.

Tracking defaults to an embedded SQLite store in the working directory (``sqlite:///mlflow.db``);
``MLFLOW_TRACKING_URI`` points elsewhere (e.g. an ``mlflow server``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")


def resolve_tracking_uris(tracking_uri: str | None = None) -> tuple[str, str]:
    """The (tracking, registry) URIs every verb uses, by one rule.

    Tracking: the argument, else ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the working
    directory (an absolute ``sqlite:///`` path, pinned now). Registry: ``MLFLOW_REGISTRY_URI`` when
    set, else the tracking URI. Pure: reads the environment, sets nothing.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri == DEFAULT_TRACKING_URI:  # pin the working directory now: MLflow caches stores by URI string
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    return uri, os.environ.get("MLFLOW_REGISTRY_URI") or uri


def configure_tracking(tracking_uri: str | None = None) -> str:
    """Point MLflow at the URIs of ``resolve_tracking_uris`` (tracking and registry); returns the
    tracking URI. The ``adrisk`` CLI calls this once at start for every verb, so ``train`` registers
    where ``predict``, ``evaluate``, ``serve`` and ``score`` resolve ``models:/`` URIs.

    Creates nothing: a SQLite store is created by MLflow on first write.
    """
    import mlflow

    uri, registry = resolve_tracking_uris(tracking_uri)
    user_registry = "MLFLOW_REGISTRY_URI" in os.environ
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    if not user_registry:
        # MLflow also exports MLFLOW_REGISTRY_URI to the environment; left there, it would read as a
        # user's choice and pin the registry of every later resolution in this process to this one
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    return uri


@dataclass(frozen=True)
class RegisteredModel:
    """A logged and registered model: ``uri`` is ``models:/name/version``."""

    name: str
    version: str
    run_id: str
    model_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


# Distributions the pyfunc imports (model/ with a torch or ONNX runtime, MLflow's pyfunc loader):
# pinned to the logging environment's versions in the model's requirements.txt.
PYFUNC_REQUIREMENTS = (
    "mlflow-skinny",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "pydantic",
)


def pinned_requirements(artifact_dir: str | os.PathLike[str]) -> list[str]:
    """``name==version`` for each of ``PYFUNC_REQUIREMENTS`` (plus ``onnxruntime`` when the artifact has
    ONNX variants), at the versions installed here; local version labels (``+cpu``) are dropped so an
    index without them (PyPI) resolves the pin."""
    from importlib.metadata import PackageNotFoundError, version

    names = list(PYFUNC_REQUIREMENTS) + (["onnxruntime"] if (Path(artifact_dir) / "onnx").is_dir() else [])
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            logger.warning("%s is not installed; the model's requirements leave it out", name)
    return pins


def log_pyfunc_model(
    artifact_dir: str | os.PathLike[str],
    registered_model_name: str | None,
    input_example: list[str] | None = None,
) -> RegisteredModel | None:
    """Log ``artifact_dir`` as the active run's pyfunc model ``model`` (models from code, no pickle)
    and register it under ``registered_model_name`` (skip registration when None).

    Self-contained: adrisk's ``model`` package travels as the model's ``code_paths`` and
    ``requirements.txt`` pins ``pinned_requirements``, so ``env_manager="virtualenv"``/``"uv"`` (or a
    plain ``pip install -r requirements.txt``) rebuilds it without adrisk. The signature is
    ``model.pyfunc.output_signature`` (outputs only; see ``model.pyfunc``).

    Raises:
        mlflow.exceptions.MlflowException: no active run, or tracking/registry errors.
    """
    import warnings

    import mlflow
    import pandas as pd

    import model as model_package
    from model.artifact import load_meta
    from model.pyfunc import output_signature
    from model.uri import PYFUNC_ARTIFACT_KEY

    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_pyfunc_model needs an active MLflow run")
    example = pd.DataFrame({"text": input_example or ["2 bedroom apartment for rent", "call me now 24/7"]})
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={PYFUNC_ARTIFACT_KEY: str(artifact_dir)},
        code_paths=[str(Path(model_package.__file__).parent)],
        signature=output_signature(load_meta(artifact_dir).labels),
        input_example=example,
        registered_model_name=registered_model_name,
        pip_requirements=pinned_requirements(artifact_dir),
    )
    if not registered_model_name:
        return None
    version = str(info.registered_model_version)
    logger.info("registered %s version %s", registered_model_name, version)
    return RegisteredModel(registered_model_name, version, run.info.run_id, info.model_uri)


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``models:/name@alias`` at ``version``."""
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


def get_alias(name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the model or alias does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
