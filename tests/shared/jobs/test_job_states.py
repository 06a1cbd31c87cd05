"""The job's state machine is one table, and the modules of a job's life import one another without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from shared.jobs import states
from shared.store.models import JobStatus

JOBS = Path(__file__).resolve().parents[3] / "shared" / "jobs"

Q, R, S, F = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED


def test_the_transitions_make_exactly_the_documented_moves() -> None:
    moves = set().union(*(transition.edges() for transition in states.TRANSITIONS))

    assert moves == {(Q, R), (R, R), (R, S), (R, F), (R, Q), (Q, F), (Q, None), (Q, Q)}


def test_no_transition_leaves_a_finished_job() -> None:
    assert all(not source.is_terminal for transition in states.TRANSITIONS for source, _ in transition.edges())
    assert set(states.PENDING) == {Q, R}


def _imports_within_jobs(path: Path) -> set[str]:
    """The shared.jobs modules a module imports anywhere in it: in functions and TYPE_CHECKING blocks too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "shared.jobs":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shared.jobs."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[2] for alias in node.names if alias.name.startswith("shared.jobs.")}
    return found - {path.stem}


def test_the_job_modules_import_one_another_without_a_cycle() -> None:
    graph = {path.stem: _imports_within_jobs(path) for path in JOBS.glob("*.py") if path.stem != "__init__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path[path.index(module) :], module))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    # The check sees imports at every level: the accepted modules do import one another.
    assert "states" in graph["runs"] and "lifecycle" in graph["batches"]
