"""The spans budget windows cover ("day", "week", rolling "<N>h" / "<N>d"), in whole UTC hours; see
shared.ledger.windows for how their spending is kept."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from decimal import Decimal
from decimal import InvalidOperation
from typing import Any

from shared.store.types import floor_to_nanos

# The longest rolling window: a month of hours, as far back as any window reads.
MAX_HOURS = 31 * 24
# The largest limit a window may have (the ledger's money columns hold 19 digits of nano-dollars).
MAX_LIMIT = Decimal(10) ** 9
_ROLLING = re.compile(r"^([1-9][0-9]{0,3})([hd])$")


@dataclass(frozen=True)
class Window:
    """A span of time a scope's spending is limited over: "day", "week", or rolling "<N>h" / "<N>d"."""

    name: str

    def __post_init__(self) -> None:
        if self.name in ("day", "week"):
            return
        found = _ROLLING.match(self.name)
        if found is None:
            raise ValueError(f"unknown budget window {self.name!r}: use day, week, <N>h or <N>d (e.g. 24h, 7d)")
        if self.rolling_hours > MAX_HOURS:
            raise ValueError(f"budget window {self.name!r} is longer than {MAX_HOURS // 24} days")

    @property
    def rolling_hours(self) -> int:
        """The hours a rolling window spans (0 for a calendar day or week)."""
        found = _ROLLING.match(self.name)
        if found is None:
            return 0
        return int(found.group(1)) * (24 if found.group(2) == "d" else 1)

    def since(self, now: datetime) -> datetime:
        """Return the first hour whose bucket the window counts at `now`."""
        hour = hour_of(now)
        if self.name == "day":
            return hour.replace(hour=0)
        if self.name == "week":
            return hour.replace(hour=0) - timedelta(days=hour.weekday())
        return hour - timedelta(hours=self.rolling_hours)


def hour_of(moment: datetime) -> datetime:
    """Return the start of the UTC hour holding `moment`: the bucket a job accepted then sits in."""
    return moment.replace(minute=0, second=0, microsecond=0)


def validated(windows: Mapping[str, Any] | None) -> dict[str, Decimal]:
    """Return `windows` as {window name: limit in dollars}, or raise ValueError naming what is wrong."""
    checked: dict[str, Decimal] = {}
    for name, limit in (windows or {}).items():
        Window(name)
        try:
            amount = None if isinstance(limit, bool) else Decimal(str(limit))
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite() or not 0 <= amount <= MAX_LIMIT:
            raise ValueError(f"the limit of budget window {name!r} must be a dollar amount from 0 to {MAX_LIMIT}")
        checked[name] = floor_to_nanos(amount)
    return checked
