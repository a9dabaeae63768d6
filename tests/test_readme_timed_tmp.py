"""The README's commands run as written after `make demo`.

A throw-away checkout layout (``<tmp>/work/repo`` beside ``<tmp>/work/shared/datasets/...``) gets
the real Makefile, a ``configs/demo.yaml`` that is the tiny config (seconds instead of 15 minutes),
and ``.venv`` pointing at this environment. The Makefile's ``demo-run`` target runs there, then every
```` ```bash ```` block of README.md, in order, with ``bash -e``: a block that fails, or a command
the README shows that no longer exists, fails this test. Then the same registry is used from
another directory with only the environment set (one tracking rule for every verb).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA_DIR, REPO, cli_env
from tests.serve.conftest import free_port

BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def readme_bash_blocks() -> list[str]:
    """The README's ```bash blocks, in order."""
    return BASH_BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))


def _layout(tmp: Path) -> Path:
    repo = tmp / "work" / "repo"
    data = tmp / "work" / "shared" / "datasets" / "risky-ads-v1"
    data.mkdir(parents=True)
    (repo / "configs").mkdir(parents=True)
    for split in ("train", "validation", "test"):  # a slice keeps every command quick
        lines = (DATA_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        (data / f"{split}.jsonl").write_text(
            "\n".join(lines[:: max(1, len(lines) // 150)]) + "\n", encoding="utf-8"
        )
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.update(model_name=demo["model_name"], output_dir=demo["output_dir"], export_onnx=False)
    cfg["data"] = {"path": "../shared/datasets/risky-ads-v1"}
    cfg["baseline"] = {"enabled": False}
    cfg["gate"] = {"min_macro_ap": 0.0, "max_ece": 1.0}  # a random tiny model cannot pass the real floors
    (repo / "configs" / "demo.yaml").write_text(yaml.safe_dump(cfg))
    (repo / "Makefile").write_text((REPO / "Makefile").read_text())
    (repo / ".venv").symlink_to(Path(sys.prefix))
    return repo


@pytest.mark.slow
def test_readme_commands_run_as_written_after_make_demo(tmp_path, monkeypatch, capsys):
    blocks = readme_bash_blocks()
    assert len(blocks) >= 3, "README lost its command blocks"
    repo = _layout(tmp_path)
    env = cli_env(MLFLOW_TRACKING_URI=None, PYTHONPATH=None)  # the installed CLI, the default store

    import time; t0 = time.time(); T = open("/work/runs/readme-times.txt", "a")
    demo = subprocess.run(
        ["make", "--no-print-directory", "demo-run"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print("DEMO", time.time() - t0, file=T, flush=True)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "promoted" in demo.stdout and (repo / "mlflow.db").is_file()
    assert len([json.loads(x) for x in demo.stdout.splitlines() if x.startswith('{"flagged"')]) == 3

    port = str(free_port())
    for i, block in enumerate(blocks):
        script = block.replace("8000", port)  # the README's port may be taken on this machine
        t0 = time.time()
        r = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        print("BLOCK", i, time.time() - t0, file=T, flush=True)
        assert r.returncode == 0, (
            f"README bash block {i} failed:\n{block}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
        )
        if "adrisk predict" in block:
            assert json.loads(r.stdout.splitlines()[0])["flagged"] in (True, False)
        if "/v1/classify" in block:
            body = json.loads(r.stdout.strip().splitlines()[-1])
            assert len(body["results"]) == 2 and body["model"]["version"] == "1", r.stdout
    assert (repo / "outputs" / "scored.parquet").is_file() and (repo / "outputs" / "eval.json").is_file()

    # `adrisk retrain` again on the same data and config changes nothing: exit 5, which `make demo`
    # reports and passes (test_make_demo_reports_each_retrain_outcome); the entry point in process
    from adrisk.cli import main

    t0 = time.time(); monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["retrain", "--config", "configs/demo.yaml"]) == 5

    # from another directory, only the environment says where the registry is (in process: the same
    # `adrisk` entry point without three more interpreter starts)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    test_split = repo.parent / "shared" / "datasets" / "risky-ads-v1" / "test.jsonl"
    assert main(["predict", "--model", "models:/risky-ads@champion", "cheap flat"]) == 0
    assert main(["evaluate", "--model", "models:/risky-ads/1", "--data", str(test_split)]) == 0
    assert not (elsewhere / "mlflow.db").exists()
    capsys.readouterr()
    # MLFLOW_REGISTRY_URI, when set, is where every verb looks for models
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{elsewhere / 'reg.db'}")
    assert main(["predict", "--model", "models:/risky-ads/1", "x"]) == 1
    assert "reg.db" in capsys.readouterr().err; print("INPROC", time.time() - t0, file=T, flush=True)


@pytest.mark.parametrize(
    "rc, says",
    [
        (0, ""),
        (3, "the challenger was rejected; @champion is unchanged"),
        (5, "@champion was already trained on this data and config"),
        (1, None),
    ],
)
def test_make_demo_reports_each_retrain_outcome(tmp_path, rc, says):
    """`make demo-run` maps `adrisk retrain`'s exit codes (0 promoted, 3 rejected, 5 unchanged) to a
    line and goes on to predict; any other code stops it. A stub `adrisk` (no model) plays retrain."""
    stub = tmp_path / "bin" / "adrisk"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$1"\n[ "$1" = retrain ] && exit {rc}\nexit 0\n')
    stub.chmod(0o755)
    r = subprocess.run(
        ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "demo-run", f"BIN={stub.parent}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if says is None:
        assert r.returncode != 0 and "predict" not in r.stdout
    else:
        assert r.returncode == 0, r.stdout + r.stderr
        assert says in r.stdout and r.stdout.splitlines()[-1] == "predict"  # went on to predict


def test_cli_help_and_readme_agree():
    """Every verb the CLI has is in the README's CLI table, and every verb in the table exists."""
    from adrisk.cli import build_parser

    parser = build_parser()
    verbs = set(next(a for a in parser._actions if a.dest == "verb").choices)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `adrisk ([a-z-]+)", readme, re.M))
    assert verbs == table, (sorted(verbs - table), sorted(table - verbs))


def test_serve_flag_help_states_the_settings_defaults():
    """`adrisk serve --help` says "(default N)" for flags whose defaults live in serve.settings.Settings:
    the two must agree, and thread help must state the thread policy the README documents."""
    from adrisk.cli import build_parser
    from serve.settings import Settings

    serve = next(a for a in build_parser()._actions if a.dest == "verb").choices["serve"]
    defaults = Settings.model_fields
    checked = 0
    for action in serve._actions:
        m = re.search(r"\(default ([^;)]+)\)", action.help or "")
        if m and action.dest in defaults:
            stated, actual = m.group(1).split()[0], defaults[action.dest].default
            assert (
                (float(stated) == float(actual)) if isinstance(actual, int | float) else stated == str(actual)
            ), action.dest
            checked += 1
        if "--threads" in action.option_strings:
            assert "every usable CPU" in action.help
    assert checked >= 5
    assert "every usable CPU" in " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
