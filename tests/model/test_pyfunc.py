"""The registered pyfunc: every documented input shape, row-level errors, adrisk score's output columns
as the signature, a self-contained model (code + pinned requirements) that loads without adrisk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from model.pyfunc import InputError, output_columns, values_from_input
from model.registry import log_pyfunc_model
from tests.conftest import mlflow_outside_tests, new_mlflow_store

SECRET = "Sweet girl call 555 0199 tonight"
TEXTS = ["cheap rental flat", "", "hot petite girls 24/7 incall"]
SCORES = ["score_adult_services", "score_trafficking_indicators", "score_scam"]


def errors(out: pd.DataFrame) -> list:
    return [None if pd.isna(e) else e for e in out["error"]]


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_artifact, mlflow_store_template):
    """(loaded pyfunc, local model directory, registry URI) of one registered tiny model."""
    root = tmp_path_factory.mktemp("pyfunc-registry")
    uri = new_mlflow_store(root / "mlflow.db", mlflow_store_template)
    with mlflow_outside_tests(root):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        with mlflow.start_run():
            reg = log_pyfunc_model(tiny_artifact, "risky-ads-pyfunc")
        local = Path(mlflow.artifacts.download_artifacts(reg.uri, dst_path=str(root / "dl")))
        return mlflow.pyfunc.load_model(reg.uri), local, uri


def test_every_documented_input_shape_scores_the_same(registered, tiny_predictor):
    pyfunc, _, _ = registered
    expected = tiny_predictor.predict_proba(TEXTS)
    shapes = {
        "DataFrame": pd.DataFrame({"text": TEXTS}),
        "DataFrame with other columns": pd.DataFrame({"id": [7, 8, 9], "text": TEXTS}),
        "list": list(TEXTS),
        "tuple": tuple(TEXTS),
        "Series": pd.Series(TEXTS),
        "numpy array": np.array(TEXTS),
        "dict": {"text": TEXTS},
        "positional column": pd.DataFrame({0: TEXTS}),
        "spark_udf column": pd.DataFrame({"0": TEXTS}),
    }
    for name, x in shapes.items():
        out = pyfunc.predict(x)
        assert list(out.columns) == output_columns(tiny_predictor.labels), name
        np.testing.assert_allclose(out[SCORES].to_numpy(), expected, atol=1e-6, err_msg=name)
        assert out["error"].isna().all(), name
    one = pyfunc.predict(TEXTS[2])
    assert len(one) == 1
    np.testing.assert_allclose(one[SCORES].to_numpy(), expected[2:], atol=1e-6)


def test_rows_without_text_get_an_error_and_null_scores(registered, tiny_predictor):
    pyfunc, _, _ = registered
    values = ["ok", None, float("nan"), 42, "", ["a"], pd.NA]
    out = pyfunc.predict(pd.DataFrame({"text": pd.Series(values, dtype=object)}))
    assert errors(out) == [None, "missing_text", "missing_text", "not_text", None, "not_text", "missing_text"]
    bad = out["error"].notna().to_numpy()
    assert out.loc[bad, SCORES].isna().all().all() and out.loc[bad, "flagged"].isna().all()
    np.testing.assert_allclose(
        out.loc[~bad, SCORES].to_numpy(), tiny_predictor.predict_proba(["ok", ""]), atol=1e-6
    )
    assert errors(pyfunc.predict(["ok", 42])) == [None, "not_text"]


def test_shape_errors_name_columns_never_text(registered):
    pyfunc, _, _ = registered
    for bad in (
        pd.DataFrame({"txt": [SECRET]}),
        pd.DataFrame({SECRET: ["x"], "id": [1]}),
        {"body": [SECRET]},
        np.array([[SECRET, SECRET]]),
    ):
        with pytest.raises(InputError) as e:
            pyfunc.predict(bad)
        assert SECRET not in str(e.value) and SECRET not in e.value.message
        assert e.value.get_http_status_code() == 400
    # MLflow's scoring server rewrites the message to quote the request data: the rewrite is dropped
    err = InputError("input DataFrame needs a 'text' column; found ['txt']")
    err.message = f"Failed to predict data '{SECRET}'"
    assert SECRET not in err.message and SECRET not in err.serialize_as_json()
    with pytest.raises(InputError, match="unsupported input type"):
        values_from_input(object())


def test_dataframe_with_duplicate_text_columns_is_a_clear_input_error():
    """Two columns named ``text`` (a concat or a rename gone wrong): which holds the ad is ambiguous;
    one clear error naming the columns, never an AttributeError from a DataFrame where a column was
    expected."""
    df = pd.DataFrame([["secret ad one", "secret ad two"]], columns=["text", "text"])
    with pytest.raises(InputError, match="2 columns named 'text'") as e:
        values_from_input(df)
    assert "secret" not in str(e.value)


def test_mlflow_scoring_server_answers_per_row_and_never_echoes_text(registered):
    """MLflow's own scoring server (what ``mlflow models serve`` runs), in process."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    pyfunc, _, _ = registered
    client = TestClient(scoring_server.init(pyfunc))

    def post(body: dict):
        r = client.post(
            "/invocations", content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert SECRET not in r.text and "Traceback" not in r.text and "stack_trace" not in r.text
        return r.status_code, json.loads(
            r.text, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}")
        )

    code, body = post({"inputs": SECRET})
    assert code == 200 and len(body["predictions"]) == 1 and body["predictions"][0]["error"] is None
    code, body = post({"dataframe_records": [{"text": "ok"}, {"text": None}, {"text": 42}]})
    assert code == 200 and [r["error"] for r in body["predictions"]] == [None, "missing_text", "not_text"]
    assert body["predictions"][1]["score_scam"] is None and body["predictions"][1]["flagged"] is None
    code, body = post({"inputs": ["ok", None]})
    assert code == 200 and [r["error"] for r in body["predictions"]] == [None, "missing_text"]
    for bad in (
        {"dataframe_split": {"columns": ["txt"], "data": [[SECRET]]}},
        {"inputs": {"txt": [SECRET]}},
        {"inputs": [[SECRET, SECRET]]},
    ):
        code, body = post(bad)
        assert code == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body


