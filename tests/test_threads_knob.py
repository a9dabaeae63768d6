"""The threads knob has one name everywhere (``threads``: config, server settings, CLI, environment
``ADRISK_THREADS``); each old name still works, with a warning that names the new one."""

from __future__ import annotations

import logging

import pytest


def test_config_threads_and_its_old_name(caplog):
    from training.config import TrainConfig

    assert TrainConfig(threads=2).threads == 2 and "threads" in TrainConfig().model_dump()
    with caplog.at_level(logging.WARNING, logger="training.config"):
        old = TrainConfig.model_validate({"num_threads": 3})
    assert old.threads == 3 and "num_threads" not in old.model_dump()
    assert any("call it train.threads" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)


def test_server_setting_threads_and_its_old_names(monkeypatch, caplog):
    from serve.settings import Settings

    for var in ("ADRISK_THREADS", "ADRISK_TORCH_THREADS", "THREADS", "TORCH_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("THREADS", "7")  # not adrisk's: never read
    assert Settings().threads is None and Settings(threads=2).threads == 2
    monkeypatch.setenv("ADRISK_THREADS", "3")
    assert Settings().threads == 3
    monkeypatch.delenv("ADRISK_THREADS")
    monkeypatch.setenv("ADRISK_TORCH_THREADS", "4")
    with caplog.at_level(logging.WARNING, logger="serve.settings"):
        assert Settings().threads == 4
        assert Settings(torch_threads=5).threads == 5
    assert any("call it ADRISK_THREADS" in r.getMessage() for r in caplog.records)


def test_runtime_default_reads_adrisk_threads_then_its_old_name(monkeypatch, caplog):
    from model.runtimes import default_num_threads

    monkeypatch.setenv("ADRISK_THREADS", "3")
    monkeypatch.setenv("ADRISK_NUM_THREADS", "5")
    assert default_num_threads() == 3
    monkeypatch.delenv("ADRISK_THREADS")
    with caplog.at_level(logging.WARNING, logger="model.runtimes"):
        assert default_num_threads() == 5
    assert any("call it ADRISK_THREADS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("verb", ["score", "serve"])
def test_cli_threads_and_the_hidden_old_flag(verb, capsys):
    from adrisk.cli import build_parser

    base = {
        "score": ["score", "--model", "m", "--input", "a.csv", "--output", "b.csv"],
        "serve": ["serve", "--model", "m"],
    }
    args = build_parser().parse_args([*base[verb], "--threads", "2"])
    assert args.threads == 2
    args = build_parser().parse_args([*base[verb], "--torch-threads", "3"])
    assert args.threads == 3 and "--torch-threads is deprecated: use --threads" in capsys.readouterr().err
    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices[verb]
    assert "--torch-threads" not in sub.format_help()
