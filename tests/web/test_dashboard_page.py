"""GET /dashboard: the page and everything it loads come from this server."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from flask.testing import FlaskClient

STATIC = Path(__file__).resolve().parents[2] / "web" / "static"


class _References(HTMLParser):
    """Collects the src and href attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def _page_references(client: FlaskClient) -> list[str]:
    parser = _References()
    with client.get("/dashboard") as response:
        parser.feed(response.get_data(as_text=True))
    return parser.urls


def test_the_page_is_served_with_a_policy_that_allows_only_this_server(client: FlaskClient) -> None:
    with client.get("/dashboard") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        header = response.headers["Content-Security-Policy"]
    policy = dict(part.strip().split(" ", 1) for part in header.split(";"))
    assert policy["default-src"] == policy["script-src"] == policy["connect-src"] == "'self'"


def test_every_file_the_page_loads_is_served_here(client: FlaskClient) -> None:
    references = [url for url in _page_references(client) if not url.startswith("data:")]
    scripts = STATIC / "dashboard"
    # The modules import each other by relative path: those are served from the same folder.
    for module in scripts.glob("*.js"):
        references += [
            f"static/dashboard/{name.removeprefix('./')}"
            for name in re.findall(r'from "(\./[\w.]+)"', module.read_text())
        ]
    assert "static/vendor/chartjs/chart.umd.min.js" in references
    for url in references:
        assert "//" not in url, url
        with client.get(f"/{url}") as response:
            assert response.status_code == 200, url


def test_the_page_names_no_other_host() -> None:
    for path in (STATIC / "dashboard").iterdir():
        assert not re.search(r"https?://", path.read_text()), path


def test_the_vendored_chart_library_ships_with_its_license() -> None:
    bundle = (STATIC / "vendor" / "chartjs" / "chart.umd.min.js").read_text()
    license_text = (STATIC / "vendor" / "chartjs" / "LICENSE.md").read_text()
    assert "Released under the MIT License" in bundle
    assert "Permission is hereby granted, free of charge" in license_text
