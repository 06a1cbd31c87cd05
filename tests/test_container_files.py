"""The Dockerfile and docker-compose.yml: a non-root image from the lock file, and a compose file without secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
# Required settings: a compose file must demand them (`${NAME:?…}`) and give none a value.
REQUIRED_FROM_ENVIRONMENT = ("POSTGRES_PASSWORD", "WEBHOOK_SECRET")
ONE_SHOT_SERVICES = {"migrate"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_the_image_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}


def test_the_image_installs_the_lock_file_and_no_dev_tools() -> None:
    assert re.search(r"pip install .*requirements\.lock", DOCKERFILE)
    assert re.search(r"pip install --no-deps ", DOCKERFILE)
    assert "[dev]" not in DOCKERFILE and "tests" not in re.findall(r"^COPY (\S+)", DOCKERFILE, re.MULTILINE)


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".env", ".venv", "*.db", ".git", "bench/results", "test-artifacts", ".pytest_cache"} <= ignored


def test_compose_builds_the_dockerfile(compose: dict[str, Any]) -> None:
    built = [service for service in compose["services"].values() if "build" in service]
    assert built and all(service["build"]["dockerfile"] == "Dockerfile" for service in built)


def test_compose_hard_codes_no_password(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for name in REQUIRED_FROM_ENVIRONMENT:
        assert f"${{{name}:?" in text, f"{name} must come from the environment, with no default"
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for service in compose["services"].values():
        url = service.get("environment", {}).get("DATABASE_URL", "")
        assert not re.search(r"://[^:/@]+:[^$@][^@]*@", url), f"a literal password in {url}"


def test_compose_passes_the_webhook_secret_to_every_app_process(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["environment"]["WEBHOOK_SECRET"] == "${WEBHOOK_SECRET:?set WEBHOOK_SECRET}", name


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name not in ONE_SHOT_SERVICES:
            assert "healthcheck" in service, name
    assert "/livez" in " ".join(compose["services"]["web"]["healthcheck"]["test"])


def test_beat_keeps_its_schedule_in_a_volume_of_its_own(compose: dict[str, Any]) -> None:
    beat = compose["services"]["beat"]
    schedule = next(arg for arg in beat["command"] if arg.startswith("--schedule="))
    directory = schedule.removeprefix("--schedule=").rsplit("/", 1)[0]
    assert not directory.startswith("/tmp")
    assert any(volume.endswith(f":{directory}") for volume in beat["volumes"])
