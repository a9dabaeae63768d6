"""OpenAPI is the truth (issue 9, kind 3): ``/openapi.json`` declares the limits and bodies the server
enforces, from its own settings, and a schema-driven client (schemathesis, all checks) finds no
mismatch against the served app on the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import REPO, ServerProcess, wait_ready

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")

# 413 (a batch over max_batch_items, a body over max_body_bytes) is a rejection too; schemathesis'
# default list of rejection statuses leaves it out.
SCHEMATHESIS_CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


def _request_schema(doc: dict, path: str) -> dict:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_published_limits_are_the_servers_settings(tiny_artifact):
    from serve.app import create_app
    from serve.settings import Settings

    doc = create_app(
        Settings(model=str(tiny_artifact), max_batch_items=7, max_text_chars=50, max_explain_items=3)
    ).openapi()
    classify = _request_schema(doc, "/v1/classify")
    text, batch = classify["properties"]["input"]["anyOf"]
    assert text == {"type": "string", "maxLength": 50}
    assert (batch["minItems"], batch["maxItems"], batch["items"]["maxLength"]) == (1, 7, 50)
    explain_rule = classify["anyOf"][1]["properties"]
    assert explain_rule["explain"] == {"const": True}
    assert explain_rule["input"]["anyOf"][1]["maxItems"] == 3

    feedback = doc["paths"]["/v1/feedback"]["post"]
    body = _request_schema(doc, "/v1/feedback")
    assert body["required"] == ["labels", "reviewer"]
    assert len(body["oneOf"]) == 2 and body["additionalProperties"] is False
    assert {"201", "400", "404", "413", "415", "422", "503"} <= set(feedback["responses"])


def test_empty_input_list_is_invalid_in_schema_and_answer(thread_server):
    with thread_server() as srv:
        doc = httpx.get(f"{srv.base}/openapi.json", timeout=30).json()
        assert _request_schema(doc, "/v1/classify")["properties"]["input"]["anyOf"][1]["minItems"] == 1
        r = httpx.post(f"{srv.base}/v1/classify", json={"input": []}, timeout=30)
        assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"
        # labels of the serving model are published once it is loaded
        labels = _request_schema(doc, "/v1/feedback")["properties"]["labels"]["items"]
        assert labels.get("enum") in (None, ["adult_services", "trafficking_indicators", "scam"])
        wait_ready(srv.base)
        doc = httpx.get(f"{srv.base}/openapi.json", timeout=30).json()
        labels = _request_schema(doc, "/v1/feedback")["properties"]["labels"]["items"]
        assert labels["enum"] == ["adult_services", "trafficking_indicators", "scam"]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis not installed (pip install -e .[dev])")
def test_schemathesis_finds_no_mismatch(tiny_artifact, tmp_path):
    """All operations, all checks, deterministic generation, ~20 examples per operation (~10-30 s)."""
    # a policy under which every ad is removed: every decision has a statement and can be appealed,
    # so the statement and appeal routes are reached past their 404s (schemathesis links classify's
    # decision_id to them)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: always-remove\ncategories:\n  adult_services: {}\n  trafficking_indicators: {}\n"
        "  scam: {actions: [{from: 0.0, to: 1.0, action: remove}]}\n",
        encoding="utf-8",
    )
    srv = ServerProcess(
        [
            "--model",
            str(tiny_artifact),
            "--max-batch-size",
            "32",
            "--max-wait-ms",
            "5",
            "--policy",
            str(policy),
        ],
        tmp_path / "server.log",
        env={"ADRISK_FEEDBACK_URL": f"sqlite:///{tmp_path / 'fb.db'}"},
        cwd=tmp_path,
    )
    try:
        wait_ready(srv.base, proc=srv.proc)
        config = tmp_path / "schemathesis.toml"
        config.write_text(SCHEMATHESIS_CONFIG, encoding="utf-8")
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.serve.schemathesis_hooks",
            "PYTHONPATH": str(REPO),
            "NO_COLOR": "1",
        }
        out = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(config),
                "run",
                f"{srv.base}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "20",
                "--generation-deterministic",
                "--request-timeout",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=150,
            env=env,
            cwd=tmp_path,
        )
    finally:
        srv.stop()
    tail = "\n".join(line[:300] for line in (out.stdout + out.stderr).splitlines()[-60:])
    assert out.returncode == 0, tail
    assert "No issues found" in out.stdout, tail
    assert "10 selected / 10 total" in out.stdout, tail  # every operation was tested
