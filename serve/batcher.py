"""Micro-batching: concurrent requests are coalesced into model batches run by ONE worker thread.

The event loop ``submit``s a request's texts and awaits a future; the worker takes the first
waiting job plus every job already queued behind it, up to ``max_batch_size`` texts, scores them in
one ``predict`` call with whichever model is current, and routes each job its slice of the results
in order. Batches form only under queueing (as in text-embeddings-inference's router): a request
that finds the worker idle is scored at once, never held back for company; requests that arrive
while a batch runs are scored together next. Only when other jobs were already queued (the server
is under load) does the batch wait up to ``max_wait_ms`` for more. Measured with
``bench/serve_load.py`` (docs/performance.md): the earlier policy, which held every first job for
``max_wait_ms``, had a worse p99 than no batching at all. The number of waiting texts is bounded: beyond ``queue_size`` ``submit`` raises
``QueueFull`` at once instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model.predictor import Prediction

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More texts are waiting than the queue admits; retry later."""


class NotReady(Exception):
    """No model is loaded yet."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Coalesce concurrent scoring requests into batches for one inference thread.

    Args:
        get_model: returns the current ``(predictor, tag)`` or None when no model is loaded; called
            once per batch, so a model swap takes effect at a batch boundary. ``tag`` (e.g. the
            model's name/version) is returned with each job's results.
        max_batch_size: most texts per batch (a single larger request runs as its own batch).
        max_wait_ms: how long a batch that already holds queued jobs waits for more (milliseconds); a
            job that finds the queue empty never waits.
        queue_size: most texts waiting at once.
        on_batch: optional callback ``(n_texts, seconds)`` after each batch (metrics).
        on_depth: optional callback ``(waiting_texts)`` when the queue depth changes.
    """

    def __init__(
        self,
        get_model: Callable[[], tuple[object, object] | None],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        queue_size: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        self.get_model = get_model
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.on_depth = on_depth
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None  # a job too big to join the last batch: first of the next
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Texts waiting or being scored."""
        return self._waiting

    def start(self) -> None:
        """Start the inference thread."""
        self._thread = threading.Thread(target=self._run, name="adrisk-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let the inference thread finish queued work, then stop it."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    async def submit(self, texts: list[str]) -> tuple[list[Prediction], object]:
        """Score ``texts``; returns their predictions in order and the tag of the model that scored them.

        Raises:
            QueueFull: the queue holds ``queue_size`` texts already.
            NotReady: no model is loaded.
        """
        with self._lock:
            if self._waiting and self._waiting + len(texts) > self.queue_size:
                raise QueueFull(f"{self._waiting} texts waiting")
            self._waiting += len(texts)
            depth = self._waiting
        if self.on_depth:
            self.on_depth(depth)
        loop = asyncio.get_running_loop()
        job = _Job(texts, loop.create_future(), loop)
        self._jobs.put(job)
        return await job.future

    def _release(self, n: int) -> None:
        with self._lock:
            self._waiting -= n
            depth = self._waiting
        if self.on_depth:
            self.on_depth(depth)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job plus the jobs queued behind it, up to the batch size; see the module doc.

        Returns the batch and whether the stop sentinel was met. A job that would overflow the
        batch is kept (``_carry``) as the first job of the next batch, so order is preserved."""
        batch, n = [first], len(first.texts)
        deadline = None
        while n < self.max_batch_size:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                if len(batch) == 1 or self.max_wait_s <= 0:
                    break  # idle server, or no waiting configured: run what we have now
                if deadline is None:
                    deadline = time.perf_counter() + self.max_wait_s
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is None:
                return batch, True
            if n + len(job.texts) > self.max_batch_size:
                self._carry = job
                break
            batch.append(job)
            n += len(job.texts)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first, self._carry = self._carry or self._jobs.get(), None
            if first is None:
                break
            batch, stopping = self._gather(first)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        texts = [t for job in batch for t in job.texts]
        t0 = time.perf_counter()
        try:
            current = self.get_model()
            if current is None:
                raise NotReady("no model loaded")
            predictor, tag = current
            preds = predictor.predict(texts)  # type: ignore[attr-defined]  # any object with predict()
        except Exception as e:  # routed to each waiting request; never kills the worker
            if not isinstance(e, NotReady):
                logger.error("batch of %d texts failed: %s", len(texts), type(e).__name__)
            for job in batch:
                job.loop.call_soon_threadsafe(_set_exception, job.future, e)
        else:
            start = 0
            for job in batch:
                part = preds[start : start + len(job.texts)]
                start += len(job.texts)
                job.loop.call_soon_threadsafe(_set_result, job.future, (part, tag))
        finally:
            self._release(len(texts))
        if self.on_batch:
            self.on_batch(len(texts), time.perf_counter() - t0)


def _set_result(fut: asyncio.Future, value) -> None:
    if not fut.done():  # the client may have gone away
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)
