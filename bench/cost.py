"""What one synchronous POST /api/prompt costs the stack: CPU, SQL statements and commits, Redis commands.

Throughput on a shared 2-core machine swings with whatever else runs on it; these counts do not. The script
starts the same stack as bench.throughput (private redis-server, temporary database, simulator, gunicorn
gevent web, one Celery prompts worker), sends a bounded closed loop of synchronous prompts, and divides by
the successful requests:

  * CPU-ms of the web and worker process trees (user + sys, from /proc),
  * SQL statements by verb, commits, rollbacks and pool checkouts (a checkout may ping the server), counted
    in the web and worker processes by SQLAlchemy engine and pool events (installed through a generated
    sitecustomize on PYTHONPATH; the product has no hook),
  * Redis commands by name, from the private server's INFO commandstats (reset before the run).

    .venv/bin/python -m bench.cost --db postgres --requests 300 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from bench import throughput
from tests.support.stack import http

# Loaded by every Python process of the stack (PYTHONPATH); counts what each engine sends to the database
# and dumps the tallies to BENCH_SQL_COUNT_DIR/<pid>.json every half second.
SITECUSTOMIZE = """
import collections, json, os, threading, time
_dir = os.environ.get("BENCH_SQL_COUNT_DIR")
if _dir:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool
    _counts = collections.Counter()

    def _dump_every_half_second():
        while True:
            time.sleep(0.5)
            path = os.path.join(_dir, f"{os.getpid()}.json")
            try:
                tally = json.dumps(dict(_counts))
            except RuntimeError:  # changed while copied; the next round catches up
                continue
            with open(path + ".tmp", "w") as f:
                f.write(tally)
            os.replace(path + ".tmp", path)

    def _start():
        _counts.clear()
        threading.Thread(target=_dump_every_half_second, daemon=True).start()

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):
        _counts["sql:" + statement.lstrip().split(None, 1)[0].upper()] += 1
        _counts["sql"] += 1

    @event.listens_for(Pool, "checkout")
    def _checkout(dbapi_connection, record, proxy):
        _counts["pool_checkout"] += 1

    @event.listens_for(Engine, "commit")
    def _commit(conn):
        _counts["commit"] += 1

    @event.listens_for(Engine, "rollback")
    def _rollback(conn):
        _counts["rollback"] += 1

    _start()
    os.register_at_fork(after_in_child=_start)
"""


def sql_counts(directory: Path, pids: list[int]) -> Counter[str]:
    """Sum the tallies the processes `pids` last dumped."""
    total: Counter[str] = Counter()
    for path in (directory / f"{pid}.json" for pid in pids):
        with contextlib.suppress(OSError, ValueError):
            total.update(json.loads(path.read_text()))
    return total


def redis_commands(client: redis.Redis) -> Counter[str]:
    """Return the server's calls per command since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})


def start_profilers(directory: Path, pids: dict[str, list[int]], *, seconds: int) -> list[subprocess.Popen[bytes]]:
    """Start one py-spy recorder per web or worker process that has Python code running (not gunicorn's master)."""
    directory.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    profilers = []
    for name, group in pids.items():
        for pid in group[1:] if name == "web" else group:
            output = directory / f"{name}-{pid}.txt"
            command = [str(py_spy), "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw",
                       "--rate", "200", "--gil", "--nonblocking", "--output", str(output)]  # fmt: skip
            profilers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # attached before the load starts
    return profilers


def per_request(counts: Counter[str], requests: int) -> dict[str, float]:
    return {name: round(value / requests, 2) for name, value in sorted(counts.items()) if value}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=0, help="the simulator's upstream latency")
    parser.add_argument("--cap-s", type=float, default=60.0, help="wall-clock cap of the measured run")
    parser.add_argument("--web-concurrency", type=int, default=2)
    parser.add_argument("--worker-processes", type=int, default=1)
    parser.add_argument("--worker-pool", choices=("gevent", "threads"), default=None)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy profiles of the web and worker processes (collapsed stacks of GIL holders: CPU, not waits)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-cost-") as scratch:
        work_dir = Path(scratch)
        hook_dir, count_dir = work_dir / "hook", work_dir / "sql"
        hook_dir.mkdir()
        count_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")]))
        os.environ["BENCH_SQL_COUNT_DIR"] = str(count_dir)
        with throughput.router_stack(args, work_dir) as (stack, _tuning):
            http("POST", f"{stack.sim}/sim/config", {"reset": True, "latency_ms": args.latency_ms})
            target = throughput.Target("router", f"{stack.web}/api/prompt", {
                "web": [stack.processes["web"].pid],
                "worker": [p.pid for n, p in stack.processes.items() if n.startswith("worker")],
            })  # fmt: skip
            # Warm-up: connections, threads, the month's budget row; not counted.
            warm = min(args.concurrency, 32)
            asyncio.run(throughput.load(target, concurrency=warm, requests=warm * 2, cap_s=args.cap_s,
                                        first_number=10_000_000, sample=None))  # fmt: skip
            time.sleep(1.0)
            broker = redis.Redis.from_url(stack.env["REDIS_URL"])
            pids = {name: throughput.tree(roots) for name, roots in target.groups.items()}
            cpu_before = {name: throughput.cpu_ticks(p) for name, p in pids.items()}
            sql_before = {name: sql_counts(count_dir, p) for name, p in pids.items()}
            broker.config_resetstat()
            profilers = start_profilers(args.profile, pids, seconds=int(args.cap_s)) if args.profile else []
            figures = asyncio.run(throughput.load(target, concurrency=args.concurrency, requests=args.requests,
                                                  cap_s=args.cap_s, first_number=0, sample=None))  # fmt: skip
            redis_after = redis_commands(broker)
            for profiler in profilers:
                profiler.send_signal(signal.SIGINT)  # py-spy writes what it has recorded and exits
                profiler.wait(timeout=30)
            cpu_after = {name: throughput.cpu_ticks(throughput.tree(roots)) for name, roots in target.groups.items()}
            time.sleep(1.5)  # every process dumps its tallies each half second (SITECUSTOMIZE)
            sql_after = {name: sql_counts(count_dir, p) for name, p in pids.items()}
            broker.close()
    ok = max(1, figures["ok"])
    cpu = {name: round((cpu_after[name] - cpu_before[name]) * 1000 / throughput.CLK_TCK / ok, 2) for name in pids}
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "profile")},
        "ok": figures["ok"],
        "errors": figures["errors_by_kind"],
        "rps_noisy": figures["rps"],
        "p50_ms_noisy": figures["p50_ms"],
        "cpu_ms_per_request": {**cpu, "total": round(sum(cpu.values()), 2)},
        "sql_per_request": {name: per_request(sql_after[name] - sql_before[name], ok) for name in pids},
        "redis_commands_per_request": {
            "total": round(sum(redis_after.values()) / ok, 2),
            **per_request(redis_after, ok),
        },
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
