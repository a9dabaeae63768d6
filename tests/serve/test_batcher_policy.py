"""The micro-batcher's policy with a fake predictor: batches form only under queueing."""

from __future__ import annotations

import asyncio
import threading
import time

from serve.batcher import MicroBatcher


class GatedPredictor:
    """Records each batch; the first batch blocks until ``release`` is set (a slow model call)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def predict(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        self.started.set()
        if len(self.batches) == 1:
            assert self.release.wait(30), "test never released the first batch"
        return [t.upper() for t in texts]  # stand-in predictions, one per text, in order


def _batcher(pred: GatedPredictor, **kw) -> MicroBatcher:
    b = MicroBatcher(lambda: (pred, "v1"), **kw)
    b.start()
    return b


def test_a_request_on_an_idle_server_is_not_held_for_company():
    pred = GatedPredictor()
    pred.release.set()
    b = _batcher(pred, max_batch_size=32, max_wait_ms=5000)  # the old policy would hold it 5 s

    async def main():
        t0 = time.perf_counter()
        out = await b.submit(["a"])
        return out, time.perf_counter() - t0

    try:
        (preds, tag), seconds = asyncio.run(main())
    finally:
        b.stop()
    assert preds == ["A"] and tag == "v1" and pred.batches == [["a"]]
    assert seconds < 2.5  # far below the 5 s wait


def _run_queued(pred: GatedPredictor, b: MicroBatcher, first: list[str], queued: list[list[str]]):
    """Submit ``first``; while the model is busy with it, queue ``queued`` (in order); release."""

    async def main():
        t_first = asyncio.create_task(b.submit(first))
        await asyncio.to_thread(pred.started.wait, 30)
        tasks = []
        for texts in queued:
            tasks.append(asyncio.create_task(b.submit(texts)))
            await asyncio.sleep(0)  # enqueue in this order
        while b.depth < len(first) + sum(map(len, queued)):
            await asyncio.sleep(0.005)
        pred.release.set()
        return await asyncio.gather(t_first, *tasks)

    try:
        return asyncio.run(main())
    finally:
        b.stop()


def test_requests_queued_behind_a_running_batch_are_scored_together_next():
    pred = GatedPredictor()
    b = _batcher(pred, max_batch_size=32, max_wait_ms=0)
    results = _run_queued(pred, b, ["a"], [["b"], ["c", "d"], ["e"]])
    assert pred.batches == [["a"], ["b", "c", "d", "e"]]
    assert [r[0] for r in results] == [["A"], ["B"], ["C", "D"], ["E"]]  # each request its own slice


def test_a_job_that_would_overflow_the_batch_leads_the_next_one_in_order():
    pred = GatedPredictor()
    b = _batcher(pred, max_batch_size=4, max_wait_ms=0)
    results = _run_queued(pred, b, ["a"], [["b", "c", "d"], ["e", "f"], ["g"], ["h", "i", "j", "k", "l"]])
    # 3 fit; 3+2 would not: "e f" leads the next batch with "g"; the 5-text request runs alone
    assert pred.batches == [["a"], ["b", "c", "d"], ["e", "f", "g"], ["h", "i", "j", "k", "l"]]
    assert [r[0] for r in results][-1] == ["H", "I", "J", "K", "L"]


def test_under_load_the_batch_waits_for_more_up_to_its_size():
    pred = GatedPredictor()
    b = _batcher(pred, max_batch_size=3, max_wait_ms=10_000)

    async def main():
        t_a = asyncio.create_task(b.submit(["a"]))
        await asyncio.to_thread(pred.started.wait, 30)
        t_b = asyncio.create_task(b.submit(["b"]))
        t_c = asyncio.create_task(b.submit(["c"]))
        while b.depth < 3:
            await asyncio.sleep(0.005)
        pred.release.set()
        await asyncio.sleep(0.2)  # b, c are queued -> the batch waits for company; d fills it
        t0 = time.perf_counter()
        d = await b.submit(["d"])
        return await asyncio.gather(t_a, t_b, t_c), d, time.perf_counter() - t0

    try:
        _, d, seconds = asyncio.run(main())
    finally:
        b.stop()
    assert pred.batches == [["a"], ["b", "c", "d"]]
    assert d[0] == ["D"] and seconds < 5  # a full batch runs at once, not at the end of the wait
