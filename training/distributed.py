"""Data-parallel training across processes (``torchrun``, ``accelerate launch``, Spark's
``TorchDistributor``): the plumbing the fine-tuning loop needs, and nothing when there is one process.

A launcher starts N copies of ``adrisk train`` and gives each the ``torchrun`` environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; see the PyTorch docs,
"torchrun (Elastic Launch)"). ``setup`` initialises the default process group from it only when
``WORLD_SIZE > 1``: the gloo backend on CPU, NCCL when CUDA is present (one GPU per local rank).
With one process, ``setup`` returns ``SINGLE`` and touches nothing of ``torch.distributed``: the
single-process path pays no cost.

How the loop uses it (``training/loop.py``, docs/scale-out.md):

* every rank builds the same batch list (``epoch_batches`` on the GLOBAL ``train.batch_size``, the
  length bucketing unchanged) and trains on its own disjoint share of each batch (``shard``), so the
  global batch is ``train.batch_size`` whatever the number of processes and a run matches the
  one-process run at the same seed up to rounding and dropout draws;
* gradients are averaged by ``torch.nn.parallel.DistributedDataParallel`` (``wrap``); each rank's
  loss is weighted by its share of the batch, so uneven shares still give the global batch's mean;
* validation is sharded across ranks and gathered (``gather``), so every rank takes the same
  early-stopping decision; rank 0 alone writes checkpoints and the best weights, and after the loop
  rank 0 alone calibrates, evaluates, logs to MLflow and saves and registers the artifact;
* a resume reads the checkpoint on rank 0 and ``broadcast``s it (the other machines need no copy of
  the output directory).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# How long a rank waits in a collective for the others (rank 0 may compute the TF-IDF baseline while
# the others wait to start the loop): long, since torchrun itself notices a dead worker.
TIMEOUT_ENV = "ADRISK_DDP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size`` processes (``local_rank`` on its
    machine) and the device it trains on (``cpu``, or ``cuda:<local_rank>`` under NCCL)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, writes checkpoints and saves the artifact."""
        return self.rank == 0


SINGLE = Dist()
_current: Dist = SINGLE


def env_world_size() -> int:
    """``WORLD_SIZE`` as the launcher set it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup() -> Dist:
    """Join the process group when launched with ``WORLD_SIZE > 1`` (idempotent); else ``SINGLE``.

    The backend is NCCL when CUDA is available (the process then uses GPU ``LOCAL_RANK``), else gloo.
    The rendezvous is the launcher's (``init_method="env://"``).
    """
    global _current
    if env_world_size() <= 1:
        return SINGLE
    if _current.active:
        return _current
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        backend = "nccl" if cuda else "gloo"
        store = _attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        else:
            rank, world = int(os.environ["RANK"]), env_world_size()
            dist.init_process_group(
                backend=backend, store=store, rank=rank, world_size=world, timeout=timeout
            )
    _current = Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)
    logger.info(
        "distributed: rank %d of %d (%s, %s)",
        _current.rank,
        _current.world_size,
        dist.get_backend(),
        device,
    )
    return _current


def _attempt_store(timeout: datetime.timedelta) -> Any:
    """Under torchrun (torchelastic), the launcher's store with a prefix per restart attempt, else None
    (``env://``). Without it, the workers that ``torchrun --max-restarts`` starts again read the
    previous attempt's gloo addresses from the shared store and fail to connect (torch 2.13)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or "MASTER_ADDR" not in os.environ:
        return None
    import torch.distributed as dist

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        env_world_size(),
        is_master=int(os.environ["RANK"]) == 0 and not agent_store,
        timeout=timeout,
    )
    return dist.PrefixStore(f"adrisk/attempt_{attempt}", store)


def current() -> Dist:
    """This process's ``Dist`` once ``setup`` has run (``SINGLE`` before, and with one process)."""
    return _current


def shutdown() -> None:
    """Leave the process group (end of ``adrisk train``/``retrain``); nothing with one process."""
    global _current
    if _current.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _current = SINGLE


def elastic_restart() -> bool:
    """True in a worker that ``torchrun --max-restarts`` started again after a failure
    (``TORCHELASTIC_RESTART_COUNT > 0``): ``adrisk train`` then resumes from the last checkpoint."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def shard(batch: np.ndarray, d: Dist) -> np.ndarray:
    """This rank's disjoint share of one global batch: every ``world_size``-th row from ``rank``.

    The batch is length-sorted (``epoch_batches``), so the strided shares have near-equal lengths and
    padding, hence near-equal step times; together they are the whole batch."""
    return batch[d.rank :: d.world_size] if d.active else batch


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; tensors inside included)."""
    if not d.active:
        return obj
    import torch.distributed as dist

    box = [obj if d.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    """Wait until every rank gets here."""
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def wrap(model: Any, d: Dist) -> Any:
    """``model`` wrapped in ``DistributedDataParallel`` (gradients averaged across ranks during
    ``backward``), over the parameters that require a gradient now: rebuild it when that set changes
    (the LP-FT probe phase ends). With one process, ``model`` itself.

    Buffers are not re-broadcast each step (BERT's are constants); parameters are broadcast from
    rank 0 once, here."""
    if not d.active:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [d.local_rank] if d.device.startswith("cuda") else None
    # torch >= 2.13 renames broadcast_buffers (and warns on the old name)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync: dict[str, Any] = {
        "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False
    }
    return DistributedDataParallel(model, device_ids=ids, **sync)
