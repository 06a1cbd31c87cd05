"""Each local stack keeps its files in a run directory of its own: two stacks on one host share none."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.cli import main
from shared.cli import ops
from shared.devstack import demo
from shared.devstack import localstack
from shared.devstack import stack_paths
from shared.errors import ConfigError
from shared.observability import metrics
from tests.conftest import make_test_settings


@pytest.fixture(autouse=True)
def redis_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan stacks as if Redis answered: planning then starts nothing."""
    monkeypatch.setattr(localstack, "_redis_answers", lambda url: True)


def _files(plan: localstack.StackPlan) -> set[str]:
    """Every path the plan's processes write to: the control socket, beat's schedule, the metrics directory."""
    words = [word for command in plan.processes.values() for word in shlex.split(command)]
    flags = {"--control-socket", "--schedule"}
    return {after for before, after in itertools.pairwise(words) if before in flags} | {plan.env[metrics.MULTIPROC_ENV]}


def test_the_run_directory_is_named_after_the_port_under_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert stack_paths.StackPaths.of({}).root == tmp_path / ".run" / "8000"
    assert stack_paths.StackPaths.of({"PORT": "8123"}).root == tmp_path / ".run" / "8123"
    assert stack_paths.StackPaths.of({"PORT": "8123", "RUN_DIR": str(tmp_path / "mine")}).root == tmp_path / "mine"


def test_two_stacks_on_two_ports_share_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    settings = make_test_settings(f"sqlite:///{tmp_path}/r.db")
    first = localstack.plan_stack(settings, {}, simulator=True)
    second = localstack.plan_stack(settings, {"PORT": "8001", "SIM_PORT": "9001"}, simulator=True)
    assert len(_files(first)) == len(_files(second)) == 3
    assert _files(first).isdisjoint(_files(second))
    assert all(Path(path).is_relative_to(tmp_path / ".run" / "8001") for path in _files(second))
    assert second.web_url == "http://127.0.0.1:8001"


def test_run_dir_holds_every_file_of_the_stack(tmp_path: Path) -> None:
    settings = make_test_settings(f"sqlite:///{tmp_path}/r.db")
    plan = localstack.plan_stack(settings, {"RUN_DIR": str(tmp_path / "stack")}, simulator=False)
    assert _files(plan) == {str(tmp_path / "stack" / name) for name in ("gunicorn.ctl", "beat-schedule", "metrics")}


def test_a_port_that_is_no_port_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PORT"):
        stack_paths.StackPaths.of({"PORT": "99999"})


def test_web_puts_its_control_socket_in_the_run_directory_of_its_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(ops.os, "execvp", lambda file, argv: calls.append(argv))
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env={"PORT": None, "RUN_DIR": None}).invoke(main, ["web", "--port", "8124"])
    assert result.exit_code == 0, result.output
    argv = calls[0]
    assert argv[argv.index("--control-socket") + 1] == str(tmp_path / ".run" / "8124" / "gunicorn.ctl")
    assert (tmp_path / ".run" / "8124").is_dir()


def test_a_worker_with_beat_keeps_its_schedule_in_the_run_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(ops.os, "execvp", lambda file, argv: calls.append(argv))
    result = CliRunner(env={"RUN_DIR": str(tmp_path / "stack")}).invoke(main, ["worker", "--beat"])
    assert result.exit_code == 0, result.output
    argv = calls[0]
    assert argv[argv.index("--schedule") + 1] == str(tmp_path / "stack" / "beat-schedule")


def test_the_demo_prints_the_url_its_stack_serves_and_logs_in_its_run_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[dict[str, str]] = []
    exercised: list[str] = []

    class StoppedStack:
        pid = -1

        def __init__(self, argv: list[str], *, env: dict[str, str], **kwargs: object) -> None:
            started.append(env)

        def poll(self) -> int:
            return 0

    monkeypatch.setenv("PORT", "8125")
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "stack"))
    monkeypatch.setattr(demo.subprocess, "Popen", StoppedStack)
    monkeypatch.setattr(demo, "_wait_until_ready", lambda base, stack: exercised.append(base))
    monkeypatch.setattr(demo, "_use_a_key_if_required", lambda: None)
    monkeypatch.setattr(demo, "_exercise", exercised.append)
    assert demo.run_demo() == 0
    output = capsys.readouterr().out
    # The stack is started with the same PORT, so the URL it serves is the one the demo uses and prints.
    assert started[0]["PORT"] == "8125"
    assert exercised == ["http://127.0.0.1:8125", "http://127.0.0.1:8125"]
    assert "on http://127.0.0.1:8125" in output and "http://127.0.0.1:8125/dashboard" in output
    assert "8000" not in output
    assert (tmp_path / "stack" / "demo.log").exists()


def test_the_demo_serves_on_the_port_dotenv_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[dict[str, str]] = []

    class StoppedStack:
        pid = -1

        def __init__(self, argv: list[str], *, env: dict[str, str], **kwargs: object) -> None:
            started.append(env)

        def poll(self) -> int:
            return 0

    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PORT=8126\n", encoding="utf-8")
    monkeypatch.setattr(demo.subprocess, "Popen", StoppedStack)
    monkeypatch.setattr(demo, "_wait_until_ready", lambda base, stack: None)
    monkeypatch.setattr(demo, "_use_a_key_if_required", lambda: None)
    monkeypatch.setattr(demo, "_exercise", lambda base: None)

    assert demo.run_demo() == 0

    assert started[0]["PORT"] == "8126"
    assert "on http://127.0.0.1:8126" in capsys.readouterr().out
    assert (tmp_path / ".run" / "8126" / "demo.log").exists()


def test_run_serves_on_the_port_dotenv_names_unless_the_environment_names_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plans: list[localstack.StackPlan] = []
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PORT=8127\n", encoding="utf-8")
    monkeypatch.setattr(ops, "_require_demo_extra", lambda: None)
    monkeypatch.setattr("shared.store.migrate.upgrade", lambda *args, **kwargs: None)
    monkeypatch.setattr(localstack, "run_stack", lambda plan: plans.append(plan) or 0)
    unset = dict.fromkeys(("PORT", "RUN_DIR", "OPENAI_BASE_URL", "OPENAI_API_KEY", "DATABASE_URL"))

    for environment, port in (({}, "8127"), ({"PORT": "8128"}, "8128")):
        result = CliRunner(env={**unset, **environment}).invoke(main, ["run"])
        assert result.exit_code == 0, result.output
        plan = plans.pop()
        assert plan.web_url == f"http://127.0.0.1:{port}"
        assert f"--bind 127.0.0.1:{port} " in plan.processes["web"]
        assert plan.env["PORT"] == port
        assert f"Serving http://127.0.0.1:{port}" in result.output
