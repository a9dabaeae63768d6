"""``adrisk score --workers N``: byte-identical output to one worker, and kill + resume with workers."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from batch.score import ScoreError, run_score
from tests.conftest import cli_env

ADRISK = Path(sys.executable).with_name("adrisk")


def score_command(model: Path | str, src: Path, dst: Path, chunk: int, *extra: str) -> list[str]:
    """The ``adrisk score`` command line of the resume tests: one thread, ``chunk`` rows a chunk."""
    return [str(ADRISK), "score", "--model", str(model), "--input", str(src), "--output", str(dst),
            "--chunk-size", str(chunk), "--threads", "1", *extra]  # fmt: skip


def run_and_kill_after_chunks(
    cmd: list[str], manifest: Path, chunks: int = 3, timeout: float = 120.0
) -> None:
    """Start an ``adrisk score`` command, SIGKILL its process once ``manifest`` counts ``chunks``
    finished chunks (the parent only, as an OOM kill would), then kill whatever is left of its
    process group so no orphaned worker outlives the test.

    Raises:
        AssertionError: the job finished (or died) before it could be killed.
    """
    import contextlib
    import os
    import signal

    proc = subprocess.Popen(
        cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(manifest.read_text())["chunks_done"] >= chunks:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.02)
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _frame(n: int, seed: int) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    words = ["sweet", "girl", "incall", "flat", "for", "rent", "visa", "job", "cash", "bike"]
    texts = [
        None if i % 13 == 7 else " ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for i in range(n)
    ]
    return pd.DataFrame({"id": range(n), "text": texts})


def test_workers_argument_checks(tmp_path, tiny_artifact, tiny_predictor):
    src = tmp_path / "in.csv"
    _frame(10, seed=2).to_csv(src, index=False)
    with pytest.raises(ScoreError, match="--workers"):
        run_score(str(tiny_artifact), src, tmp_path / "o.csv", workers=0, progress=False)
    in_memory = copy.copy(tiny_predictor)
    in_memory.directory = None  # nothing a worker process could load
    with pytest.raises(ScoreError, match="model directory"):
        run_score("mem", src, tmp_path / "o.csv", predictor=in_memory, workers=2, progress=False)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.slow
def test_killed_two_worker_job_resumes_to_the_bytes_of_one_worker(tmp_path, tiny_artifact, capsys):
    """One test for both promises (each CLI start and worker spawn costs seconds): an ``adrisk score
    --workers 2`` process, SIGKILLed after some chunks, and its resume (the entry point in process,
    spawning its two workers) write exactly the file one in-process worker writes."""
    n, chunk = 1200, 20
    src = tmp_path / "in.csv"
    _frame(n, seed=3).to_csv(src, index=False)
    expected = tmp_path / "expected.csv"
    run_score(str(tiny_artifact), src, expected, chunk_size=chunk, threads=1, workers=1, progress=False)

    dst = tmp_path / "out.csv"
    cmd = score_command(tiny_artifact, src, dst, chunk, "--workers", "2", "--no-progress")
    manifest = tmp_path / "out.csv.partial" / "manifest.json"
    run_and_kill_after_chunks(cmd, manifest)  # the parent only, as an OOM kill would; then its group
    done = json.loads(manifest.read_text())["chunks_done"]
    assert 3 <= done < n // chunk
    assert not dst.exists()

    from adrisk.cli import main

    capsys.readouterr()
    assert main([*cmd[1:], "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"scored {n} rows" in err and "rows/s" in err and "adult_services=" in err  # the job's summary
    got = pd.read_csv(dst)
    assert got["id"].tolist() == list(range(n))  # nothing lost, nothing twice, input order
    assert dst.read_bytes() == expected.read_bytes()  # byte-identical to one worker
    assert not manifest.parent.exists()
