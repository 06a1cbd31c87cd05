"""Convention C1: imports flow one way (web → worker.tasks/celery_app → shared), shared knows no framework,
the local stack and the command line sit above the rest of shared, and no module imports itself back.

Every import statement in the package sources is read with `ast`, including imports inside functions and
`if TYPE_CHECKING:` blocks, so a lazy import cannot hide a cycle or slip past a rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path

from tests.support.imports import ROOT
from tests.support.imports import Import
from tests.support.imports import imports_in

PACKAGES = ("shared", "web", "worker")
SHARED_FORBIDDEN = ("flask", "celery", "kombu", "gunicorn", "web", "worker")
WEB_MAY_IMPORT_FROM_WORKER = ("worker.tasks", "worker.celery_app")
# The wings above the rest of shared: they may import anything of shared, and nothing imports them.
TOP_WINGS = ("shared.devstack", "shared.cli")


def _package_imports(package: str) -> list[Import]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return [found for path in files for found in imports_in(path.read_text(encoding="utf-8"), path=path)]


def _is_within(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(imported: str, modules: Iterable[str]) -> str | None:
    """Return the module of ours that `imported` loads, or None for a third-party or standard module.

    `from a import b` reads as `a.b`: that is the submodule when `b` is one, else a name in `a`, whose
    module is the longest prefix that is one of ours.
    """
    known = set(modules)
    name = imported
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _import_graph() -> dict[str, dict[str, Import]]:
    """Return, for each module of web/, worker/ and shared/, the modules of ours it imports (and one import
    statement that does)."""
    paths = {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
    graph: dict[str, dict[str, Import]] = {}
    for module, path in paths.items():
        edges = graph.setdefault(module, {})
        for found in imports_in(path.read_text(encoding="utf-8"), path=path):
            target = _resolve(found.module, paths)
            if target is not None and target != module:
                edges.setdefault(target, found)
    return graph


def _tangles(graph: Mapping[str, Mapping[str, object]]) -> list[set[str]]:
    """Return each group of two or more modules that import one another, directly or through each other.

    The groups are the strongly connected components (Tarjan's algorithm, iterative: no recursion limit).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph.get(target, {})))))
            elif target in on_stack:
                low[node] = min(low[node], index[target])
    return groups


def _cycle_within(group: set[str], graph: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Return the shortest cycle from the group's first module back to it, through the group only."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    return [*paths[node], start]
                if target in group and target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(group)} holds no cycle")


def test_every_package_source_parses() -> None:
    for package in ("shared", "web", "worker"):
        assert _package_imports(package), f"{package}/ imports nothing, so the rules below would prove nothing"


def test_shared_imports_no_framework_and_no_service_package() -> None:
    offending = [
        str(found)
        for found in _package_imports("shared")
        if any(_is_within(found.module, top) for top in SHARED_FORBIDDEN)
    ]
    assert not offending, "shared/ must stay framework-free (C1):\n" + "\n".join(offending)


def test_worker_never_imports_web() -> None:
    offending = [str(found) for found in _package_imports("worker") if _is_within(found.module, "web")]
    assert not offending, "worker/ must not import web/ (C1):\n" + "\n".join(offending)


def test_web_imports_worker_only_to_enqueue_or_build_celery() -> None:
    offending = [
        str(found)
        for found in _package_imports("web")
        if _is_within(found.module, "worker")
        and not any(_is_within(found.module, allowed) for allowed in WEB_MAY_IMPORT_FROM_WORKER)
    ]
    assert not offending, "web/ may import only worker.tasks or worker.celery_app (C1):\n" + "\n".join(offending)


def test_no_module_imports_itself_back() -> None:
    graph = _import_graph()
    tangles = _tangles(graph)
    described = []
    for group in tangles:
        cycle = _cycle_within(group, graph)
        described.append(f"{', '.join(sorted(group))} import one another, for one: {' -> '.join(cycle)}")
        described.extend(f"    {graph[a][b]}" for a, b in itertools.pairwise(cycle))
    assert not tangles, "import cycles (function-level and TYPE_CHECKING imports count):\n" + "\n".join(described)


def test_devstack_and_cli_sit_above_the_rest() -> None:
    offending = [
        str(found)
        for package in PACKAGES
        for found in _package_imports(package)
        if any(_is_within(found.module, top) for top in TOP_WINGS)
        and not any(_is_within(_module_name(found.path), top) for top in TOP_WINGS)
    ]
    assert not offending, "nothing below shared/devstack and shared/cli may import them:\n" + "\n".join(offending)


def test_cycle_finder_reports_each_cycle_once_and_nothing_else() -> None:
    graph = {
        "a": {"b": None},
        "b": {"c": None, "d": None},
        "c": {"a": None},
        "d": {"e": None},
        "e": {"d": None, "f": None},
        "f": {},
        "g": {"a": None},
    }
    tangles = _tangles(graph)
    assert tangles == [{"d", "e"}, {"a", "b", "c"}]
    assert [_cycle_within(group, graph) for group in tangles] == [["d", "e", "d"], ["a", "b", "c", "a"]]
    assert _tangles({"a": {"b": None}, "b": {"c": None}, "c": {}}) == []


def test_an_imported_name_resolves_to_its_module_and_a_submodule_to_itself() -> None:
    modules = ["shared", "shared.jobs", "shared.jobs.lifecycle", "shared.routing.difficulty"]
    assert _resolve("shared.jobs.lifecycle", modules) == "shared.jobs.lifecycle"  # from shared.jobs import lifecycle
    assert _resolve("shared.routing.difficulty.DifficultyEstimate", modules) == "shared.routing.difficulty"
    assert _resolve("shared.jobs.lifecycle.JobRequest", modules) == "shared.jobs.lifecycle"
    assert _resolve("sqlalchemy.orm.Session", modules) is None
    assert _module_name(ROOT / "shared" / "jobs" / "__init__.py") == "shared.jobs"


def test_import_reader_resolves_every_import_form() -> None:
    """The rules above are only as good as the reader: check it on each form of import."""
    source = (
        "import flask\n"
        "import worker.runtime as rt\n"
        "from worker import tasks, runtime\n"
        "from aiohttp import web\n"
        "from . import schemas\n"
        "from .. import db\n"
        "from ..serializers import job_body\n"
        "def lazy():\n"
        "    from celery import Celery\n"
        "if TYPE_CHECKING:\n"
        "    from shared.jobs.views import JobView\n"
    )
    found = imports_in(source, path=ROOT / "web" / "api" / "probe.py")
    assert [item.module for item in found] == [
        "flask",
        "worker.runtime",
        "worker.tasks",
        "worker.runtime",
        "aiohttp.web",
        "web.api.schemas",
        "web.db",
        "web.serializers.job_body",
        "celery.Celery",
        "shared.jobs.views.JobView",
    ]
    assert str(found[1]) == "web/api/probe.py:2 imports worker.runtime"


def test_relative_imports_in_a_package_init_count_from_that_package() -> None:
    found = imports_in("from . import db\nfrom .api import jobs\n", path=ROOT / "web" / "__init__.py")
    assert [item.module for item in found] == ["web.db", "web.api.jobs"]


def test_gunicorn_hooks_load_without_the_app() -> None:
    """Gunicorn's master loads web.gunicorn_conf before gevent patches its workers: it must not pull the app in."""
    import subprocess
    import sys

    probe = (
        "import sys, web.gunicorn_conf; "
        "print(sorted(m for m in ('flask', 'web.app', 'openai', 'redis') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
