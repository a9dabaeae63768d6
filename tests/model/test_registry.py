"""Logging a model artifact to MLflow, registering it, and loading it back through every URI form."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from model.predictor import Predictor
from model.registry import configure_tracking, get_alias, log_pyfunc_model, set_alias
from model.uri import resolve_model
from tests.conftest import new_mlflow_store


@pytest.fixture()
def tracking(tmp_path, monkeypatch, mlflow_store_template):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    new_mlflow_store(tmp_path / "mlflow.db", mlflow_store_template)  # the CLI's default store, migrated
    uri = configure_tracking()
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield tmp_path


def test_register_and_load_back(tracking, tiny_artifact, tiny_predictor, probes):
    with mlflow.start_run() as run:
        reg = log_pyfunc_model(tiny_artifact, "risky-ads-test")
    assert reg.version == "1" and reg.run_id == run.info.run_id
    set_alias("risky-ads-test", "champion", reg.version)
    assert get_alias("risky-ads-test", "champion") == "1"
    assert get_alias("risky-ads-test", "nope") is None

    texts = ["cheap rental flat", "", "hot petite girls 24/7 incall"]
    expected = tiny_predictor.predict_proba(texts)
    for uri in (reg.uri, "models:/risky-ads-test@champion", f"runs:/{reg.run_id}/model"):
        ref = resolve_model(uri, tracking / "dl" / uri.replace("/", "_").replace(":", "_"))
        np.testing.assert_allclose(Predictor.load(ref.directory).predict_proba(texts), expected, atol=1e-6)
        if uri.startswith("models:"):
            assert (ref.name, ref.version) == ("risky-ads-test", "1")

    # pyfunc contract (tests/model/test_pyfunc.py has the rest): DataFrame with text -> the columns
    # `adrisk score` adds; NaN / None rows get error=missing_text and null scores, the batch succeeds
    pyfunc = mlflow.pyfunc.load_model("models:/risky-ads-test@champion")
    out = pyfunc.predict(pd.DataFrame({"text": texts}))
    scores = ["score_adult_services", "score_trafficking_indicators", "score_scam"]
    assert list(out.columns) == ["flagged", *scores, "model_version", "error"]
    np.testing.assert_allclose(out[scores].to_numpy(), expected, atol=1e-6)
    [nan_row] = [r for r in probes if r["kind"] == "nan-dataframe"]
    out = pyfunc.predict(pd.DataFrame(nan_row["value"]))
    assert [None if pd.isna(e) else e for e in out["error"]] == [None, "missing_text", "missing_text"]
    assert out[scores].iloc[1:].isna().all().all() and out[scores].iloc[0].notna().all()


def test_registry_downloads_are_cached_not_leaked(tracking, tiny_artifact, monkeypatch):
    monkeypatch.setenv("ADRISK_CACHE_DIR", str(tracking / "cache"))
    with mlflow.start_run():
        reg = log_pyfunc_model(tiny_artifact, "risky-ads-cache")
    a = resolve_model(reg.uri)
    b = resolve_model("models:/risky-ads-cache/1")
    assert a.directory == b.directory and str(a.directory).startswith(str(tracking / "cache"))
    # a cached copy with damaged weights is fetched again, not served
    (a.directory / "model.safetensors").write_bytes(b"broken")
    c = resolve_model(reg.uri)
    Predictor.load(c.directory)
    assert len(list((tracking / "cache").rglob("adrisk.json"))) == 1
