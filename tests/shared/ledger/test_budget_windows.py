"""Budget windows: a day, a week or a rolling span of hours bounds a scope's spending beside its month."""

from __future__ import annotations

import threading
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from shared.errors import BudgetExceeded
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.ledger import api_keys
from shared.ledger import budget
from shared.ledger import lost_calls
from shared.ledger import windows
from shared.ledger.window_spans import Window
from shared.ledger.window_spans import validated
from shared.store.models import BudgetBucket
from shared.store.models import RequestLog
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

SCOPE = "key:7"
# A Wednesday, 14:37 UTC.
NOW = datetime(2026, 12, 9, 14, 37, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "since"),
    [
        ("day", datetime(2026, 12, 9, 0, tzinfo=UTC)),
        ("week", datetime(2026, 12, 7, 0, tzinfo=UTC)),
        ("1h", datetime(2026, 12, 9, 13, tzinfo=UTC)),
        ("24h", datetime(2026, 12, 8, 14, tzinfo=UTC)),
        ("7d", datetime(2026, 12, 2, 14, tzinfo=UTC)),
    ],
)
def test_each_window_counts_from_its_first_hour(name: str, since: datetime) -> None:
    assert Window(name).since(NOW) == since


def test_a_week_starts_on_monday_even_on_a_monday_or_a_sunday() -> None:
    monday = datetime(2026, 12, 7, 0, 0, 1, tzinfo=UTC)
    sunday = datetime(2026, 12, 13, 23, 59, tzinfo=UTC)
    assert Window("week").since(monday) == Window("week").since(sunday) == datetime(2026, 12, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    "windows", [{"month": 1}, {"0h": 1}, {"745h": 1}, {"32d": 1}, {"day": -1}, {"day": "x"}, {"day": True},
                {"day": "NaN"}, {"week": 10**10}],
)  # fmt: skip
def test_unknown_windows_and_bad_limits_are_refused(windows: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="budget window"):
        validated(windows)


def test_limits_are_read_exactly_and_never_rounded_up() -> None:
    assert validated({"day": 0.1, "6h": "2.000000001"}) == {"day": Decimal("0.1"), "6h": Decimal("2.000000001")}
    assert validated({"day": 0.1 * 3, "week": "0.0000000019"}) == {"day": Decimal("0.3"), "week": Decimal("1E-9")}


def _reserve(sessions, *, at: datetime, amount: str, windows: dict[str, str], scope: str = SCOPE) -> None:
    """Reserve in the scope's month and, windowed, in its bucket of `at`'s hour, checking `windows` at `at`."""
    with sessions.begin() as session:
        budget.reserve(
            session, scope=scope, period=budget.Period.of(at, windowed=[scope]), amount=Decimal(amount),
            limit=Decimal(100), window_limits=validated(windows), now=at,
        )  # fmt: skip


def _month(sessions, *, at: datetime, scope: str = SCOPE) -> budget.BudgetView:
    with sessions() as session:
        return budget.get_view(session, scope=scope, period=budget.Period.of(at), limit=Decimal(100))


def test_a_rolling_window_lets_money_go_only_after_its_span_has_passed(sessions) -> None:
    start = datetime(2026, 12, 9, 10, 59, tzinfo=UTC)
    limit = {"2h": "1"}
    _reserve(sessions, at=start, amount="0.6", windows=limit)
    _reserve(sessions, at=start + timedelta(hours=1), amount="0.3", windows=limit)
    # 12:xx still counts the 10:00 bucket: a stretch of two hours (10:59 to 12:58) would otherwise hold 1.1.
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(sessions, at=start + timedelta(hours=2), amount="0.2", windows=limit)
    assert refused.value.details["window"] == "2h"
    assert Decimal(str(refused.value.details["remaining"])) == Decimal("0.1")
    _reserve(sessions, at=start + timedelta(hours=3), amount="0.2", windows=limit)


