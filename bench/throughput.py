"""Throughput and latency of the whole stack under load, against the simulator called directly (and LiteLLM).

Starts its own stack on loopback, as `make run` does but tuned for the run: a private redis-server on a free
port, a database (a temporary SQLite file, or a temporary PostgreSQL database on the local server, dropped
afterwards), the simulator, gunicorn with gevent workers and a Celery `prompts` worker (threads pool). Then,
for each upstream latency (set on the simulator at run time) and each concurrency, it runs a bounded, closed
loop load generator (aiohttp, in this process) against:

  * direct:  POST /v1/chat/completions on the simulator (the floor: what the upstream alone costs),
  * router:  POST /api/prompt on the router (synchronous, wait=true),
  * litellm: POST /chat/completions on LiteLLM's proxy (with --compare), pointing at the same simulator.

Every cell is bounded by a request count and a wall-clock cap (--cell-cap-s, default 20 s): no new request
starts after the cap, and requests still in flight 10 s later are cancelled and counted as errors.
Measured per cell: requests/s, p50/p95/p99 latency, errors, added p50 latency (target minus direct, same
run), peak memory (RSS and PSS, sampled every 0.25 s) and CPU-ms per request of the target's processes.
Also measured: the routing decision's median time per prompt (estimate_difficulty + route), in-process.

The machine has 2 cores: the load generator, the simulator and the stack under test share them.

    .venv/bin/python -m bench.throughput --quick
    .venv/bin/python -m bench.throughput --compare          # also LiteLLM's proxy, and the ratios
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from shared.routing.catalog import load_catalog
from shared.routing.difficulty import estimate_difficulty
from shared.routing.policy import route
from shared.store import migrate
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.chaos import PrivateRedis
from tests.support.stack import Stack
from tests.support.stack import free_port
from tests.support.stack import http
from tests.support.stack import worker_command

MODEL = "gpt-3.5-turbo"  # what the router picks for the bench's easy prompts (checked, and reported)
MAX_TOKENS = 256
LATENCIES_MS = (0, 50, 2000)
CONCURRENCIES = (1, 16, 64, 256)
QUICK_CELLS = ((0, 1), (50, 64), (2000, 256))
GRACE_S = 10.0  # in-flight requests get this long after the cell's cap before they are cancelled
CLK_TCK = os.sysconf("SC_CLK_TCK")
LITELLM_VENV = Path(tempfile.gettempdir()) / "litellm-venv"
CPU_NOTE = f"{os.cpu_count()} CPU cores shared by the load generator, simulator and stack under test"


def prompt_for(number: int) -> str:
    # Unique (no cache can help), easy (cheap tier) and answered surely (no escalation).
    return f"Question {number}: what is {number} + {number % 7}?"


# ---------------------------------------------------------------- process accounting (/proc, no psutil)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pids: list[int]) -> list[int]:
    """The processes `pids` and all their descendants."""
    children = _children_map()
    seen: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(children.get(pid, []))
    return seen


def cpu_ticks(pids: list[int], *, reaped: bool = False) -> int:
    """utime + stime of `pids`; with `reaped`, plus that of their exited, waited-for children (cutime + cstime)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            if reaped:
                total += int(fields[13]) + int(fields[14])
        except (OSError, IndexError):
            pass
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process; the local server is shared, so other users' load would count too.

    Backends that exit during a phase (pool overflow connections closed on return) are counted through the
    postmaster's reaped-children times.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in ("postgres", "postmaster"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """Summed RSS and PSS (kB) of `pids`; PSS splits pages shared by forked workers fairly."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


