"""``adrisk train`` under ``torchrun --standalone --nproc-per-node 2`` (training/distributed.py): the
same validation metrics as the one-process run (the session's tiny model) at the same global batch
and seed, one MLflow run, one registered version, one artifact; a worker SIGKILLed after the first
checkpoint and the job relaunched with ``--resume`` finishes from that checkpoint. Plus the sharding
and the single-process defaults, in process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path, trained_tiny_model, mlflow_store_template):
    env = _store(tmp_path, mlflow_store_template)
    out = tmp_path / "out"
    proc = subprocess.run(_command(out), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model URI:") == 1  # rank 0 alone prints (and saves, logs, registers)
    client, runs = _runs(env["MLFLOW_TRACKING_URI"])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["adrisk.train.world_size"] == "2"
    versions = client.search_model_versions("name='risky-ads-tiny'")
    assert [str(v.version) for v in versions] == ["1"]
    assert (out / "model" / "adrisk.json").is_file()
    assert sorted(p.name for p in out.iterdir() if (p / "adrisk.json").is_file()) == ["model"]

    one_client, _ = _runs(trained_tiny_model.tracking_uri)
    one = one_client.get_run(trained_tiny_model.run_id).data.metrics
    two = run.data.metrics
    assert two["train.steps"] == one["train.steps"]  # the same global batches
    assert abs(two["validation.macro.ap"] - one["validation.macro.ap"]) <= 0.005
    np.testing.assert_allclose(
        _epoch_aps(client, run.info.run_id), _epoch_aps(one_client, trained_tiny_model.run_id), atol=0.005
    )


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


@pytest.mark.slow
def test_a_killed_worker_and_the_restarted_job_finishes_from_the_checkpoint(tmp_path, mlflow_store_template):
    """SIGKILL rank 1 after the first checkpoint (mid-epoch); ``torchrun --max-restarts 1`` starts the
    workers again (the same command) and they resume from that checkpoint, in the same MLflow run.
    (A relaunch with ``--resume`` takes the same path: rank 0 reads the checkpoint, every rank gets it.)"""
    env = _store(tmp_path, mlflow_store_template)
    out = tmp_path / "out"
    cmd = _command(out, "--set", "tracking.register_model=false")  # registration is the test above's
    cmd.insert(cmd.index("-m", 3), "--max-restarts=1")
    log = (tmp_path / "stdout", tmp_path / "stderr")  # files: a full pipe would stall the workers
    with log[0].open("w") as o, log[1].open("w") as e:
        launcher = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=o, stderr=e)
    try:
        ckpt = out / "checkpoints" / "last.pt"
        deadline = time.time() + 300
        while not ckpt.exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.01)
        workers = _worker_pids(launcher.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        launcher.wait(timeout=600)
    finally:
        if launcher.poll() is None:  # torchrun passes SIGTERM on to its workers
            launcher.terminate()
            launcher.wait(timeout=60)
    stdout, stderr = log[0].read_text(), log[1].read_text()
    assert launcher.returncode == 0, stderr[-3000:]
    assert "torchrun restarted the workers: resuming" in stderr
    assert "[rank 1] training.loop: resumed at epoch 0, batch" in stderr  # mid-epoch (15 batches an epoch)
    assert stdout.count("model artifact:") == 1
    _, runs = _runs(env["MLFLOW_TRACKING_URI"])
    assert len(runs) == 1  # the killed attempt's run, continued
    assert runs[0].data.metrics["train.steps"] == 30  # 2 epochs of 15 global batches
    assert (out / "model" / "adrisk.json").is_file()
