"""Fork safety (issue 9, kind 4): a predictor warmed up with 2 intra-op threads still scores in a child
forked after the warm-up (gunicorn --preload, Spark workers and multiprocessing pools fork), for torch
and for ONNX Runtime, with the same scores as the parent.

The child runs under ``multiprocessing``'s fork context and is killed after ``CHILD_TIMEOUT_S``: a
hang is a test failure, never a stuck CI job.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys

import numpy as np
import pytest

from model.predictor import Predictor

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork start method (Linux)")

CHILD_TIMEOUT_S = 30
TEXTS = ["cheap flat near the station, call now " * 6, "sweet girl new in town " * 8] * 16


def _scores(predictor: Predictor) -> np.ndarray:
    return np.array([[p.category_scores[n] for n in predictor.labels] for p in predictor.predict(TEXTS)])


def _score_in_forked_child(predictor: Predictor) -> tuple[np.ndarray, dict]:
    ctx = mp.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            scores = _scores(predictor)
            child_end.send((scores, {"pid": os.getpid(), "runtime_pid": predictor.runtime._pid}))
        except BaseException as e:  # report, never hang the parent on recv
            child_end.send((None, {"error": f"{type(e).__name__}: {e}"}))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    try:
        if not parent_end.poll(CHILD_TIMEOUT_S):
            pytest.fail(f"scoring in a forked child did not finish in {CHILD_TIMEOUT_S}s (hang after fork)")
        scores, info = parent_end.recv()
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    assert scores is not None, info
    return scores, info


def _check(predictor: Predictor) -> dict:
    parent = _scores(predictor)  # warm-up: the runtime's thread pool is live before the fork
    child, info = _score_in_forked_child(predictor)
    np.testing.assert_allclose(child, parent, atol=1e-5)
    assert info["pid"] != os.getpid()
    np.testing.assert_allclose(_scores(predictor), parent, atol=1e-6)  # the parent is unaffected
    return info


@pytest.mark.timeout(90)
def test_torch_runtime_scores_in_child_forked_after_warm_up(tiny_artifact):
    predictor = Predictor.load(tiny_artifact, runtime="torch", num_threads=2)
    _check(predictor)


@pytest.mark.timeout(120)
def test_onnx_runtime_scores_in_child_forked_after_warm_up(tiny_artifact, tmp_path):
    from training.onnx_export import add_onnx_variants

    d = tmp_path / "model"
    shutil.copytree(tiny_artifact, d)
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    texts = ["call now", "cheap flat", "sweet girl", "job offer"]
    # the fp32 export only; its gate's bootstrap interval is not what this test is about (test_onnx.py)
    add_onnx_variants(d, texts, targets, quantize=False, num_threads=1, confidence=None)
    predictor = Predictor.load(d, runtime="onnx-fp32", num_threads=2)
    info = _check(predictor)
    assert info["runtime_pid"] == info["pid"]  # the child made its own session


@pytest.mark.timeout(150)
def test_fork_while_another_thread_scores_does_not_deadlock_the_child(tiny_artifact):
    """A fork taken while another thread is inside ``Predictor.score`` (a server thread scoring while a
    worker pool forks): the child inherits the lock held, but must re-create it and score."""
    import threading

    predictor = Predictor.load(tiny_artifact, runtime="torch", num_threads=1)
    parent = _scores(predictor)
    entered, release = threading.Event(), threading.Event()
    real = predictor.runtime.logits

    def blocking(ids, mask):
        entered.set()
        release.wait(60)
        return real(ids, mask)

    predictor.runtime.logits = blocking  # type: ignore[method-assign]
    scorer = threading.Thread(target=predictor.score, args=(["held while forking"],), daemon=True)
    scorer.start()
    try:
        assert entered.wait(30), "the scoring thread never reached the runtime"
        predictor.runtime.logits = real  # type: ignore[method-assign]  # the child scores normally
        child, _ = _score_in_forked_child(predictor)  # forks while the thread holds the lock
    finally:
        release.set()
        scorer.join(30)
    np.testing.assert_allclose(child, parent, atol=1e-5)
    np.testing.assert_allclose(_scores(predictor), parent, atol=1e-6)  # the parent's lock works after
