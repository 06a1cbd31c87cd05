"""`make demo`: run the stack, send a few prompts through the HTTP API, show the outcome, stop cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from shared.devstack import stack_paths
from shared.devstack import supervisor
from shared.errors import ConfigError

STARTUP_TIMEOUT_S = 90
PROMPTS = (
    "What is the capital of France?",
    "Explain how a hash map handles collisions. Why does the load factor matter?",
    "Design and implement a lock-free queue in C++. Analyze its complexity, prove it is linearizable, "
    "and compare the trade-offs against a mutex-based design:\n1. API\n2. Memory ordering\n3. Tests\n"
    "```cpp\ntemplate <class T> class Queue;\n```",
)


_HEADERS = {"Content-Type": "application/json"}


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=_HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_until_ready(base: str, stack: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise RuntimeError("the stack stopped during start-up; see its output above")
        try:
            status, body = _call("GET", f"{base}/api/health")
            if status == 200 and body["checks"]["workers"] >= 1:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the stack was not ready within {STARTUP_TIMEOUT_S}s")


def _show(job: dict[str, Any]) -> None:
    if job.get("status") not in ("succeeded", "failed"):
        print(f"    job {job['job_id']} is {job['status']}")
        return
    print(
        f"    → {job['model_used']} ({job['tier']}), difficulty {job['difficulty_score']:.2f} "
        f"{job['difficulty_level']}, {job['tokens_used']} tokens, ${job['cost']:.6f}, "
        f"{job['latency_ms']:.0f} ms, escalated={job['escalated']}, retries={job['retry_count']}, "
        f"cached={job['cached']}"
    )
    print(f"      {str(job.get('response') or job.get('error'))[:100]!r}")


def _exercise(base: str) -> None:
    print("\n== Estimate first: where would a prompt go, and what may it cost? (nothing is called)")
    print(f"  {_call('POST', f'{base}/api/estimate', {'prompt': PROMPTS[1]})[1]}")

    print("\n== Synchronous prompts (wait: true)")
    for prompt in PROMPTS:
        print(f"  {prompt.splitlines()[0][:70]!r}")
        status, job = _call("POST", f"{base}/api/prompt", {"prompt": prompt, "max_tokens": 300})
        _show(job)

    print("\n== The first prompt again: answered from the response cache, no upstream call, no cost")
    _show(_call("POST", f"{base}/api/prompt", {"prompt": PROMPTS[0], "max_tokens": 300})[1])

    print("\n== Asynchronous prompt (wait: false), then polling")
    status, accepted = _call("POST", f"{base}/api/prompt", {"prompt": "Summarize the plot of Hamlet.", "wait": False})
    print(f"  {status} {accepted}")
    job = accepted
    for _ in range(120):
        status, job = _call("GET", f"{base}{accepted['poll_url']}")
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.25)
    _show(job)

    print("\n== A small batch, polled until complete")
    status, batch = _call("POST", f"{base}/api/batch", {"prompts": ["Name a prime.", "Define entropy.", "Hi!"]})
    print(f"  {status} batch {batch['batch_id']} with {len(batch['job_ids'])} jobs")
    view = batch
    for _ in range(120):
        view = _call("GET", f"{base}{batch['poll_url']}")[1]
        if view["status"] == "completed":
            break
        time.sleep(0.25)
    print(
        f"    → {view['status']}: {view['succeeded']} succeeded, {view['failed']} failed, ${view['cost']:.6f}, "
        f"models {[job['model_used'] for job in view['jobs']]}"
    )

    print("\n== A bad request")
    status, error = _call("POST", f"{base}/api/prompt", {"prompt": "   "})
    print(f"  {status} {error}")

    print("\n== Budget")
    print(f"  {_call('GET', f'{base}/api/budget')[1]}")
    print("\n== Stats")
    print(f"  {_call('GET', f'{base}/api/stats')[1]}")
    report = _call("GET", f"{base}/api/reports/costs?period=week")[1]
    print("\n== This week's costs against the strongest tier (GET /api/reports/costs)")
    print(
        f"  spent ${report['total_cost']:.6f}, strongest tier ${report['baseline_cost']:.6f}, "
        f"saved {report['savings_pct']}%"
    )
    print(f"  by tier: {[(row['tier'], row['requests'], row['cost']) for row in report['by_tier']]}")


def _use_a_key_if_required() -> None:
    """Create a demo API key when keys are required; otherwise say that the demo runs without them."""
    from shared.config import load_settings
    from shared.ledger import api_keys
    from shared.store.session import make_engine
    from shared.store.session import make_sessionmaker

    settings = load_settings(openai_base_url=os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:9000/v1")
    if not settings.api_keys_required:
        print("API keys are off for this local run (REQUIRE_API_KEY=true turns them on).")
        return
    engine = make_engine(settings)
    with make_sessionmaker(engine).begin() as session:
        _, key = api_keys.create(session, name="demo", is_admin=True)
    engine.dispose()
    _HEADERS["Authorization"] = f"Bearer {key}"
    print("API keys are required: created an admin key named 'demo' for this run.")


def run_demo() -> int:
    """Run the demo; return the process exit code."""
    # The stack started below gets this environment (PORT from `.env` too), so it serves this URL and writes
    # under these paths.
    try:
        environ = stack_paths.local_environ(os.environ)
        base = stack_paths.local_url(environ)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    log_path = stack_paths.StackPaths.of(environ).create().demo_log
    print(f"Starting the stack (Redis if needed, simulator, web, worker) on {base}; its log: {log_path}")
    with log_path.open("wb") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "run"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=environ,
        )  # fmt: skip
    try:
        _wait_until_ready(base, stack)
        _use_a_key_if_required()
        _exercise(base)
        print(f"\n`make run` keeps the stack up: the dashboard is at {base}/dashboard, metrics at {base}/metrics.")
        return 0
    except RuntimeError as exc:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        print(f"demo failed: {exc}\n{tail}", file=sys.stderr)
        return 1
    finally:
        print("\nStopping the stack…")
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGTERM)
            try:
                # Each of the stack's two stop stages has its grace; the processes of a killed `run` would stay.
                stack.wait(timeout=2 * supervisor.STOP_GRACE_S + 10)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait()
        print("Stopped.")