def test_output_schema_is_the_signature_and_adrisk_scores_columns(registered, tiny_predictor):
    from batch.score import score_frame

    pyfunc, _, _ = registered
    signature = pyfunc.metadata.signature
    assert signature.inputs is None
    assert signature.outputs.input_names() == output_columns(tiny_predictor.labels)
    assert [t.name for t in signature.outputs.input_types()] == [
        "boolean",
        "double",
        "double",
        "double",
        "string",
        "string",
    ]
    frame = pd.DataFrame({"id": [1, 2, 3], "text": TEXTS})
    scored = score_frame(frame, tiny_predictor, "text", pyfunc.predict(TEXTS)["model_version"][0])
    out = pyfunc.predict(frame)
    assert list(scored.columns) == ["id", "text", *out.columns]
    pd.testing.assert_frame_equal(scored[list(out.columns)], out)


def test_logged_model_ships_code_and_pinned_requirements(registered):
    _, local, _ = registered
    reqs = [r for r in (local / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    assert reqs and all("==" in r for r in reqs), reqs
    names = {r.split("==")[0] for r in reqs}
    assert {"torch", "transformers", "tokenizers", "safetensors"} <= names and "adrisk" not in names
    assert (local / "code" / "model" / "pyfunc.py").is_file()


@pytest.mark.venv
def test_registered_model_loads_in_a_fresh_virtualenv_without_adrisk(registered, tmp_path):
    """Builds a virtualenv from the model's own requirements.txt (wheels from pip's cache and the
    configured indexes; several minutes on the shared 2-core machine) and predicts there."""
    _, local, _ = registered
    venv = tmp_path / "venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "-r", str(local / "requirements.txt")],
        check=True,
        timeout=1200,
    )
    build_s = time.perf_counter() - t0
    script = (
        "import json, sys, mlflow.pyfunc, pandas as pd\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "import model\n"
        "out = m.predict(['cheap rental flat', None, 42])\n"
        "errors = [None if e is pd.NA or e is None else e for e in out['error']]\n"
        "print(json.dumps({'model_file': model.__file__, 'errors': errors,\n"
        "                  'score': float(out['score_scam'][0])}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    res = subprocess.run(
        [str(py), "-c", script, str(local)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["model_file"].startswith(str(local / "code")), got  # adrisk's code came with the model
    assert got["errors"] == [None, "missing_text", "not_text"]
    missing = subprocess.run([str(py), "-c", "import adrisk"], capture_output=True, cwd=tmp_path, env=env)
    assert missing.returncode != 0  # adrisk itself is not installed there
    print(f"fresh virtualenv built in {build_s:.0f}s")


def test_cached_predictor_reloads_when_the_metadata_changes_with_the_same_weights(tiny_artifact, tmp_path):
    """The process cache follows adrisk.json, not only the weights: an in-place change (thresholds,
    ONNX variants, a TF-IDF blend) with the same weights is loaded again."""
    import shutil

    from model.artifact import META_FILE
    from model.pyfunc import cached_predictor
    from tests.conftest import same_weights_other_metadata

    d = tmp_path / "model"
    shutil.copytree(tiny_artifact, d)
    before = cached_predictor(d, num_threads=1)
    other = same_weights_other_metadata(tiny_artifact, tmp_path / "other")
    shutil.copyfile(other / META_FILE, d / META_FILE)  # the same directory, its metadata replaced
    after = cached_predictor(d, num_threads=1)
    assert after is not before and set(after.meta.thresholds.values()) == {0.123}
    assert cached_predictor(d, num_threads=1) is after  # still cached while unchanged
