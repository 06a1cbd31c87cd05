"""Fixtures the integration suites share: a clean simulator per test, a database session, headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.support.browser import Console
from tests.support.browser import headless_chromium
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import reset_simulator

if TYPE_CHECKING:
    from playwright.sync_api import Browser
    from playwright.sync_api import Page


@pytest.fixture
def clean_simulator(stack: Stack) -> Iterator[None]:
    """Start each test of a suite with its own `stack` fixture on the simulator's first settings and zero counts."""
    reset_simulator(stack)
    http("POST", f"{stack.sim}/sim/reset")
    yield
    reset_simulator(stack)


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[Session]:
    """A session on the database of a suite with its own `database_url` fixture, for reading what the stack wrote."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with Session(engine) as session:
        yield session
    engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with headless_chromium() as browser:
        yield browser


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    console.watch(page)
    yield page
    context.close()
