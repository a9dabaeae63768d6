"""QA break-it tests for ``adrisk train``'s data loading and ``--resume``: every bad input is a
``DataError`` / ``CheckpointError`` naming the file (and row), raised before any training work."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import DATA_DIR, REPO
from training.config import load_config
from training.data import DataError, load_data

SECRET = "qa secret listing 5531"


def _rows(n: int, prefix: str, labels=None) -> list[dict]:
    return [
        {
            "id": f"{prefix}{i}",
            "text": f"{SECRET} {prefix} {i}",
            "source": "s",
            "group": f"{prefix}{i}",
            "labels": labels if labels is not None else (["scam"] if i % 2 else []),
        }
        for i in range(n)
    ]


def _write(d, name, rows):
    d.mkdir(exist_ok=True)
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _cfg(tmp_path, data):
    return load_config(
        REPO / "configs" / "tiny.yaml",
        [f"output_dir={tmp_path / 'out'}", f"data.path={data}", "baseline.enabled=false", "data.limit=null"],
    )


def _splits(d, train, validation=None, test=None):
    _write(d, "train.jsonl", train)
    _write(d, "validation.jsonl", validation if validation is not None else _rows(6, "v"))
    _write(d, "test.jsonl", test if test is not None else _rows(6, "e"))
    return d


def _load_error(tmp_path, d) -> str:
    cfg = _cfg(tmp_path, d)
    with pytest.raises(DataError) as e:
        load_data(cfg.data, cfg.label_schema, cfg.seed)
    assert SECRET not in str(e.value)
    return str(e.value)


def test_empty_train_file_is_a_data_error(tmp_path):
    # used to be a bare StopIteration from inside `datasets`
    msg = _load_error(tmp_path, _splits(tmp_path / "d", []))
    assert "train.jsonl" in msg and "empty" in msg


def test_malformed_jsonl_is_a_data_error_naming_the_file(tmp_path):
    d = _splits(tmp_path / "d", _rows(4, "t"))
    (d / "train.jsonl").write_text(json.dumps(_rows(1, "t")[0]) + '\n{"text": "' + SECRET + '", "lab\n')
    msg = _load_error(tmp_path, d)  # used to be DatasetGenerationError
    assert "train.jsonl" in msg and "cannot be read" in msg


def test_labels_of_the_wrong_type_name_file_and_row(tmp_path):
    rows = _rows(6, "t")
    rows[4]["labels"] = 5
    msg = _load_error(tmp_path, _splits(tmp_path / "d", rows))
    assert "train.jsonl" in msg and "row 5" in msg


def test_validation_without_any_positive_is_refused_before_training(tmp_path):
    # used to train, then crash with FileNotFoundError: best.safetensors (macro AP NaN every epoch)
    msg = _load_error(tmp_path, _splits(tmp_path / "d", _rows(8, "t"), validation=_rows(6, "v", labels=[])))
    assert "validation" in msg and "positive" in msg


def test_resume_without_checkpoint_fails_before_any_work(tmp_path, monkeypatch):
    from training.loop import CheckpointError
    from training.pipeline import RUN_ID_FILE, run_training

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path, _splits(tmp_path / "d", _rows(8, "t")))
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_training(cfg, resume=True)
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "out" / RUN_ID_FILE).exists()  # no MLflow run was started
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04" + b"\x00" * 100])
def test_resume_from_a_corrupt_checkpoint_is_a_checkpoint_error(tmp_path, monkeypatch, content):
    # torch.load's own errors were "OSError: Invalid argument" or an UnpicklingError advising
    # weights_only=False (unpickling an untrusted file)
    from training.loop import LAST_CHECKPOINT, CheckpointError
    from training.pipeline import run_training

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path, _splits(tmp_path / "d", _rows(8, "t")))
    ck = tmp_path / "out" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / LAST_CHECKPOINT).write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt") as e:
        run_training(cfg, resume=True)
    assert "weights_only" not in str(e.value)


def test_missing_columns_error_does_not_quote_a_headerless_first_row(tmp_path):
    from training.data import prepare_frame, read_table

    cfg = _cfg(tmp_path, tmp_path)
    f = tmp_path / "eval.csv"
    f.write_text(f"1,{SECRET},scam\n2,other,\n", encoding="utf-8")
    with pytest.raises(DataError, match="not found") as e:
        prepare_frame(read_table(f), cfg.data, cfg.label_schema, str(f))
    assert SECRET not in str(e.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--model", "unused", "--data", "unused.jsonl", "--report", "BLOCKED/sub/r.json"],
        [
            "train",
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            "--uri-file",
            "BLOCKED/sub/uri.txt",
            "--set",
            "baseline.enabled=false",
        ],
    ],
)
def test_unwritable_output_file_fails_before_the_work(argv, capsys, tmp_path, monkeypatch):
    # used to train (and register) / score first, then fail with FileNotFoundError
    from adrisk.cli import main

    monkeypatch.chdir(tmp_path)  # without the fix, training runs: keep its outputs and registry here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "BLOCKED").write_text("a file where a directory would have to be")
    if argv[0] == "train":
        argv = [*argv, "--set", f"output_dir={tmp_path / 'out'}", "--set", f"data.path={DATA_DIR}"]
    t0 = time.monotonic()
    assert main(argv) == 1
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err.strip()
    assert "cannot create its directory" in err and err.count("\n") == 0


def test_uri_file_directory_is_created(tmp_path, monkeypatch):
    # `make demo` writes outputs/demo/model_uri.txt on a fresh clone, where outputs/ does not exist yet
    from adrisk.cli import _check_writable

    target = tmp_path / "outputs" / "demo" / "model_uri.txt"
    _check_writable(str(target), "--uri-file")
    assert target.parent.is_dir()
