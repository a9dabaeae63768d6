"""``adrisk.json`` files written by earlier versions still load, and those whose model this version
cannot serve as trained are refused with a clear error or their variant is dropped."""

from __future__ import annotations

import json

import pytest

from model.artifact import META_FILE, ArtifactError, load_meta


@pytest.fixture()
def meta_dir(tiny_artifact, tmp_path):
    """A directory holding only a copy of the tiny artifact's ``adrisk.json`` (``load_meta`` reads no more)."""
    (tmp_path / META_FILE).write_text((tiny_artifact / META_FILE).read_text())
    return tmp_path


def _write(d, **fields) -> None:
    data = json.loads((d / META_FILE).read_text()) | fields
    (d / META_FILE).write_text(json.dumps(data))


def test_a_file_from_before_the_removal_of_head_tail_windows_loads(meta_dir):
    _write(meta_dir, tail_tokens=0, runtimes={}, blend={})
    meta = load_meta(meta_dir)
    assert meta.max_length > 0 and "tail_tokens" not in meta.model_dump()


def test_a_model_trained_with_a_tail_window_is_refused(meta_dir):
    _write(meta_dir, tail_tokens=64)
    with pytest.raises(
        ArtifactError, match="tail_tokens=64: this model was trained with head\\+tail windows"
    ):
        load_meta(meta_dir)


def test_a_variant_with_its_own_calibration_is_not_served(meta_dir, caplog):
    """Per-variant calibration was removed: served with the model's temperatures and thresholds, such
    a variant would flag other ads than it was gated on, so it is dropped (and the default with it)."""
    variant = {"file": "student.int8.onnx", "precision": "int8", "passed": True, "texts_per_s": 9.0}
    own = variant | {"calibration": {"temperatures": [2.0, 2.0, 2.0], "threshold_info": {}}}
    plain = variant | {"file": "model.fp32.onnx", "precision": "fp32"}
    _write(
        meta_dir,
        runtimes={"default": "student-onnx-int8", "variants": {"student-onnx-int8": own, "onnx-fp32": plain}},
    )
    with caplog.at_level("WARNING", logger="model.artifact"):
        meta = load_meta(meta_dir)
    assert meta.runtimes["default"] == "torch"
    assert set(meta.runtimes["variants"]) == {"onnx-fp32"}
    assert any("student-onnx-int8" in r.getMessage() for r in caplog.records)
