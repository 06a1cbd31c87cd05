"""The waiting request's loop: an announcement wakes it, a lost one costs it a recheck, not its timeout; and
on the real Redis, a process hears of the jobs it waits for, and no prompt or answer crosses a channel."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator

import pytest
import redis

from shared.store import completion_channel
from tests.conftest import UNIT_REDIS_URL
from tests.support.channels import Eavesdropper
from web import waiter


class Finishes:
    """A job that finishes after `after_s`; counts how often it was read."""

    def __init__(self, after_s: float) -> None:
        self.at = time.monotonic() + after_s
        self.reads = 0

    def look(self) -> str | None:
        self.reads += 1
        return "finished" if time.monotonic() >= self.at else None


def test_a_lost_announcement_costs_one_recheck_not_the_whole_timeout() -> None:
    job = Finishes(after_s=0.2)
    started = time.monotonic()

    found = waiter.wait_for(threading.Event(), timeout_s=30.0, look=job.look, recheck_s=0.3)

    assert found == "finished"
    assert time.monotonic() - started < 2.0
    assert job.reads <= 3


def test_an_announcement_wakes_the_request_at_once() -> None:
    job = Finishes(after_s=0.1)
    done = threading.Event()
    threading.Timer(0.1, done.set).start()
    started = time.monotonic()

    found = waiter.wait_for(done, timeout_s=30.0, look=job.look, recheck_s=10.0)

    assert found == "finished"
    assert time.monotonic() - started < 2.0


def test_a_job_that_never_finishes_is_read_at_the_deadline_and_answers_none() -> None:
    job = Finishes(after_s=3600)
    started = time.monotonic()

    found = waiter.wait_for(threading.Event(), timeout_s=0.5, look=job.look, recheck_s=0.2)

    elapsed = time.monotonic() - started
    assert found is None
    assert 0.5 <= elapsed < 2.0
    # every recheck and the deadline itself: a few reads, not a busy loop
    assert 3 <= job.reads <= 5


# On the real Redis: what a web process subscribes to, hears, and what crosses the server's channels.


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(UNIT_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def eavesdropper(server: redis.Redis) -> Iterator[Eavesdropper]:
    listening = Eavesdropper(UNIT_REDIS_URL)
    yield listening
    listening.close()


@pytest.fixture
def ids() -> Callable[[str], str]:
    """Job ids of this test alone: channels are server-wide, and other suites may use the same server."""
    prefix = uuid.uuid4().hex

    def job_id(name: str) -> str:
        return f"{prefix}-{name}"

    return job_id


def _channels(server: redis.Redis, ids: Callable[[str], str]) -> set[str]:
    """The channels of this test's jobs that someone is subscribed to."""
    return {name.decode() for name in server.pubsub_channels(completion_channel.channel(ids("*")))}


def _eventually(check: Callable[[], bool], within_s: float = 2.0) -> bool:
    until = time.monotonic() + within_s
    while not check():
        if time.monotonic() > until:
            return False
        time.sleep(0.01)
    return True


def test_a_process_subscribes_only_to_the_jobs_it_waits_for_and_only_while_it_waits(
    server: redis.Redis, ids: Callable[[str], str]
) -> None:
    process = waiter.CompletionWaiter(UNIT_REDIS_URL)
    first = process.register(ids("a"))
    second = process.register(ids("a"))
    assert _eventually(lambda: _channels(server, ids) == {completion_channel.channel(ids("a"))})
    process.unregister(ids("a"), first)
    assert _channels(server, ids) == {completion_channel.channel(ids("a"))}  # another request still waits for it
    process.unregister(ids("a"), second)
    assert _eventually(lambda: _channels(server, ids) == set())