def test_a_refused_window_leaves_the_month_as_it_was(sessions) -> None:
    _reserve(sessions, at=NOW, amount="0.9", windows={"day": "1"})
    with pytest.raises(BudgetExceeded):
        _reserve(sessions, at=NOW, amount="0.2", windows={"day": "1"})
    month = _month(sessions, at=NOW)
    assert (month.reserved, month.request_count) == (Decimal("0.9"), 1)


def test_a_new_day_and_a_new_week_start_empty(sessions) -> None:
    sunday_night = datetime(2026, 12, 13, 23, 30, tzinfo=UTC)
    _reserve(sessions, at=sunday_night, amount="0.9", windows={"day": "1", "week": "1"})
    with pytest.raises(BudgetExceeded):
        _reserve(sessions, at=sunday_night + timedelta(minutes=20), amount="0.2", windows={"day": "1"})
    _reserve(sessions, at=sunday_night + timedelta(minutes=40), amount="0.9", windows={"day": "1", "week": "1"})


def test_every_window_of_a_scope_must_hold_the_amount(sessions) -> None:
    monday = datetime(2026, 12, 7, 9, tzinfo=UTC)
    _reserve(sessions, at=monday, amount="3", windows={"day": "4", "week": "5"})
    with pytest.raises(BudgetExceeded) as refused:
        _reserve(sessions, at=monday + timedelta(days=1), amount="3", windows={"day": "4", "week": "5"})
    assert refused.value.details["window"] == "week"


def test_settling_and_releasing_move_the_buckets_like_the_month(sessions) -> None:
    period = budget.Period.of(NOW, windowed=[SCOPE])
    _reserve(sessions, at=NOW, amount="0.5", windows={"day": "1"})
    _reserve(sessions, at=NOW, amount="0.25", windows={"day": "1"})
    with sessions.begin() as session:
        budget.settle(session, scope=SCOPE, period=period, reserved=Decimal("0.5"), cost=Decimal("0.125"))
        budget.release(session, scope=SCOPE, period=period, reserved=Decimal("0.25"))
    with sessions() as session:
        (view,) = windows.views(session, scope=SCOPE, now=NOW, windows={"day": Decimal(1)})
    assert (view.spent, view.reserved, view.remaining) == (Decimal("0.125"), Decimal(0), Decimal("0.875"))


def test_a_scope_without_windows_for_a_job_keeps_no_bucket(sessions) -> None:
    with sessions.begin() as session:
        budget.reserve(session, scope=SCOPE, period=budget.Period.of(NOW), amount=Decimal(1), limit=Decimal(100))
    with sessions() as session:
        assert session.scalars(select(BudgetBucket)).all() == []


def _keyed(sessions, windows: dict[str, object]) -> lifecycle.Requester:
    with sessions.begin() as session:
        key, _ = api_keys.create(session, name="windowed", budget_windows=windows)
        return lifecycle.Requester(key.id, key.monthly_budget, validated(key.budget_windows))


def _accept(sessions, catalog, settings, requester=None, **request) -> lifecycle.Accepted:
    creation = dict(request=lifecycle.JobRequest(prompt="hi", tier="cheap", max_tokens=100, **request),
                    catalog=catalog, settings=settings, requester=requester)  # fmt: skip
    with sessions() as session:
        return lifecycle.create_and_commit(session, alone=True, **creation)


def test_a_keys_day_window_refuses_what_its_month_would_take(sessions, catalog, settings) -> None:
    bound = _accept(sessions, catalog, settings).reserved_cost
    requester = _keyed(sessions, {"day": str(bound * 3)})
    accepted = [_accept(sessions, catalog, settings, requester) for _ in range(3)]
    with pytest.raises(BudgetExceeded) as refused:
        _accept(sessions, catalog, settings, requester)
    assert refused.value.details == {
        "scope": budget.key_scope(requester.api_key_id), "window": "day", "required": float(bound), "remaining": 0.0,
    }  # fmt: skip
    with sessions() as session:
        jobs = session.scalars(select(RequestLog).where(RequestLog.id.in_([job.id for job in accepted]))).all()
    assert {tuple(job.windowed_scopes) for job in jobs} == {(budget.key_scope(requester.api_key_id),)}
    # Another key, and the service, are not bound by it.
    _accept(sessions, catalog, settings)


