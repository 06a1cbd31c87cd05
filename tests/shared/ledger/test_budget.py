"""The ledger: exact money, reservation bounds, and the invariant under concurrency."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import Engine
from sqlalchemy import select

from shared.errors import BudgetExceeded
from shared.ledger import budget
from shared.ledger import call_bound
from shared.routing.catalog import Catalog
from shared.store.models import MonthlyBudget
from shared.store.session import make_sessionmaker
from shared.store.types import from_nanos
from shared.store.types import to_nanos

PERIOD = budget.Period(2026, 11)
SCOPE = budget.GLOBAL_SCOPE


def _ledger(engine: Engine) -> MonthlyBudget:
    with make_sessionmaker(engine)() as session:
        return session.scalars(select(MonthlyBudget)).one()


def test_money_round_trips_exactly_through_nanos() -> None:
    amount = Decimal("0.0000005")
    assert from_nanos(to_nanos(amount)) == amount
    assert to_nanos(Decimal("100")) == 100 * 10**9


def test_money_refuses_amounts_finer_than_a_nano_dollar() -> None:
    with pytest.raises(ValueError, match="finer"):
        to_nanos(Decimal("0.0000000001"))


def _call_costs(catalog: Catalog, prompt: str, max_tokens: int) -> dict[str, Decimal]:
    tokens = call_bound.prompt_tokens_bound(prompt=prompt)
    return {model.name: model.cost(tokens, max_tokens) for model in catalog.models}


def test_reservation_bound_covers_dearest_answer_plus_escalation_fallbacks_included(catalog: Catalog) -> None:
    cost = _call_costs(catalog, "abc", 100)
    # Default chains: cheap → gpt-4 (next tier up), mid → gpt-4-turbo, high → nothing.
    cheap_chain = max(cost["gpt-3.5-turbo"], cost["gpt-4"])
    mid_chain = max(cost["gpt-4"], cost["gpt-4-turbo"])
    high_chain = cost["gpt-4-turbo"]
    bound = budget.reservation_bound(
        catalog=catalog, tiers=catalog.tiers, prompt="abc", max_tokens=100, escalation=True
    )
    assert bound == max(cheap_chain + mid_chain, mid_chain + high_chain, high_chain)


def test_reservation_bound_without_escalation_is_one_answer_from_the_chain(catalog: Catalog) -> None:
    cost = _call_costs(catalog, "abc", 100)
    bound = budget.reservation_bound(catalog=catalog, tiers=("cheap",), prompt="abc", max_tokens=100, escalation=False)
    assert bound == max(cost["gpt-3.5-turbo"], cost["gpt-4"])


def test_a_tier_ceiling_excludes_fallbacks_above_it(catalog: Catalog) -> None:
    cost = _call_costs(catalog, "abc", 100)
    bound = budget.reservation_bound(
        catalog=catalog, tiers=catalog.tiers, prompt="abc", max_tokens=100, escalation=True, max_tier="cheap"
    )
    assert bound == cost["gpt-3.5-turbo"]


def test_reserve_then_settle_moves_reservation_into_spent(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        budget.reserve(session, scope=SCOPE, period=PERIOD, amount=Decimal("0.25"), limit=Decimal("1"))
    assert _ledger(engine).reserved == Decimal("0.25")
    with sessions.begin() as session:
        budget.settle(session, scope=SCOPE, period=PERIOD, reserved=Decimal("0.25"), cost=Decimal("0.0001075"))
    ledger = _ledger(engine)
    assert (ledger.reserved, ledger.total_spent, ledger.request_count) == (Decimal(0), Decimal("0.0001075"), 1)


def test_reserve_refuses_what_does_not_fit_and_changes_nothing(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        budget.reserve(session, scope=SCOPE, period=PERIOD, amount=Decimal("0.75"), limit=Decimal("1"))
    with pytest.raises(BudgetExceeded) as raised, sessions.begin() as session:
        budget.reserve(session, scope=SCOPE, period=PERIOD, amount=Decimal("0.250000001"), limit=Decimal("1"))
    assert raised.value.details["remaining"] == pytest.approx(0.25)
    ledger = _ledger(engine)
    assert (ledger.reserved, ledger.request_count) == (Decimal("0.75"), 1)


def test_reserve_accepts_an_exact_fit(engine: Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        budget.reserve(session, scope=SCOPE, period=PERIOD, amount=Decimal("1"), limit=Decimal("1"))
    assert _ledger(engine).reserved == Decimal("1")


def test_small_amounts_sum_exactly(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    for _ in range(300):
        with sessions.begin() as session:
            budget.reserve(session, scope=SCOPE, period=PERIOD, amount=Decimal("0.0000015"), limit=Decimal("1"))
    assert _ledger(engine).reserved == Decimal("0.00045")


def test_release_returns_the_reservation_and_uncounts_the_request(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        budget.reserve(session, scope=SCOPE, period=PERIOD, amount=Decimal("0.5"), limit=Decimal("1"))
    with sessions.begin() as session:
        budget.release(session, scope=SCOPE, period=PERIOD, reserved=Decimal("0.5"))
    ledger = _ledger(engine)
    assert (ledger.reserved, ledger.total_spent, ledger.request_count) == (Decimal(0), Decimal(0), 0)


def test_view_of_an_unused_month_is_empty_under_the_limit(engine: Engine) -> None:
    with make_sessionmaker(engine)() as session:
        view = budget.get_view(session, scope=SCOPE, period=PERIOD, limit=Decimal("5"))
    assert (view.remaining, view.request_count, view.percentage_used) == (Decimal("5"), 0, 0.0)


def _hammer(engine: Engine, *, threads: int, per_thread: int, amount: Decimal, limit: Decimal) -> int:
    sessions = make_sessionmaker(engine)
    accepted = 0
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker() -> None:
        nonlocal accepted
        start.wait()
        for _ in range(per_thread):
            try:
                with sessions.begin() as session:
                    budget.reserve(session, scope=SCOPE, period=PERIOD, amount=amount, limit=limit)
            except BudgetExceeded:
                continue
            with lock:
                accepted += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return accepted


def test_concurrent_reservations_never_pass_the_limit(engine: Engine) -> None:
    accepted = _hammer(engine, threads=8, per_thread=15, amount=Decimal("0.1"), limit=Decimal("3.7"))
    ledger = _ledger(engine)
    assert accepted == 37
    assert ledger.reserved == Decimal("3.7")
    assert ledger.total_spent + ledger.reserved <= ledger.monthly_limit
    assert ledger.request_count == 37
