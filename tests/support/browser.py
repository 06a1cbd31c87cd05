"""Headless Chromium (Debian's package) driven by Playwright, and what its pages print to the console."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser
    from playwright.sync_api import ConsoleMessage
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# Keep the browser quiet: no update checks, sync, translation or other calls to anything but 127.0.0.1.
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-default-apps", "--disable-sync", "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
)  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """Start headless Chromium; fail (never skip) naming the fix when it or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it, or run `apt-get install chromium` as root")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: `make test` installs it (the dev extra), or `pip install -e '.[dev]'`")
    with sync_playwright() as playwright:
        # Playwright's own browser downloads are never used: it drives the system's Chromium.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Console:
    """The errors a page reported: console.error calls, failed resource loads, and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url', '')})")


def save_screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot under test-artifacts/ and print where it is (the viewport only when a dialog is open)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path
