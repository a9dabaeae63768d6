"""``adrisk.json`` files written by earlier versions still load, and those whose model this version
cannot serve as trained are refused with a clear error or their variant is dropped."""

from __future__ import annotations

import json

import pytest

from model.artifact import META_FILE, ArtifactError, load_meta, save_meta


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
    assert meta.blend is None and meta.runtimes.default == "torch" and not meta.runtimes.variants


def test_runtimes_and_blend_round_trip_as_written(meta_dir):
    """Typed on load (``Runtimes``, ``BlendRecord``), written back with the fields they were given:
    measurements the gate adds beyond the declared fields are kept."""
    variant = {
        "name": "onnx-int8",
        "file": "model.int8.onnx",
        "precision": "int8-dynamic, per-row",
        "passed": True,
        "texts_per_s": 12.5,
        "ap_delta": {"scam": -0.001, "adult_services": None},
        "calibration_texts": 64,  # a field this version does not declare
    }
    runtimes = {"default": "onnx-int8", "variants": {"onnx-int8": variant}, "torch": {"texts_per_s": 3.0}}
    blend = {"files": {"blend.json": "0" * 64, "blend.npz": "1" * 64}, "labels": ["scam"]}
    _write(meta_dir, runtimes=runtimes, blend=blend)
    meta = load_meta(meta_dir)
    v = meta.runtimes.variants["onnx-int8"]
    assert v.runs_per_row and v.ap_delta["scam"] == -0.001 and meta.runtimes.torch.texts_per_s == 3.0
    assert meta.blend is not None and meta.blend.labels == ["scam"]
    dumped = meta.model_dump(mode="json")
    assert dumped["runtimes"] == runtimes and dumped["blend"] == blend
    save_meta(meta_dir, meta.model_copy(update={"blend": None, "runtimes": {"default": "torch"}}))
    again = json.loads((meta_dir / META_FILE).read_text())
    assert again["blend"] == {} and again["runtimes"] == {"default": "torch"}


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
    assert meta.runtimes.default == "torch"
    assert set(meta.runtimes.variants) == {"onnx-fp32"}
    assert any("student-onnx-int8" in r.getMessage() for r in caplog.records)
