"""A scoring job killed (SIGKILL) during its final write leaves no temporary file beside the output once
the resume has finished (issue 9, kind 8)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from tests.conftest import REPO, cli_env

KILL_DURING_FINAL_WRITE = textwrap.dedent("""
    import os, signal, sys
    import batch.score as score

    def killed_mid_write(parts, output, fmt):
        with open(output, "wb") as f:  # the temp file exists, empty, when the kill lands
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    score.concatenate = killed_mid_write  # batch.score's own binding of batch.tables.concatenate
    score.run_score(sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=2, progress=False, threads=1)
""")


@pytest.mark.timeout(180)
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_resume_after_kill_in_final_write_leaves_only_the_output(tiny_artifact, tmp_path):
    from batch.score import run_score

    src, dst = tmp_path / "in" / "ads.csv", tmp_path / "out" / "scores.csv"
    src.parent.mkdir()
    dst.parent.mkdir()
    pd.DataFrame({"id": [1, 2, 3], "text": ["cheap flat", "call me now", "job offer"]}).to_csv(
        src, index=False
    )
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_FINAL_WRITE, str(tiny_artifact), str(src), str(dst)],
        env=cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not dst.exists()

    summary = run_score(str(tiny_artifact), src, dst, chunk_size=2, resume=True, progress=False, threads=1)
    assert summary.rows == 3
    assert sorted(p.name for p in dst.parent.iterdir()) == ["scores.csv"]
    assert pd.read_csv(dst)["id"].tolist() == [1, 2, 3]