def test_a_waiter_hears_only_its_own_job(server: redis.Redis, ids: Callable[[str], str]) -> None:
    one, other = waiter.CompletionWaiter(UNIT_REDIS_URL), waiter.CompletionWaiter(UNIT_REDIS_URL)
    waiting_for_a, waiting_for_b = one.register(ids("a")), other.register(ids("b"))
    assert _eventually(lambda: len(_channels(server, ids)) == 2)

    completion_channel.publish_job_done(server, ids("b"), {"job_id": ids("b"), "response": "B's answer"})

    assert waiting_for_b.wait(2.0) and waiting_for_b.announced
    assert not waiting_for_a.wait(0.2)
    # Only the process waiting for B was subscribed to hear it.
    assert server.pubsub_numsub(completion_channel.channel(ids("b"))) == [
        (completion_channel.channel(ids("b")).encode(), 1)
    ]
    assert one.take_body(ids("a"), waiting_for_a) is None
    assert other.take_body(ids("b"), waiting_for_b) == {"job_id": ids("b"), "response": "B's answer"}


def test_the_body_is_left_only_for_a_waiter_and_only_until_it_takes_it(
    server: redis.Redis, ids: Callable[[str], str]
) -> None:
    completion_channel.publish_job_done(server, ids("nobody"), {"response": "unheard"})
    assert server.keys("*") == []

    process = waiter.CompletionWaiter(UNIT_REDIS_URL)
    done = process.register(ids("a"))
    assert _eventually(lambda: _channels(server, ids) == {completion_channel.channel(ids("a"))})
    completion_channel.publish_job_done(server, ids("a"), {"response": "heard"})
    assert done.wait(2.0)
    assert 0 < server.pttl(server.keys("*")[0]) <= completion_channel.BODY_TTL_MS
    assert process.take_body(ids("a"), done) == {"response": "heard"}
    assert server.keys("*") == []


def test_announcements_carry_no_prompt_or_answer_text(
    server: redis.Redis, ids: Callable[[str], str], eavesdropper: Eavesdropper
) -> None:
    process = waiter.CompletionWaiter(UNIT_REDIS_URL)
    done = process.register(ids("a"))
    assert _eventually(lambda: _channels(server, ids) == {completion_channel.channel(ids("a"))})
    texts = [ids("a secret question"), ids("its answer"), ids("another question"), ids("another answer")]

    completion_channel.publish_job_done(
        server, ids("a"), {"job_id": ids("a"), "prompt": texts[0], "response": texts[1]}
    )
    completion_channel.publish_job_done(
        server, ids("b"), {"job_id": ids("b"), "prompt": texts[2], "response": texts[3]}
    )

    assert done.wait(2.0)
    heard = eavesdropper.heard()
    assert not [message for message in heard for text in texts if text.encode() in message[0] + message[1]]
    ours = [message for message in heard if message[0].startswith(completion_channel.channel(ids("")).encode())]
    assert ours == [(completion_channel.channel(ids(name)).encode(), ids(name).encode()) for name in ("a", "b")]


def _kill_subscribers(server: redis.Redis) -> None:
    """Close the subscriber connections on this suite's database (channels are server-wide; databases are not)."""
    db = server.connection_pool.connection_kwargs["db"]
    for client in server.client_list():
        if "P" in client["flags"] and int(client["db"]) == db:
            server.client_kill_filter(_id=client["id"])


def test_a_lost_subscriber_connection_wakes_every_waiter_and_subscribes_again(
    server: redis.Redis, ids: Callable[[str], str]
) -> None:
    process = waiter.CompletionWaiter(UNIT_REDIS_URL)
    done = process.register(ids("a"))
    assert _eventually(lambda: _channels(server, ids) == {completion_channel.channel(ids("a"))})

    _kill_subscribers(server)

    assert done.wait(waiter.RECONNECT_DELAY_S + 2.0)  # woken to recheck: an announcement may have been lost
    assert not done.announced
    done.clear()
    assert _eventually(
        lambda: _channels(server, ids) == {completion_channel.channel(ids("a"))}, within_s=waiter.RECONNECT_DELAY_S + 2
    )
    completion_channel.publish_job_done(server, ids("a"))
    assert _eventually(lambda: done.announced)
