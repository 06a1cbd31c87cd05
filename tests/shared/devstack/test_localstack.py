"""The local stack's worker pool and its number of prompt workers follow the database."""

from __future__ import annotations

from shared.devstack import localstack
from tests.conftest import make_test_settings


def test_workers_wait_on_greenlets_with_postgresql() -> None:
    assert localstack.worker_pool(make_test_settings("postgresql://router@127.0.0.1/router")) == "gevent"


def test_workers_keep_threads_on_sqlite_whose_calls_would_block_a_gevent_loop(tmp_path) -> None:
    assert localstack.worker_pool(make_test_settings(f"sqlite:///{tmp_path}/router.db")) == "threads"


def _prompt_workers(plan: localstack.StackPlan) -> dict[str, str]:
    return {name: command for name, command in plan.processes.items() if "--queues prompts" in command}


def test_postgresql_runs_two_prompt_workers_under_distinct_node_names() -> None:
    settings = make_test_settings("postgresql://u@127.0.0.1:5432/db")
    plan = localstack.plan_stack(settings, {}, simulator=False)
    workers = _prompt_workers(plan)
    assert sorted(workers) == ["worker", "worker_2"]
    assert {command.split("--hostname ")[1].split()[0] for command in workers.values()} == {
        "prompts@%h",
        "prompts_2@%h",
    }
    # the batch queue keeps its single process
    assert sum("--queues batch" in command for command in plan.processes.values()) == 1


def test_sqlite_runs_one_prompt_worker_and_worker_processes_overrides_either(tmp_path) -> None:
    sqlite = make_test_settings(f"sqlite:///{tmp_path}/r.db")
    assert list(_prompt_workers(localstack.plan_stack(sqlite, {}, simulator=False))) == ["worker"]
    postgresql = make_test_settings("postgresql://u@127.0.0.1:5432/db")
    plan = localstack.plan_stack(postgresql, {"WORKER_PROCESSES": "3"}, simulator=False)
    assert sorted(_prompt_workers(plan)) == ["worker", "worker_2", "worker_3"]


def test_workers_hand_back_their_jobs_before_the_supervisor_kills_them() -> None:
    settings = make_test_settings("postgresql://u@127.0.0.1:5432/db")
    plan = localstack.plan_stack(settings, {}, simulator=False)
    assert float(plan.env["WORKER_SHUTDOWN_GRACE_S"]) < localstack.supervisor.STOP_GRACE_S
    chosen = localstack.plan_stack(settings, {"WORKER_SHUTDOWN_GRACE_S": "5"}, simulator=False)
    assert chosen.env["WORKER_SHUTDOWN_GRACE_S"] == "5"
