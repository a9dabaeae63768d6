"""QA break-it tests for ``Predictor.load`` on damaged artifacts: each must raise a clear
``ArtifactError`` at load time, never load silently wrong or crash later inside a library."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from model.artifact import META_FILE, ArtifactError
from model.predictor import Predictor


@pytest.fixture()
def damaged(tiny_artifact, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(tiny_artifact, d)
    return d


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _no_checksum(d):
    _edit_json(d / META_FILE, lambda m: m.update(weights_sha256=None))


def _load_fails(d, words: str) -> None:
    with pytest.raises(ArtifactError, match=words):
        Predictor.load(d)


def test_missing_tokenizer_files(damaged):
    # transformers silently builds an empty 5-token vocabulary: every word scored as [UNK]
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (damaged / f).unlink()
    _load_fails(damaged, "tokenizer")


def test_corrupt_tokenizer(damaged):
    (damaged / "tokenizer.json").write_text("{bad")
    _load_fails(damaged, "tokenizer")


def test_corrupt_config(damaged):
    (damaged / "config.json").write_text("{bad")  # was OSError from transformers
    _load_fails(damaged, "config.json")


@pytest.mark.parametrize("size", [0, 1000])
def test_truncated_weights_without_checksum(damaged, size):
    _no_checksum(damaged)
    os.truncate(damaged / "model.safetensors", size)  # was SafetensorError from transformers
    _load_fails(damaged, "weights")


def test_label_count_disagreeing_with_the_weights(damaged):
    # used to load, then fail on every predict with a numpy broadcast error
    def more(m):
        m["label_schema"]["labels"].append("extra")
        m["thresholds"]["extra"] = 0.5
        m["temperatures"].append(1.0)

    _edit_json(damaged / META_FILE, more)
    _load_fails(damaged, "labels")


def test_labels_renamed_against_the_model_outputs(damaged):
    _edit_json(
        damaged / META_FILE,
        lambda m: (
            m["label_schema"].update(labels=["a", "b", "c"]),
            m.update(thresholds={"a": 0.5, "b": 0.5, "c": 0.5}),
        ),
    )
    _load_fails(damaged, "id2label")


def test_window_beyond_position_embeddings(damaged):
    # used to load, then raise a torch RuntimeError for any text over 512 tokens (HTTP 500)
    _edit_json(damaged / META_FILE, lambda m: m.update(max_length=4096))
    _load_fails(damaged, "positions")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["thresholds"].update(scam=float("nan")),  # never flags
        lambda m: m["thresholds"].update(scam=2.0),  # never flags
        lambda m: m.update(temperatures=[1.0, 1.0, float("nan")]),  # NaN scores: invalid JSON answers
        lambda m: m.update(temperatures=[1.0, 1.0, float("inf")]),
    ],
)
def test_non_probability_thresholds_and_non_finite_temperatures(damaged, change):
    _edit_json(damaged / META_FILE, change)
    _load_fails(damaged, "invalid")


def test_runtimes_default_of_the_wrong_type(damaged):
    _edit_json(damaged / META_FILE, lambda m: m.update(runtimes={"default": ["onnx"]}))  # was TypeError
    _load_fails(damaged, "runtimes")
