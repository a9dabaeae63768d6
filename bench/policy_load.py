"""Load test of the moderation policy and the decision log: what logging every decision costs, and
whether policy reloads under load drop a request or mislabel a decision.

Starts ``adrisk serve --policy F`` (a policy with bands, a tenant override, a term list and a contact
blocklist) once with the decision log (the default) and once with ``--no-decision-log``, alternating
which goes first per round; ``--clients`` concurrent clients send single-ad requests, and the policy
file is replaced twice mid-run (new versions). Prints per mode: decisions, requests/s, p50 / p99
latency, errors, the policy versions answered; for the log: the throughput it costs, then
``adrisk audit verify`` and ``replay`` over the log written under load (chain intact, 100% of
actions re-derived) and whether every logged decision carries the policy version its answer named.

    .venv/bin/python bench/policy_load.py                       # the tests' tiny model: the log's worst case
    .venv/bin/python bench/policy_load.py --model models:/risky-ads@champion
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

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.serve_load import wait_until_ready  # noqa: E402

HOST = "127.0.0.1"
CONTACT_KEY = "bench contact key"
AUDIT_KEY = "bench audit key"
ADS = [
    "Sweet new girl in town, call me 24/7 incall outcall 949-667-2201",
    "2 bedroom apartment for rent near downtown, no pets, $1200/month",
    "Work from home! Earn $5000 a week, just send a small fee to start",
    "Full body massage, open late, new girls every week, no cops",
    "Selling my 2012 Honda Civic, 90k miles, one owner, clean title",
    "Looking for models for a photo shoot, travel paid, text kim at gmail dot com",
    "Puppies for sale, shipping available, pay deposit by gift card",
    "Experienced nanny available weekdays, references on request",
]


def write_policy(path: Path, version: str, review_from: float) -> None:
    """A policy file replaced atomically (write, then rename), as a deploy tool would."""
    from signals.contacts import ContactExtractor
    from signals.policy import key_fingerprint

    hashes = sorted({c.value for c in ContactExtractor("US", hash_key=CONTACT_KEY).extract("949-667-2201")})
    band = lambda lo, hi, act: {"from": lo, "to": hi, "action": act}  # noqa: E731
    doc = {
        "version": version,
        "categories": {
            "adult_services": {"actions": [band(review_from, 0.9, "review"), band(0.9, 1.0, "remove")]},
            "trafficking_indicators": {"actions": [band(review_from, 1.0, "review")]},
            "scam": {
                "actions": [band(review_from, 0.8, "review"), band(0.8, 1.0, "remove")],
                "severity": [{"from": 0.5, "to": 1.0, "level": "high"}],
            },
        },
        "tenants": {"default": {"categories": {"scam": {"actions": [band(0.3, 1.0, "remove")]}}}},
        "contact_blocklist": {
            "action": "remove",
            "key_fingerprint": key_fingerprint(CONTACT_KEY),
            "hashes": hashes,
        },
        "terms": {"block": [{"term": "no cops", "action": "review"}]},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc), encoding="utf-8")
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(model: str, policy: Path, db: str | None, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("adrisk")), "serve", "--model", model, "--host", HOST]
    cmd += [
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--queue-size",
        "100000",
        "--policy",
        str(policy),
    ]
    cmd += ["--decisions-db", db] if db else ["--no-decision-log"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ADRISK_CONTACT_HASH_KEY": CONTACT_KEY,
        "ADRISK_AUDIT_KEY": AUDIT_KEY,
        "ADRISK_POLICY_POLL_S": "0.2",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    base = f"http://{HOST}:{port}"
    return proc, wait_until_ready(proc, base, log)


class Connection:
    """One keep-alive HTTP/1.1 connection posting JSON (little client CPU on a shared machine)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        response = await self.reader.readuntil(b"\r\n\r\n")
        for line in response.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                return int(response[9:12]), await self.reader.readexactly(int(line[15:]))
        raise RuntimeError("response without Content-Length")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def drive(base: str, clients: int, requests: int, policy: Path, reload_every: float) -> dict:
    """``clients`` x ``requests`` single-ad requests; the policy file is replaced after a third and
    two thirds of them. Returns latencies, errors and each answer's (decision_id, policy_version)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conns = [Connection(host, int(port)) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    bodies = [json.dumps({"input": ad}).encode() for ad in ADS]
    latencies: list[float] = []
    answered: dict[str, str] = {}
    errors = 0
    done = 0
    total = clients * requests
    marks = [total // 3, 2 * total // 3]

    async def client(k: int) -> None:
        nonlocal errors, done
        for i in range(requests):
            t0 = time.perf_counter()
            status, payload = await conns[k].post("/v1/classify", bodies[(k + i) % len(bodies)])
            if status != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            res = json.loads(payload)["results"][0]
            answered[res["decision_id"]] = res["policy_version"]
            done += 1
            if marks and done >= marks[0]:
                marks.pop(0)
                write_policy(policy, f"bench-v{3 - len(marks)}", 0.5 - 0.1 * (2 - len(marks)))

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in conns))
    lat = np.asarray(latencies) * 1000
    versions: dict[str, int] = {}
    for v in answered.values():
        versions[v] = versions.get(v, 0) + 1
    return {
        "decisions": len(latencies),
        "errors": errors,
        "seconds": wall,
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "versions": dict(sorted(versions.items())),
        "answered": answered,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def audit(db: str, answered: dict[str, str]) -> dict:
    """Verify and replay the log written under load; check each answered decision is logged under
    the policy version its answer named."""
    from serve.decisions import AuditKeys, DecisionLog
    from serve.decisions_audit import replay, verify

    log = DecisionLog(db, AuditKeys.from_secret(AUDIT_KEY.encode()), must_exist=True)
    v = verify(log)
    r = replay(log)
    logged = {row["decision_id"]: row["policy_version"] for row in log.rows()}
    missing = sum(1 for d in answered if d not in logged)
    wrong = sum(1 for d, ver in answered.items() if d in logged and logged[d] != ver)
    log.engine.dispose()
    return {
        "rows": v.rows,
        "chain_ok": v.ok,
        "replayed": r.agreed,
        "missing": missing,
        "wrong_version": wrong,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model URI or directory (default: the tests' tiny model, built now)")
    p.add_argument("--clients", type=int, default=32, help="concurrent single-ad clients (default 32)")
    p.add_argument("--requests", type=int, default=320, help="requests per client (default 320: 10,240)")
    p.add_argument("--rounds", type=int, default=2, help="log on/off rounds, alternating order (default 2)")
    p.add_argument("--threads", type=int, default=1, help="the server's model threads (default 1)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="adrisk-policy-bench-"))
    model = args.model
    if model is None:
        from tests.conftest import build_tiny_artifact

        model = str(build_tiny_artifact(tmp / "tiny"))
    runs: dict[str, list[dict]] = {"log on (default)": [], "log off": []}
    audits = []
    load0 = os.getloadavg()[0]
    for rnd in range(args.rounds):
        order = list(runs) if rnd % 2 == 0 else list(runs)[::-1]
        for mode in order:
            run_dir = tmp / f"r{rnd}-{'on' if 'on' in mode else 'off'}"
            run_dir.mkdir()
            policy = run_dir / "policy.yaml"
            write_policy(policy, "bench-v1", 0.5)
            db = f"sqlite:///{run_dir / 'decisions.db'}" if "on" in mode else None
            proc, base = start(model, policy, db, args.threads, run_dir / "server.log")
            try:
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                r = asyncio.run(drive(base, args.clients, args.requests, policy, 0))
                r["server_cpu_ms"] = 1000 * (cpu_seconds(proc.pid) - cpu0) / max(1, r["decisions"])
                r["server_cores"] = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            finally:
                proc.terminate()  # graceful: the log's writer commits what is queued
                proc.wait(60)
            if db:
                audits.append(audit(db, r.pop("answered")))
            else:
                r.pop("answered")
            runs[mode].append(r)
            print(f"round {rnd + 1} {mode}: {r['decisions']} decisions, {r['rps']:.1f} req/s, "
                  f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, server CPU {r['server_cpu_ms']:.2f} ms/decision, "
                  f"errors {r['errors']}, versions {r['versions']}", flush=True)  # fmt: skip
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_ms", "server_cores")
    med = {m: {k: float(np.median([x[k] for x in rs])) for k in keys} for m, rs in runs.items()}
    print(
        f"\nmodel {model}; {args.clients} clients x {args.requests} single-ad requests per mode and round; "
        f"policy replaced twice mid-run; rounds {args.rounds} (medians); cores {os.cpu_count()}; "
        f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'mode':<18}{'decisions':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'server CPU ms/decision':>24}{'server cores':>14}"
    )
    for mode, rs in runs.items():
        n, errs = sum(x["decisions"] for x in rs), sum(x["errors"] for x in rs)
        m = med[mode]
        print(
            f"{mode:<18}{n:>10}{m['rps']:>9.1f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}{errs:>8}"
            f"{m['server_cpu_ms']:>24.2f}{m['server_cores']:>14.2f}"
        )
    on, off = med["log on (default)"], med["log off"]
    print(
        f"decision log cost (limit 10%): throughput {100 * (1 - on['rps'] / off['rps']):.1f}% (wall clock, "
        f"shared machine), server CPU per decision {100 * (on['server_cpu_ms'] / off['server_cpu_ms'] - 1):.1f}% "
        "(the throughput cost of a CPU-bound server)"
    )
    for i, a in enumerate(audits):
        print(
            f"log of round {i + 1}: {a['rows']} rows, chain {'intact' if a['chain_ok'] else 'BROKEN'}, "
            f"replay {a['replayed']}/{a['rows']} ({100 * a['replayed'] / max(1, a['rows']):.2f}%), "
            f"answered but not logged {a['missing']}, logged under another version {a['wrong_version']}"
        )
    ok = all(
        a["chain_ok"] and a["replayed"] == a["rows"] and not a["missing"] and not a["wrong_version"]
        for a in audits
    )
    ok &= all(x["errors"] == 0 and len(x["versions"]) == 3 for rs in runs.values() for x in rs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