def test_the_services_windows_bound_every_request(sessions, catalog, database_url) -> None:
    settings = make_test_settings(database_url)
    bound = _accept(sessions, catalog, settings).reserved_cost
    windowed = make_test_settings(database_url, budget_windows={"6h": str(bound * 2)})
    _accept(sessions, catalog, windowed)
    # The job accepted before the service had windows is in no bucket until a web process starts with them
    # (test_the_services_windows_count_its_spending_from_before_its_start): one more fits.
    _accept(sessions, catalog, windowed)
    with pytest.raises(BudgetExceeded) as refused:
        _accept(sessions, catalog, windowed, requester=_keyed(sessions, {}))
    assert (refused.value.details["scope"], refused.value.details["window"]) == (budget.GLOBAL_SCOPE, "6h")


def test_a_finished_job_moves_its_bucket_money_to_its_cost(sessions, catalog, settings) -> None:
    requester = _keyed(sessions, {"day": "10", "24h": "10"})
    scope = budget.key_scope(requester.api_key_id)
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", ok(completion_tokens=40, prompt_tokens=10))
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)
    job_id = _accept(sessions, catalog, settings, requester).id
    runs.run(job_id, deps=deps)
    with sessions() as session:
        job = session.get(RequestLog, job_id)
        assert job.cost > 0
        views = windows.views(session, scope=scope, now=job.created_at, windows=requester.budget_windows)
    assert [(view.spent, view.reserved) for view in views] == [(job.cost, Decimal(0))] * 2


def test_cancelling_a_queued_job_frees_its_window(sessions, catalog, settings) -> None:
    bound = _accept(sessions, catalog, settings).reserved_cost
    requester = _keyed(sessions, {"day": str(bound)})
    job_id = _accept(sessions, catalog, settings, requester).id
    with pytest.raises(BudgetExceeded):
        _accept(sessions, catalog, settings, requester)
    with sessions.begin() as session:
        lifecycle.cancel_queued(session, job_id=job_id)
    _accept(sessions, catalog, settings, requester)


def test_a_job_failed_with_lost_calls_is_charged_in_its_bucket(sessions, catalog, settings) -> None:
    requester = _keyed(sessions, {"week": "10"})
    scope = budget.key_scope(requester.api_key_id)
    job_id = _accept(sessions, catalog, settings, requester).id
    with sessions.begin() as session:
        job = session.get(RequestLog, job_id)
        job.in_flight_cost = Decimal("0.001")
    lost_calls.fail(sessions, job_id=job_id, where=RequestLog.id == job_id, code="worker_lost", message="lost",
                    now=NOW)  # fmt: skip
    with sessions() as session:
        (view,) = windows.views(session, scope=scope, now=session.get(RequestLog, job_id).created_at,
                                windows={"week": Decimal(10)})  # fmt: skip
    assert (view.spent, view.reserved) == (Decimal("0.001"), Decimal(0))


def test_concurrent_accepts_never_pass_a_window(sessions, catalog, settings) -> None:
    bound = _accept(sessions, catalog, settings).reserved_cost
    requester = _keyed(sessions, {"day": str(bound * 5)})
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def accept() -> None:
        start.wait()
        try:
            _accept(sessions, catalog, settings, requester)
            outcomes.append("accepted")
        except BudgetExceeded:
            outcomes.append("refused")
        except Exception as exc:  # SQLite may report a busy database: never a wrong answer
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=accept) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("accepted") == 5
    with sessions() as session:
        (view,) = windows.views(session, scope=budget.key_scope(requester.api_key_id), now=datetime.now(UTC),
                                windows=requester.budget_windows)  # fmt: skip
    assert view.reserved == bound * 5


