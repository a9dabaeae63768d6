"""``adrisk train`` under ``torchrun --standalone --nproc-per-node 2`` (training/distributed.py), one
launch shared by the two slow tests (a torchrun launch costs ~35 s on 2 busy cores): rank 1 is
SIGKILLed after the first checkpoint (mid-epoch), ``--max-restarts 1`` starts the workers again and
they finish from that checkpoint; the finished job has the one-process run's validation metrics (the
session's tiny model, same global batch and seed; a resume is exact, so the kill changes nothing),
one MLflow run, one registered version, one artifact. Plus the sharding and the single-process
defaults, in process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA_DIR, TINY_CONFIG, cli_env, new_mlflow_store

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _command(out: Path, *extra: str) -> list[str]:
    return [
        *TORCHRUN,
        "-m",
        "adrisk",
        "train",
        "--config",
        str(TINY_CONFIG),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.path={DATA_DIR}",
        *extra,
    ]


def _store(tmp_path: Path, template: Path) -> dict[str, str]:
    return cli_env(MLFLOW_TRACKING_URI=new_mlflow_store(tmp_path / "mlflow.db", template))


def _runs(uri: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("adrisk")
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def _epoch_aps(client, run_id: str) -> list[float]:
    return [
        m.value
        for m in sorted(client.get_metric_history(run_id, "epoch.validation.macro_ap"), key=lambda m: m.step)
    ]


def test_shards_are_disjoint_and_cover_the_batch():
    from training.distributed import Dist, shard

    batch = np.arange(7)
    parts = [shard(batch, Dist(rank=r, world_size=3)) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(7))
    assert [len(p) for p in parts] == [3, 2, 2]
    assert shard(batch, Dist()) is batch  # one process: the whole batch, untouched


def test_one_process_touches_no_process_group(monkeypatch):
    import torch.distributed as dist

    from training import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup() is distributed.SINGLE
    assert not dist.is_initialized()
    model = object()
    assert distributed.wrap(model, distributed.SINGLE) is model
    assert distributed.broadcast(5, distributed.SINGLE) == 5


def _worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers under the launcher process (from /proc)."""
    children = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        children += (task / "children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        try:
            env = dict(
                kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv
            )
        except OSError:
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


@dataclass(frozen=True)
class Job:
    out: Path
    tracking_uri: str
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def restarted_job(tmp_path_factory, mlflow_store_template) -> Job:
    """``torchrun --standalone --nproc-per-node 2 --max-restarts 1 -m adrisk train`` on the tiny
    config, rank 1 SIGKILLed as soon as the first checkpoint exists (step 5 of 15 in epoch 1)."""
    root = tmp_path_factory.mktemp("torchrun")
    env = _store(root, mlflow_store_template)
    out = root / "out"
    cmd = _command(out)
    cmd.insert(cmd.index("-m", 3), "--max-restarts=1")
    log = (root / "stdout", root / "stderr")  # files: a full pipe would stall the workers
    with log[0].open("w") as o, log[1].open("w") as e:
        launcher = subprocess.Popen(cmd, cwd=root, env=env, stdout=o, stderr=e)
    try:
        ckpt = out / "checkpoints" / "last.pt"
        deadline = time.time() + 300
        while not ckpt.exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.01)
        workers = _worker_pids(launcher.pid)
        assert set(workers) == {0, 1}, f"no worker to kill: {workers}, {log[1].read_text()[-3000:]}"
        os.kill(workers[1], signal.SIGKILL)
        launcher.wait(timeout=600)
    finally:
        if launcher.poll() is None:  # torchrun passes SIGTERM on to its workers
            launcher.terminate()
            launcher.wait(timeout=60)
    return Job(out, env["MLFLOW_TRACKING_URI"], launcher.returncode, log[0].read_text(), log[1].read_text())


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(restarted_job, trained_tiny_model):
    job = restarted_job
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count("model URI:") == 1  # rank 0 alone prints (and saves, logs, registers)
    client, runs = _runs(job.tracking_uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["adrisk.train.world_size"] == "2"
    versions = client.search_model_versions("name='risky-ads-tiny'")
    assert [str(v.version) for v in versions] == ["1"]
    assert (job.out / "model" / "adrisk.json").is_file()
    assert sorted(p.name for p in job.out.iterdir() if (p / "adrisk.json").is_file()) == ["model"]

    one_client, _ = _runs(trained_tiny_model.tracking_uri)
    one = one_client.get_run(trained_tiny_model.run_id).data.metrics
    two = run.data.metrics
    assert two["train.steps"] == one["train.steps"] == 30  # the same 2 x 15 global batches
    assert abs(two["validation.macro.ap"] - one["validation.macro.ap"]) <= 0.005
    np.testing.assert_allclose(
        _epoch_aps(client, run.info.run_id), _epoch_aps(one_client, trained_tiny_model.run_id), atol=0.005
    )


@pytest.mark.slow
def test_a_killed_worker_and_the_restarted_job_finishes_from_the_checkpoint(restarted_job):
    """torchrun started the workers again (the same command) and they resumed mid-epoch from the first
    checkpoint, in the killed attempt's MLflow run. (A relaunch with ``--resume`` takes the same
    path: rank 0 reads the checkpoint and every rank gets it.)"""
    job = restarted_job
    assert job.returncode == 0, job.stderr[-3000:]
    assert "torchrun restarted the workers: resuming" in job.stderr
    assert "[rank 1] training.loop: resumed at epoch 0, batch" in job.stderr  # mid-epoch: 15 batches an epoch
    _, runs = _runs(job.tracking_uri)
    assert len(runs) == 1 and runs[0].data.metrics["train.steps"] == 30
    assert (job.out / "model" / "adrisk.json").is_file()
