"""Column types: exact money and timezone-aware timestamps on every backend."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from decimal import ROUND_FLOOR
from decimal import Decimal

from sqlalchemy import BigInteger
from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NANOS_PER_DOLLAR = 10**9


def to_nanos(amount: Decimal) -> int:
    """Return `amount` dollars as whole nano-dollars; refuse anything finer (it would be lost)."""
    nanos = amount * NANOS_PER_DOLLAR
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{amount} dollars is finer than a nano-dollar")
    return int(nanos)


def floor_to_nanos(amount: Decimal) -> Decimal:
    """Return `amount` dollars rounded down to whole nano-dollars, for a limit given finer than the ledger
    keeps (a JSON number such as 0.1 * 3 is 0.30000000000000004): a limit never rounds up."""
    return amount.quantize(Decimal(1).scaleb(-9), rounding=ROUND_FLOOR)


def from_nanos(nanos: int) -> Decimal:
    """Return whole nano-dollars as exact dollars."""
    return Decimal(nanos).scaleb(-9)


class Money(TypeDecorator[Decimal]):
    """Dollars as a Decimal in Python, stored as integer nano-dollars.

    SQLite has no exact decimal type (NUMERIC falls back to floating point), so storing integers keeps
    sums exact on both backends.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        return None if value is None else to_nanos(Decimal(value))

    def process_result_value(self, value: int | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_nanos(int(value))


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)