class Sampler:
    """Peak summed RSS/PSS of named process groups, sampled from a thread while a phase runs."""

    def __init__(self, groups: dict[str, list[int]], interval_s: float = 0.25) -> None:
        self.roots = groups
        self.interval_s = interval_s
        self.peak: dict[str, dict[str, int]] = {name: {"rss_kb": 0, "pss_kb": 0} for name in groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, roots in self.roots.items():
            rss, pss = memory_kb(tree(roots))
            peak = self.peak[name]
            peak["rss_kb"] = max(peak["rss_kb"], rss)
            peak["pss_kb"] = max(peak["pss_kb"], pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ---------------------------------------------------------------- the load generator


class Target:
    """One HTTP endpoint to load, with the process groups whose CPU and memory count for it."""

    def __init__(self, name: str, url: str, groups: dict[str, list[int]], headers: dict[str, str] | None = None):
        self.name = name
        self.url = url
        self.groups = groups
        self.headers = headers or {}

    def body(self, number: int) -> dict[str, Any]:
        if self.name == "router":
            return {"prompt": prompt_for(number), "max_tokens": MAX_TOKENS, "timeout_s": 60}
        return {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": prompt_for(number)}]}

    def ok(self, status: int, payload: Any) -> bool:
        if status != 200 or not isinstance(payload, dict):
            return False
        if self.name == "router":
            return payload.get("status") == "succeeded"
        return bool(payload.get("choices"))


async def load(
    target: Target,
    *,
    concurrency: int,
    requests: int,
    cap_s: float,
    first_number: int,
    sample: list[Any] | None,
    ramp_s: float = 0.0,
) -> dict[str, Any]:
    """A closed loop: `concurrency` tasks send requests until `requests` were started or `cap_s` passed.

    With `ramp_s`, task i sends its first request i * ramp_s / concurrency seconds in, and the figures also
    give the steady rate: completions per second between the end of the ramp (every task busy) and the moment
    the last request starts (every task still busy).
    """
    latencies: list[float] = []
    finished_at: list[float] = []
    errors: dict[str, int] = {}
    next_number = first_number
    started = 0
    last_started_at = 0.0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=cap_s + GRACE_S)
    begin = time.perf_counter()
    stop_at = begin + cap_s

    async def one(session: aiohttp.ClientSession, delay_s: float) -> None:
        nonlocal next_number, started, last_started_at
        await asyncio.sleep(delay_s)
        while started < requests and time.perf_counter() < stop_at:
            started += 1
            last_started_at = time.perf_counter()
            number = next_number
            next_number += 1
            t0 = time.perf_counter()
            try:
                async with session.post(target.url, json=target.body(number), headers=target.headers) as response:
                    payload = await response.json(content_type=None)
                    status = response.status
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            if target.ok(status, payload):
                latencies.append(elapsed)
                finished_at.append(time.perf_counter())
                if sample is not None and len(sample) < 3:
                    sample.append(payload)
            else:
                key = f"http_{status}" if status != 200 else "not_succeeded"
                errors[key] = errors.get(key, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(one(session, i * ramp_s / concurrency)) for i in range(concurrency)]
        _done, pending = await asyncio.wait(tasks, timeout=cap_s + GRACE_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - begin
    unfinished = started - len(latencies) - sum(errors.values())
    if unfinished:
        errors["cancelled_at_cap"] = unfinished
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

    steady_s = last_started_at - (begin + ramp_s)
    steady = sum(1 for t in finished_at if begin + ramp_s <= t <= last_started_at)
    return {
        "requests": started,
        "ok": len(latencies),
        "ramp_s": ramp_s,
        "steady_rps": round(steady / steady_s, 2) if ramp_s and steady_s > 0 else None,
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "wall_s": round(wall, 3),
        "rps": round(len(latencies) / wall, 2) if wall else 0.0,
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "hit_cap": wall >= cap_s,
    }


def run_phase(
    target: Target,
    *,
    concurrency: int,
    requests: int,
    cap_s: float,
    number: int,
    uses_postgres: bool = False,
    ramp_s: float = 0.0,
) -> dict[str, Any]:
    # Warm-up: open connections (and, in the stack, threads and DB connections), not counted.
    warm = min(concurrency, 32)
    asyncio.run(load(target, concurrency=warm, requests=warm, cap_s=cap_s, first_number=number + 10_000_000,
                     sample=None))  # fmt: skip
    pids = {name: tree(roots) for name, roots in target.groups.items()}
    before = {name: cpu_ticks(p) for name, p in pids.items()}
    pg_before = cpu_ticks(postgres_pids(), reaped=True) if target.name == "router" else 0
    machine_before = machine_ticks()
    sample: list[Any] = []
    with Sampler(target.groups) as sampler:
        figures = asyncio.run(
            load(
                target,
                concurrency=concurrency,
                requests=requests,
                cap_s=cap_s,
                first_number=number,
                sample=sample,
                ramp_s=ramp_s,
            )
        )
    machine_after = machine_ticks()
    pids = {name: tree(roots) for name, roots in target.groups.items()}
    ok = max(1, figures["ok"])
    busy, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
    figures["machine_cpu_busy_pct"] = round(100 * busy / max(total, 1), 1)
    if target.name == "router" and uses_postgres:
        figures["postgres_server_cpu_ms_per_req"] = round(
            (cpu_ticks(postgres_pids(), reaped=True) - pg_before) * 1000 / CLK_TCK / ok, 2
        )
    cpu = {name: (cpu_ticks(p) - before[name]) * 1000 / CLK_TCK / ok for name, p in pids.items()}
    figures["cpu_ms_per_req"] = {name: round(value, 2) for name, value in cpu.items()}
    figures["cpu_ms_per_req_total"] = round(sum(cpu.values()), 2)
    figures["peak_memory_mb"] = {
        name: {"rss": round(p["rss_kb"] / 1024, 1), "pss": round(p["pss_kb"] / 1024, 1)}
        for name, p in sampler.peak.items()
    }
    figures["peak_rss_mb_total"] = round(sum(p["rss_kb"] for p in sampler.peak.values()) / 1024, 1)
    figures["peak_pss_mb_total"] = round(sum(p["pss_kb"] for p in sampler.peak.values()) / 1024, 1)
    if target.name == "router" and sample:
        figures["sample"] = {k: sample[0].get(k) for k in ("model_used", "tier", "escalated", "retry_count")}
    return figures


def requests_for(latency_ms: int, concurrency: int, quick: bool, rounds: int | None = None) -> int:
    """Enough requests for a steady state, few enough to fit the cap on a healthy stack."""
    if latency_ms >= 1000:
        return concurrency * (rounds or (3 if quick else 5))
    base = 150 if quick else 400
    return min(max(base, concurrency * 8), 3000)


# ---------------------------------------------------------------- the routing decision


def routing_decision_ms(count: int = 3000) -> dict[str, Any]:
    catalog = load_catalog(SEED_CATALOG_PATH)
    prompts = [prompt_for(n) for n in range(count)]
    prompts += ["Prove that the square root of 2 is irrational, rigorously, step by step."] * (count // 10)
    route(catalog=catalog, score=estimate_difficulty(prompts[0]).score)  # first call: imports, caches
    timings = []
    for prompt in prompts:
        t0 = time.perf_counter()
        route(catalog=catalog, score=estimate_difficulty(prompt).score)
        timings.append((time.perf_counter() - t0) * 1000)
    timings.sort()
    return {
        "prompts": len(timings),
        "median_ms": round(statistics.median(timings), 4),
        "p95_ms": round(timings[int(0.95 * (len(timings) - 1))], 4),
    }


# ---------------------------------------------------------------- the stacks


@contextlib.contextmanager
def database(kind: str, work_dir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{work_dir / 'bench.db'}"
        return
    from tests.support.databases import temporary_postgres_database

    with temporary_postgres_database("model_router_bench") as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


def worker_pool(args: argparse.Namespace) -> str:
    """Return the Celery pool the bench's worker runs: --worker-pool, else what make run would use."""
    return args.worker_pool or ("threads" if args.db == "sqlite" else "gevent")


def worker_processes(args: argparse.Namespace) -> int:
    """Return how many prompts worker processes the bench runs: --worker-processes, else as make run does."""
    return args.worker_processes or (1 if args.db == "sqlite" else 2)


@contextlib.contextmanager
def router_stack(args: argparse.Namespace, work_dir: Path) -> Iterator[tuple[Stack, dict[str, Any]]]:
    redis_server = PrivateRedis(work_dir=work_dir)
    redis_server.start()
    try:
        with database(args.db, work_dir) as database_url:
            migrate.upgrade("head", database_url=database_url)
            settings = {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_server.url,
                "MONTHLY_BUDGET_LIMIT": "1000000",
                "LOG_LEVEL": args.log_level,
                "ESCALATION_ENABLED": "true",
            }
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SIM_", "DATABASE_", "REDIS_"))}
            env.update(settings)
            stack = Stack(env=env, log_dir=work_dir, web_workers=args.web_concurrency, worker_queues=(),
                          web_args=("--worker-connections", "2000", "--timeout", "120"))  # fmt: skip
            try:
                stack.start()  # simulator + web; the workers come next, with the bench's concurrency
                for index in range(worker_processes(args)):
                    name = f"worker{index + 1}"
                    command = worker_command("prompts")
                    command[command.index("--concurrency") + 1] = str(args.worker_concurrency)
                    command[command.index("--pool") + 1] = worker_pool(args)
                    command[command.index("--loglevel") + 1] = args.log_level
                    stack._spawn(name, [*command, "-n", f"{name}@%h"])
                stack._wait_until_ready(min_workers=worker_processes(args))
                tuning = {
                    **{k: v for k, v in settings.items() if k != "REDIS_URL"},
                    "database": args.db,
                    "WEB_CONCURRENCY (gunicorn gevent workers)": args.web_concurrency,
                    "gunicorn --worker-connections": 2000,
                    "celery prompts worker processes": worker_processes(args),
                    "celery worker pool": worker_pool(args),
                    "WORKER_CONCURRENCY (threads or greenlets per worker)": args.worker_concurrency,
                    "celery/app log level": args.log_level,
                    "batch worker, beat": "not started (idle in this bench)",
                    "redis": "private redis-server, no persistence",
                }
                yield stack, tuning
            finally:
                stack.stop()
    finally:
        redis_server.close()


def ensure_litellm() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        print(f"installing litellm[proxy] into {LITELLM_VENV} (PyPI) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return binary


@contextlib.contextmanager
def litellm_proxy(sim_url: str, workers: int, work_dir: Path) -> Iterator[tuple[Target, dict[str, Any]]]:
    binary = ensure_litellm()
    port = free_port()
    key = "sk-bench-master-key"
    catalog = load_catalog(SEED_CATALOG_PATH)
    lines = ["model_list:"]
    for name in catalog.model_names:
        lines += [f"  - model_name: {name}", "    litellm_params:", f"      model: openai/{name}",
                  f"      api_base: {sim_url}/v1", "      api_key: sk-simulator"]  # fmt: skip
    lines += ["litellm_settings:", "  drop_params: true", "  telemetry: false", "  set_verbose: false",
              "general_settings:", f"  master_key: {key}"]  # fmt: skip
    config = work_dir / "litellm.yaml"
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DATABASE_"))}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=key, LITELLM_LOG="ERROR",
               LITELLM_TELEMETRY="False", NO_DOCS="True", DISABLE_ADMIN_UI="True")  # fmt: skip
    log = open(work_dir / "litellm.log", "wb")  # noqa: SIM115
    command = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
               "--num_workers", str(workers)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        url = f"http://127.0.0.1:{port}"
        while True:
            if process.poll() is not None:
                raise RuntimeError("litellm exited:\n" + (work_dir / "litellm.log").read_text()[-3000:])
            try:
                status, _, _ = http("GET", f"{url}/health/liveliness", timeout=2)
                if status == 200:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("litellm did not start in time:\n" + (work_dir / "litellm.log").read_text()[-3000:])
            time.sleep(0.5)
        version = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                                  "import importlib.metadata as m; print(m.version('litellm'))"],
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
        target = Target("litellm", f"{url}/chat/completions", {"litellm": [process.pid]},
                        headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        yield target, {"version": version, "num_workers": workers, "model": f"openai/{MODEL}"}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        log.close()


# ---------------------------------------------------------------- output


def format_table(cells: list[dict[str, Any]]) -> str:
    header = (f"{'upstream':>8} {'conc':>4} {'target':<8} {'req/s':>8} {'p50':>8} {'p95':>8} {'p99':>8} "
              f"{'added50':>8} {'errors':>6} {'cpu ms/req':>10} {'peak RSS MB':>11} {'peak PSS MB':>11}")  # fmt: skip
    lines = [header, "-" * len(header)]

    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

    for cell in cells:
        for name in ("direct", "router", "litellm"):
            r = cell.get(name)
            if r is None:
                continue
            lines.append(
                f"{cell['latency_ms']:>6}ms {cell['concurrency']:>4} {name:<8} {f(r['rps']):>8} {f(r['p50_ms']):>8} "
                f"{f(r['p95_ms']):>8} {f(r['p99_ms']):>8} {f(r.get('added_p50_ms')):>8} {r['errors']:>6} "
                f"{f(r['cpu_ms_per_req_total']):>10} {f(r['peak_rss_mb_total']):>11} {f(r['peak_pss_mb_total']):>11}"
            )
    return "\n".join(lines)


def ratios(cells: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cell in cells:
        router, litellm = cell.get("router"), cell.get("litellm")
        if not router or not litellm:
            continue
        key = f"{cell['latency_ms']}ms_c{cell['concurrency']}"
        entry: dict[str, Any] = {}
        if litellm["rps"]:
            entry["throughput_router_over_litellm"] = round(router["rps"] / litellm["rps"], 2)
        if router.get("added_p50_ms") is not None and litellm.get("added_p50_ms"):
            entry["added_p50_router_over_litellm"] = round(router["added_p50_ms"] / litellm["added_p50_ms"], 3)
        if litellm["cpu_ms_per_req_total"]:
            entry["cpu_per_req_router_over_litellm"] = round(
                router["cpu_ms_per_req_total"] / litellm["cpu_ms_per_req_total"], 2
            )
        out[key] = entry
    return out


def targets_check(cells: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(c["latency_ms"], c["concurrency"]): c for c in cells}
    checks: dict[str, Any] = {}
    cell = by.get((50, 64))
    if cell and cell.get("litellm"):
        ratio = cell["router"]["rps"] / max(cell["litellm"]["rps"], 1e-9)
        checks["throughput_c64_50ms_>=3x_litellm"] = {"ratio": round(ratio, 2), "met": ratio >= 3}
    c1 = [c for c in cells if c["concurrency"] == 1 and c.get("litellm")]
    if c1:
        c = min(c1, key=lambda c: c["latency_ms"])
        r, lt = c["router"]["added_p50_ms"], c["litellm"]["added_p50_ms"]
        checks["added_p50_c1_<=1/3_litellm"] = {
            "cell": f"{c['latency_ms']}ms", "router_ms": r, "litellm_ms": lt,
            "ratio": round(r / lt, 3) if lt else None, "met": bool(lt) and r <= lt / 3,
        }  # fmt: skip
    cell = by.get((2000, 256))
    if cell:
        router = cell["router"]
        checks["2s_c256_no_errors_within_10pct_of_128rps"] = {
            "rps": router["rps"], "errors": router["errors"],
            "met": router["errors"] == 0 and router["rps"] >= 0.9 * 128,
        }  # fmt: skip
    with_litellm = [c for c in cells if c.get("litellm")]
    if with_litellm:
        best = max(with_litellm, key=lambda c: c["litellm"]["rps"])
        router_peak = max(c["router"]["peak_rss_mb_total"] for c in cells)
        router_peak_pss = max(c["router"]["peak_pss_mb_total"] for c in cells)
        checks["memory_web+worker_<_litellm_at_best"] = {
            "router_peak_rss_mb_any_cell": router_peak, "router_peak_pss_mb_any_cell": router_peak_pss,
            "litellm_cell": f"{best['latency_ms']}ms_c{best['concurrency']}",
            "litellm_rss_mb": best["litellm"]["peak_rss_mb_total"],
            "litellm_pss_mb": best["litellm"]["peak_pss_mb_total"],
            "met": router_peak < best["litellm"]["peak_rss_mb_total"],
        }  # fmt: skip
    return checks


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None, *, compare: bool = False) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"only the cells {QUICK_CELLS}, fewer requests")
    parser.add_argument("--compare", action="store_true", default=compare, help="also load LiteLLM's proxy")
    parser.add_argument("--latencies", default=None, help="upstream latencies in ms, e.g. 0,50,2000")
    parser.add_argument("--concurrencies", default=None, help="e.g. 1,16,64,256")
    parser.add_argument("--cell-cap-s", type=float, default=20.0, help="wall-clock cap per target and cell")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="requests per client in cells with an upstream latency of 1 s or more (3 quick, 5)",
    )
    parser.add_argument("--ramp", action="store_true",
                        help="spread the clients' first requests over one upstream latency and report the "
                             "steady rate as well (the default starts every client at once)")  # fmt: skip
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--web-concurrency", type=int, default=2)
    parser.add_argument("--worker-processes", type=int, default=None,
                        help="default: as make run, 2 on PostgreSQL, 1 on SQLite")  # fmt: skip
    parser.add_argument("--worker-pool", choices=("gevent", "threads"), default=None,
                        help="default: as make run picks it (gevent; threads on SQLite)")  # fmt: skip
    parser.add_argument("--worker-concurrency", type=int, default=300)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--litellm-workers", type=int, default=2, help="LiteLLM --num_workers (2: its best here)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    args = parser.parse_args(argv)
    if args.latencies or args.concurrencies:
        lats = [int(x) for x in (args.latencies or ",".join(map(str, LATENCIES_MS))).split(",")]
        concs = [int(x) for x in (args.concurrencies or ",".join(map(str, CONCURRENCIES))).split(",")]
        cells = [(lat, c) for lat in lats for c in concs]
    else:
        cells = list(QUICK_CELLS) if args.quick else [(lat, c) for lat in LATENCIES_MS for c in CONCURRENCIES]
    out = args.out or Path("bench/results") / f"throughput{'_compare' if args.compare else ''}_{args.db}.json"
    print(f"NOTE: {CPU_NOTE}; figures are loopback, noisy (+-30% between runs).", flush=True)

    routing = routing_decision_ms()
    print(f"routing decision (estimate_difficulty + route): median {routing['median_ms']} ms, "
          f"p95 {routing['p95_ms']} ms over {routing['prompts']} prompts", flush=True)  # fmt: skip

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as scratch:
        work_dir = args.logs or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stacks:
            stack, tuning = stacks.enter_context(router_stack(args, work_dir))
            print("stack settings: " + json.dumps(tuning), flush=True)
            router = Target("router", f"{stack.web}/api/prompt", {
                "web": [stack.processes["web"].pid],
                "worker": [p.pid for n, p in stack.processes.items() if n.startswith("worker")],
            })  # fmt: skip
            direct = Target(
                "direct", f"{stack.sim}/v1/chat/completions", {"simulator": [stack.processes["simulator"].pid]}
            )
            litellm = None
            litellm_info = None
            if args.compare:
                litellm, litellm_info = stacks.enter_context(litellm_proxy(stack.sim, args.litellm_workers, work_dir))
                print("litellm: " + json.dumps(litellm_info), flush=True)
            number = 0
            for latency_ms, concurrency in cells:
                status, _, _ = http("POST", f"{stack.sim}/sim/config", {"reset": True, "latency_ms": latency_ms})
                if status != 200:
                    raise RuntimeError(f"could not set the simulator's latency: {status}")
                count = requests_for(latency_ms, concurrency, args.quick, args.rounds)
                ramp_s = latency_ms / 1000 if args.ramp else 0.0
                cell: dict[str, Any] = {"latency_ms": latency_ms, "concurrency": concurrency, "requests": count}
                for target in (direct, router, litellm):
                    if target is None:
                        continue
                    number += 100_000
                    cell[target.name] = run_phase(target, concurrency=concurrency, requests=count,
                                                  cap_s=args.cell_cap_s, number=number,
                                                  uses_postgres=args.db == "postgres", ramp_s=ramp_s)  # fmt: skip
                    r = cell[target.name]
                    steady = f" (steady {r['steady_rps']})" if r["steady_rps"] is not None else ""
                    print(f"  {latency_ms:>5} ms c={concurrency:<3} {target.name:<7} {r['rps']:>8} req/s{steady} "
                          f"p50 {r['p50_ms']} ms errors {r['errors']} cpu {r['cpu_ms_per_req']} ms/req "
                          f"(postgres {r.get('postgres_server_cpu_ms_per_req', '-')}) machine busy "
                          f"{r['machine_cpu_busy_pct']}%",
                          flush=True)  # fmt: skip
                for name in ("router", "litellm"):
                    if name in cell and cell[name]["p50_ms"] is not None and cell["direct"]["p50_ms"] is not None:
                        cell[name]["added_p50_ms"] = round(cell[name]["p50_ms"] - cell["direct"]["p50_ms"], 2)
                results.append(cell)
                partial = {"cells": results}
                out.parent.mkdir(parents=True, exist_ok=True)
                out.with_suffix(".partial.json").write_text(json.dumps(partial, indent=2) + "\n")

    report = {
        "machine": {"cpus": os.cpu_count(), "note": CPU_NOTE, "python": platform.python_version()},
        "stack": tuning,
        "litellm": litellm_info,
        "load_generator": "aiohttp closed loop in the bench process (same machine, same cores)",
        "routing_decision": routing,
        "cells": results,
        "ratios": ratios(results) if args.compare else None,
        "targets": targets_check(results),
    }
    print()
    print(format_table(results))
    print("\nadded50 = target p50 minus direct p50 (same cell, same run); memory: router = web + worker trees, "
          "litellm = proxy tree; cpu = those processes' user+sys per successful request")  # fmt: skip
    if args.compare:
        print("\nratios (router / litellm): " + json.dumps(report["ratios"], indent=2))
    print("\ntargets: " + json.dumps(report["targets"], indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    with contextlib.suppress(FileNotFoundError):
        out.with_suffix(".partial.json").unlink()
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
