"""Explanations for ``POST /v1/classify`` with ``"explain": true``, on their own queue and thread.

Plain scoring keeps its micro-batcher; an explain request is scored there like any other (same
results), then its texts go to this queue: ONE worker thread runs ``model.explain.Explainer``
(occlusion, small forward batches) and, before each forward batch, waits while plain texts are queued
(at most ``max_yield_s`` per batch, so explanations still progress under constant load). Its forward
passes do not take the predictor's lock (``lock_forward=False``), so a plain batch that arrives during
one runs at once beside it instead of waiting, and the thread runs at a lower OS priority (nice +10,
Linux), so the plain batch gets the CPU first. The number of texts waiting for explanation is bounded
(``ExplainQueueFull`` beyond ``queue_size``: a 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from model.explain import DEFAULT_TOP_K, Explainer

logger = logging.getLogger(__name__)


# The explain thread's nice value (Linux: per thread). With single-threaded forward passes the work runs
# on this thread, so the OS gives plain scoring the CPU first when both want it.
EXPLAIN_NICE = 10


def _lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (best effort: Linux applies setpriority to one
    thread id; elsewhere, or without permission, nothing changes)."""
    import os

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):
        pass


class ExplainQueueFull(Exception):
    """More texts are waiting for explanation than the explain queue admits."""


class ExplainQueue:
    """A bounded queue and one thread for explanations.

    Args:
        plain_depth: returns the number of plain texts waiting or being scored (the batcher's ``depth``).
        queue_size: most texts waiting for explanation at once.
        top_k: spans per label.
        batch_size: rows per forward pass (small: the yield check runs between them).
        max_yield_s: longest wait for the plain queue to drain before each forward batch.
    """

    def __init__(
        self,
        plain_depth: Callable[[], int],
        queue_size: int = 32,
        top_k: int = DEFAULT_TOP_K,
        batch_size: int = 4,
        max_yield_s: float = 1.0,
    ):
        self.plain_depth = plain_depth
        self.queue_size = queue_size
        self.top_k = top_k
        self.batch_size = batch_size
        self.max_yield_s = max_yield_s
        self._pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="adrisk-explain",
            initializer=_lower_thread_priority,
            initargs=(EXPLAIN_NICE,),
        )
        self._waiting = 0
        self._lock = threading.Lock()
        self._explainer: Explainer | None = None

    @property
    def depth(self) -> int:
        """Texts waiting for or being explained."""
        return self._waiting

    def stop(self) -> None:
        """Finish queued work and stop the thread."""
        self._pool.shutdown(wait=True)

    def _yield(self) -> None:
        deadline = time.perf_counter() + self.max_yield_s
        while self.plain_depth() > 0 and time.perf_counter() < deadline:
            time.sleep(0.002)

    def _explainer_for(self, predictor) -> Explainer:
        if self._explainer is None or self._explainer.predictor is not predictor:  # a model swap
            self._explainer = Explainer(
                predictor, batch_size=self.batch_size, before_batch=self._yield, lock_forward=False
            )
        return self._explainer

    def _run(self, predictor, texts: list[str], labels: list[list[str]]) -> list[dict[str, list[dict]]]:
        ex = self._explainer_for(predictor)
        out: list[dict[str, list[dict]]] = []
        for text, names in zip(texts, labels, strict=True):
            if not names:
                out.append({})
                continue
            res = ex.explain([text], labels=names, top_k=self.top_k)[0]
            out.append({n: [s.to_dict() for s in spans] for n, spans in res.items()})
        return out

    async def submit(
        self, predictor, texts: list[str], labels: list[list[str]]
    ) -> list[dict[str, list[dict]]]:
        """Explain ``texts`` for ``labels[i]`` (one list of label names per text, e.g. its flagged labels).

        Returns:
            One ``{label: [{"start", "end", "score"}, ...]}`` per text (strongest first).

        Raises:
            ExplainQueueFull: the queue holds ``queue_size`` texts already.
        """
        with self._lock:
            if self._waiting and self._waiting + len(texts) > self.queue_size:
                raise ExplainQueueFull(f"{self._waiting} texts waiting for explanation")
            self._waiting += len(texts)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._run, predictor, texts, labels)
        finally:
            with self._lock:
                self._waiting -= len(texts)