def test_under_a_window_a_routed_job_may_be_downgraded_instead(sessions, catalog, settings) -> None:
    prompt = "Prove that there are infinitely many primes, step by step, with a formal argument."
    capped = budget.reservation_bound(
        catalog=catalog, tiers=catalog.tiers, prompt=prompt, max_tokens=1000, escalation=True, max_tier="cheap"
    )
    requester = _keyed(sessions, {"24h": str(capped)})
    request = lifecycle.JobRequest(prompt=prompt, on_budget_pressure="downgrade")
    with sessions.begin() as session:
        accepted = lifecycle.create(session, request=request, catalog=catalog, settings=settings, requester=requester)
    assert (accepted.max_tier, accepted.reserved_cost) == ("cheap", capped)
    month = _month(sessions, at=datetime.now(UTC), scope=budget.key_scope(requester.api_key_id))
    assert (month.reserved, month.request_count) == (capped, 1)


def _spent_and_reserved(sessions, scope: str, window: str = "31d") -> tuple[Decimal, Decimal]:
    with sessions() as session:
        (view,) = windows.views(session, scope=scope, now=datetime.now(UTC), windows={window: Decimal(1000)})
    return view.spent, view.reserved


def test_a_keys_first_windows_count_what_it_spent_before(sessions, catalog, settings) -> None:
    requester = _keyed(sessions, {})
    scope = budget.key_scope(requester.api_key_id)
    fake = FakeLLMClient()
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)
    finished = _accept(sessions, catalog, settings, requester).id
    runs.run(finished, deps=deps)
    in_flight = _accept(sessions, catalog, settings, requester)
    too_old = _accept(sessions, catalog, settings, requester).id
    _accept(sessions, catalog, settings)  # another scope's job
    with sessions.begin() as session:
        session.get(RequestLog, too_old).created_at = datetime.now(UTC) - timedelta(days=32)
        cost = session.get(RequestLog, finished).cost
    assert _spent_and_reserved(sessions, scope) == (Decimal(0), Decimal(0))
    with sessions.begin() as session:
        api_keys.update(session, key_id=requester.api_key_id, changes={"budget_windows": {"31d": 1000}})
    # The job in flight is in no bucket: it counts at its whole reservation, as spent, from now on.
    assert _spent_and_reserved(sessions, scope) == (cost + in_flight.reserved_cost, Decimal(0))
    runs.run(in_flight.id, deps=deps)
    assert _spent_and_reserved(sessions, scope) == (cost + in_flight.reserved_cost, Decimal(0))
    # A job accepted now is in the bucket. Rebuilding counts each settled job at its cost (the one that was in
    # flight too, now), and keeps the new one reserved, so that its settlement stays exact.
    windowed = lifecycle.Requester(requester.api_key_id, None, {"31d": Decimal(1000)})
    latest = _accept(sessions, catalog, settings, windowed)
    with sessions.begin() as session:
        budget.count_window_history(session, scope=scope, api_key_id=requester.api_key_id, now=datetime.now(UTC))
        both = cost + session.get(RequestLog, in_flight.id).cost
    assert _spent_and_reserved(sessions, scope) == (both, latest.reserved_cost)
    runs.run(latest.id, deps=deps)
    with sessions() as session:
        latest_cost = session.get(RequestLog, latest.id).cost
    assert _spent_and_reserved(sessions, scope) == (both + latest_cost, Decimal(0))


def test_the_services_windows_count_its_spending_from_before_its_start(sessions, catalog, database_url) -> None:
    from web.app import create_app

    plain = make_test_settings(database_url)
    accepted = [_accept(sessions, catalog, plain) for _ in range(2)]
    windowed = make_test_settings(database_url, budget_windows={"day": "1000"})
    app = create_app(windowed)
    try:
        shown = app.test_client().get("/api/budget").get_json()["windows"]
        # A second process starting finds the buckets kept and leaves them alone.
        with sessions.begin() as session:
            kept = budget.count_window_history(session, scope=budget.GLOBAL_SCOPE, api_key_id=None,
                                               now=datetime.now(UTC), unless_kept=True)  # fmt: skip
    finally:
        app.extensions["db_engine"].dispose()
    assert [(w["window"], Decimal(str(w["spent"])), w["reserved"]) for w in shown] == [
        ("day", sum(job.reserved_cost for job in accepted), 0.0)
    ]
    assert kept is False
