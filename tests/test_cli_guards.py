"""CLI guards (issue 9): a blank ``--model`` (an unset variable in a unit file) is a usage error for
every verb that loads a model, before anything is searched or loaded (kind 6); ``adrisk serve`` on a
port in use exits 1 with one line (kind 8)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adrisk.cli import main
from tests.conftest import cli_env

ADRISK = Path(sys.executable).with_name("adrisk")
VERBS = {
    "predict": ["a text"],
    "evaluate": ["--data", "labelled.jsonl"],
    "score": ["--input", "in.csv", "--output", "out.csv"],
    "serve": [],
    "export-onnx": ["--data", "validation.jsonl"],
}


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_blank_model_is_a_usage_error_for_every_verb(
    verb, blank, tiny_artifact, tmp_path, monkeypatch, capsys
):
    shutil.copytree(tiny_artifact, tmp_path / "found-by-search")  # what a directory search would load
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([verb, "--model", blank, *VERBS[verb]])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--model" in err and "empty" in err
    assert "found-by-search" not in err


def test_blank_model_from_an_unset_variable_in_a_shell_line(tmp_path):
    """``adrisk predict --model "$ADRISK_MODEL"`` with the variable unset, as a unit file would run it."""
    out = subprocess.run(
        ["sh", "-c", f'"{ADRISK}" predict --model "$ADRISK_MODEL" "a text"'],
        env=cli_env(ADRISK_MODEL=None),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "--model" in out.stderr and "empty" in out.stderr
    assert out.stdout == ""


def test_serve_on_a_port_in_use_exits_1_with_one_line(tiny_artifact, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run(
            [str(ADRISK), "serve", "--model", str(tiny_artifact), "--port", str(port)],
            env=cli_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert str(port) in lines[0] and "in use" in lines[0].lower()
    assert "Traceback" not in out.stderr
    assert not any(p.name.endswith(".db") for p in tmp_path.iterdir())  # refused before anything was set up
