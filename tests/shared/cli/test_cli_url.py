"""Where the client commands send their requests: --url, else MODEL_ROUTER_URL, else the local stack on PORT."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from click.testing import Result

from shared.cli import main
from shared.cli.http import Endpoint

HEALTHY = {"status": "ok", "checks": {"database": "ok", "broker": "ok", "workers": 1}}


@pytest.fixture(autouse=True)
def in_a_directory_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run each test where no `.env` but the one it writes can name a port or a URL."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _health(args: list[str], seen: list[str], **environment: str | None) -> Result:
    """Run `model-router [args] health --json` against a transport that records the URL asked for."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=HEALTHY)

    env = {"MODEL_ROUTER_URL": None, "PORT": None, **environment}
    return CliRunner().invoke(
        main, [*args, "health", "--json"], obj={"transport": httpx.MockTransport(answer)}, env=env
    )


@pytest.mark.parametrize(
    ("args", "environment", "expected"),
    [
        ([], {}, "http://127.0.0.1:8000/api/health"),
        ([], {"PORT": "8123"}, "http://127.0.0.1:8123/api/health"),
        ([], {"PORT": "8123", "MODEL_ROUTER_URL": "http://router.internal:9999"}, "http://router.internal:9999/api/health"),
        (["--url", "http://elsewhere:7000"], {"PORT": "8123", "MODEL_ROUTER_URL": "http://router.internal:9999"},
         "http://elsewhere:7000/api/health"),
    ],
    ids=["default", "port", "model-router-url-over-port", "flag-over-both"],
)  # fmt: skip
def test_the_url_follows_flag_then_model_router_url_then_port(
    args: list[str], environment: dict[str, str], expected: str
) -> None:
    seen: list[str] = []
    result = _health(args, seen, **environment)
    assert result.exit_code == 0, result.output
    assert seen == [expected]


def test_a_port_that_is_no_port_is_a_usage_error() -> None:
    result = _health([], [], PORT="eighty")
    assert result.exit_code == 2
    assert "invalid setting PORT" in result.output


def test_an_endpoint_built_without_a_url_uses_the_same_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_ROUTER_URL", raising=False)
    monkeypatch.setenv("PORT", "8124")
    assert Endpoint().url == "http://127.0.0.1:8124"


def test_help_names_port_as_the_default() -> None:
    assert "http://127.0.0.1:${PORT:-8000}" in CliRunner().invoke(main, ["--help"]).output


@pytest.mark.parametrize(
    ("dotenv", "environment", "expected"),
    [
        ("PORT=8129\n", {}, "http://127.0.0.1:8129/api/health"),
        ("PORT=8129\nMODEL_ROUTER_URL=http://router.internal:9999\n", {}, "http://router.internal:9999/api/health"),
        ("PORT=8129\n", {"PORT": "8123"}, "http://127.0.0.1:8123/api/health"),
        ("MODEL_ROUTER_URL=http://router.internal:9999\n", {"PORT": "8123"}, "http://router.internal:9999/api/health"),
    ],
    ids=["dotenv-port", "dotenv-url-over-port", "environment-over-dotenv", "dotenv-url-over-environment-port"],
)  # fmt: skip
def test_the_url_reads_dotenv_as_the_apps_settings_do(
    in_a_directory_of_its_own: Path, dotenv: str, environment: dict[str, str], expected: str
) -> None:
    (in_a_directory_of_its_own / ".env").write_text(dotenv, encoding="utf-8")
    seen: list[str] = []
    result = _health([], seen, **environment)
    assert result.exit_code == 0, result.output
    assert seen == [expected]


def test_a_port_in_dotenv_that_is_no_port_is_a_usage_error(in_a_directory_of_its_own: Path) -> None:
    (in_a_directory_of_its_own / ".env").write_text("PORT=eighty\n", encoding="utf-8")
    result = _health([], [])
    assert result.exit_code == 2
    assert "invalid setting PORT" in result.output
