"""The one watchdog thread: alarms fire in order at their time, cancelled ones never, a failing one stops none."""

from __future__ import annotations

import threading
import time

from shared.upstream.watchdog import Watchdog


def test_alarms_fire_in_order_at_their_time_and_cancelled_ones_never() -> None:
    watchdog = Watchdog()
    fired: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()

    def note(name: str) -> None:
        fired.append((name, time.monotonic() - start))
        if name == "last":
            done.set()

    watchdog.arm(0.3, lambda: note("last"))
    cancelled = watchdog.arm(0.1, lambda: note("cancelled"))
    watchdog.arm(0.05, lambda: 1 / 0)  # a failing action stops none of the others
    first = watchdog.arm(0.15, lambda: note("first"))
    cancelled.cancel()
    assert done.wait(5)
    assert [name for name, _ in fired] == ["first", "last"]
    assert fired[0][1] >= 0.15 and fired[1][1] >= 0.3
    assert first.fired and not cancelled.fired


def test_an_alarm_earlier_than_all_others_wakes_the_watchdog() -> None:
    watchdog = Watchdog()
    watchdog.arm(60, lambda: None)
    time.sleep(0.05)  # the thread now sleeps until the first alarm, a minute away
    woken = threading.Event()
    watchdog.arm(0.05, woken.set)
    assert woken.wait(2)
