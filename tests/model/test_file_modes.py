"""Files others can read (issue 9, kind 5): atomic writes and saved artifacts keep the umask's mode
(0644 under umask 022, 0640 under 027), never ``mkstemp``'s 0600, so a serving user other than the
training user can read a model (the mode travels into mlruns and downloads)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from model.artifact import META_FILE, WEIGHTS_FILE, write_json_atomic

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_json_atomic_keeps_umask_mode(tmp_path, umask):
    out = tmp_path / "x.json"
    write_json_atomic(out, {"a": 1})
    assert _mode(out) == 0o666 & ~umask
    write_json_atomic(out, {"a": 2})  # replacing keeps it too
    assert _mode(out) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left


def test_saved_artifact_files_keep_umask_mode(tmp_path):
    from tests.conftest import build_tiny_artifact

    old = os.umask(0o022)
    try:
        d = build_tiny_artifact(tmp_path / "model")  # model.artifact.save_artifact, as training/pipeline.py
    finally:
        os.umask(old)
    modes = {p.name: _mode(p) for p in d.iterdir() if p.is_file()}
    assert modes[WEIGHTS_FILE] == 0o644
    assert modes[META_FILE] == 0o644
    assert set(modes.values()) == {0o644}, modes
