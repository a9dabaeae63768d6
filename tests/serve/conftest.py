"""Fixtures for serving tests: real servers on loopback ports (a subprocess running ``adrisk serve``,
or uvicorn in a thread around ``create_app`` with an injected model loader)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli_env

REPO = Path(__file__).resolve().parents[2]
ADRISK = Path(sys.executable).with_name("adrisk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``/readyz`` until 200; fail with the reason after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server at {base} not ready after {timeout}s")


class ServerProcess:
    """``adrisk serve`` in a subprocess; stderr (the logs) goes to ``log_path``. It runs in ``cwd``,
    by default ``log_path``'s directory: what it writes there (the decision log, its key) stays out of
    the checkout."""

    def __init__(
        self, args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = cli_env(**(env or {}))
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [str(ADRISK), "serve", "--port", str(self.port), "--threads", "1", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or log_path.parent,
        )

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def server(tiny_artifact, tmp_path_factory) -> Iterator[ServerProcess]:
    """A real ``adrisk serve`` on the tiny model (batching on: max batch 32, wait 5 ms)."""
    srv = ServerProcess(
        ["--model", str(tiny_artifact), "--max-batch-size", "32", "--max-wait-ms", "5"],
        tmp_path_factory.mktemp("server") / "server.log",
    )
    try:
        wait_ready(srv.base, proc=srv.proc)
        yield srv
    finally:
        srv.stop()


class ThreadServer:
    """uvicorn in a background thread serving ``create_app(settings, loader)``."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture()
def thread_server(tiny_artifact, tiny_predictor) -> Callable[..., ThreadServer]:
    """Factory: ``thread_server(predictor=..., loader=..., **settings)`` -> a ThreadServer (use as ``with``)."""
    from model.uri import ModelRef
    from serve.app import create_app
    from serve.settings import Settings
    from serve.state import LoadedModel

    def make(predictor=None, loader=None, **settings) -> ThreadServer:
        pred = predictor or tiny_predictor

        def default(uri, dst):
            return LoadedModel(
                pred,
                ModelRef(uri=uri, directory=tiny_artifact, name="risky-ads"),
                datetime.now(timezone.utc).isoformat(),
            )

        s = Settings(model=str(tiny_artifact), **settings)
        return ThreadServer(create_app(s, loader=loader or default))

    return make
