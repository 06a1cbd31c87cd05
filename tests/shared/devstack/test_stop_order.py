"""Stopping the local stack: web and workers exit before Redis and the simulator are sent SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from honcho.printer import Printer

from shared.devstack import localstack
from shared.devstack import stack_paths
from shared.devstack import supervisor
from shared.observability import metrics


def _service(name: str, log: Path, *, takes_s: float = 0.0, ignores_term: bool = False) -> str:
    """A shell process that notes it is ready, then on SIGTERM takes `takes_s` and logs that it stopped."""
    on_term = "''" if ignores_term else f"'sleep {takes_s}; echo {name} >> {log}; exit 0'"
    return f"trap {on_term} TERM; touch {log.parent / (name + '.ready')}; while :; do sleep 0.05; done"


def _when_ready(log: Path, *names: str) -> str:
    """A shell condition that holds once every named process has set its trap."""
    return " && ".join(f"[ -e {log.parent / (name + '.ready')} ]" for name in names)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "stopped.log"


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    """Keep pytest alive should the manager under test not handle SIGTERM itself."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    signal.signal(signal.SIGTERM, previous)


def _loop(manager: supervisor.StagedManager) -> None:
    try:
        manager.loop()
    finally:
        manager.kill()  # a failed test leaves no process behind (nor pytest waiting for it at exit)


def _stopped(log: Path) -> list[str]:
    return log.read_text().split()


def test_the_local_stack_stops_redis_and_the_simulator_after_web_and_workers(tmp_path: Path, log: Path) -> None:
    services = ("web", "worker", "redis", "simulator")
    processes = {
        # Web and the worker take a while to finish what they hold; Redis and the simulator stop at once.
        "redis": _service("redis", log),
        "simulator": _service("simulator", log),
        "web": _service("web", log, takes_s=0.3),
        "worker": _service("worker", log, takes_s=0.5),
        # Exits once every other process is up, as a crashed process would: the stack then stops.
        "beat": f"while ! {{ {_when_ready(log, *services)}; }}; do sleep 0.05; done",
    }
    paths = stack_paths.StackPaths(root=tmp_path / "run")
    plan = localstack.StackPlan(
        processes=processes,
        env={**os.environ, metrics.MULTIPROC_ENV: str(paths.metrics_dir)},
        web_url="http://127.0.0.1:8000",
        notes=(),
        paths=paths,
    )
    assert localstack.run_stack(plan) == 0
    stopped = _stopped(log)
    assert sorted(stopped[:2]) == ["web", "worker"]
    assert sorted(stopped[2:]) == ["redis", "simulator"]


def test_a_signal_stops_the_first_stage_before_the_services_named_last(log: Path, sigterm_kept: None) -> None:
    manager = supervisor.StagedManager(stop_last=["redis"], printer=Printer(io.StringIO()))
    manager.add_process("redis", _service("redis", log))
    manager.add_process("worker", _service("worker", log, takes_s=0.5))
    ready = threading.Event()

    def send_sigterm_once_ready() -> None:
        while not ((log.parent / "redis.ready").exists() and (log.parent / "worker.ready").exists()):
            ready.wait(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_sigterm_once_ready, daemon=True).start()
    _loop(manager)
    assert _stopped(log) == ["worker", "redis"]
    assert manager.returncode == 143


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_and_the_next_stage_goes_on(log: Path) -> None:
    output = io.StringIO()
    manager = supervisor.StagedManager(stop_last=["redis"], grace_s=0.5, printer=Printer(output))
    manager.add_process("redis", _service("redis", log))
    manager.add_process("worker", _service("worker", log, ignores_term=True))
    manager.add_process("trigger", f"while ! {{ {_when_ready(log, 'redis', 'worker')}; }}; do sleep 0.05; done")
    _loop(manager)
    assert _stopped(log) == ["redis"]
    assert "sending SIGKILL to worker" in output.getvalue()
    assert f"worker stopped (rc={-signal.SIGKILL})" in output.getvalue()
