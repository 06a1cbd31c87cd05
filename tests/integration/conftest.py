"""Browser fixtures for the suites that drive the dashboard in headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.browser import Console
from tests.support.browser import headless_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Browser
    from playwright.sync_api import Page


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
