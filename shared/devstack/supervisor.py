"""The local stack's process supervisor: honcho's, stopping the services the others use only after them.

honcho sends SIGTERM to every process at once and SIGKILL to what is left five seconds later. Stopping a
stack that way takes Redis (and the simulator) away from workers that are finishing their jobs, acknowledging
them or handing them back, and from web requests waiting for them: those jobs end in errors or wait for the
reaper. Here the processes stop in two stages: first everything but the services named last (web, workers,
beat), each given its own shutdown, then those services.
"""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Collection
from types import FrameType
from typing import Any

from honcho.manager import SIGNALS
from honcho.manager import Manager

# How long a stage may take to stop before what is left of it is killed: time for a Celery worker's warm
# shutdown to finish the jobs it holds and for gunicorn's graceful timeout (10 s). A second Ctrl-C kills at once.
STOP_GRACE_S = 30.0


class StagedManager(Manager):
    """Run processes like honcho's Manager; stop `stop_last` only once every other process has exited."""

    def __init__(self, *, stop_last: Collection[str], grace_s: float = STOP_GRACE_S, printer: Any = None) -> None:
        super().__init__(printer=printer)
        self._stop_last = frozenset(stop_last)
        self._grace_s = grace_s
        self._stages: list[list[str]] = []
        self._stage_deadline: float | None = None

    def loop(self) -> None:
        """Start every process, relay their output, and stop them all in stages once one exits or on a signal."""
        names = list(self._processes)
        self._stages = [
            stage
            for stage in (
                [name for name in names if name not in self._stop_last],
                [name for name in names if name in self._stop_last],
            )
            if stage
        ]
        previous = {signum: signal.signal(signum, self._on_signal) for signum in SIGNALS}
        try:
            self._start()
            while not (self._all_started() and self._all_stopped()):
                self._handle(self._next_event())
                if self._all_started() and self._any_stopped():
                    self.terminate()
                if self._terminating:
                    self._advance()
        except BaseException:
            # Leave no process behind (each runs in a session of its own, out of reach of the terminal's Ctrl-C).
            self.kill()
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def terminate(self) -> None:
        """Begin stopping: send SIGTERM to the first stage (the later ones follow from the loop)."""
        if self._terminating:
            return
        self._terminating = True
        self._advance()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._terminating:
            # Asked twice: the user will not wait for the stages.
            self._system_print(f"{SIGNALS[signum]['name']} received again: killing every process\n")
            self.kill()
            return
        self._system_print(f"{SIGNALS[signum]['name']} received: stopping web and workers first\n")
        self.returncode = SIGNALS[signum]["rc"]
        self.terminate()

    def kill(self) -> None:
        """Send SIGKILL to every process still running, whatever its stage."""
        self._signal([name for name in self._processes if not self._has_stopped(name)], level="SIGKILL")

    def _advance(self) -> None:
        """Signal the current stage, the next once it has exited; kill what is left of it once its grace is over."""
        while self._stages and all(self._has_stopped(name) for name in self._stages[0]):
            self._stages.pop(0)
            self._stage_deadline = None
        if not self._stages:
            return
        if self._stage_deadline is None:
            self._stage_deadline = time.monotonic() + self._grace_s
        level = "SIGKILL" if time.monotonic() > self._stage_deadline else "SIGTERM"
        self._signal([name for name in self._stages[0] if not self._has_stopped(name)], level=level)

    def _has_stopped(self, name: str) -> bool:
        return "returncode" in self._processes[name]

    def _signal(self, names: list[str], *, level: str) -> None:
        """Send `level` to each process not sent it (or SIGKILL) yet; one not started yet is sent it later."""
        for name in names:
            state = self._processes[name]
            pid = state.get("pid")
            if pid is None or state.get("sent") in (level, "SIGKILL"):
                continue
            state["sent"] = level
            self._system_print(f"sending {level} to {name} (pid {pid})\n")
            if level == "SIGKILL":
                self._procmgr.kill(pid)
            else:
                self._procmgr.terminate(pid)

    def _next_event(self) -> Any:
        try:
            return self.events.get(timeout=0.1)
        except queue.Empty:
            return None

    def _handle(self, message: Any) -> None:
        """Relay a line, or note a process's start or stop (as honcho's loop does)."""
        if message is None:
            return
        if message.type == "line":
            self._printer.write(message)
        elif message.type == "start":
            self._processes[message.name]["pid"] = message.data["pid"]
            self._system_print(f"{message.name} started (pid={message.data['pid']})\n")
        elif message.type == "stop":
            self._processes[message.name]["returncode"] = message.data["returncode"]
            self._system_print(f"{message.name} stopped (rc={message.data['returncode']})\n")
            if self.returncode is None:
                self.returncode = message.data["returncode"]
