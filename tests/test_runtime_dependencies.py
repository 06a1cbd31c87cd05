"""Production installs the runtime dependencies only, pinned in requirements.lock; nothing it loads needs more.

The modules production loads are found by following every import (top-level and inside functions) from web/,
worker/, the `model-router` command and migrations/. The local-stack commands (`run`, `demo`, `simulate`) lead
into shared/devstack's launcher and servers, which may import the `demo` extra; `eval --plot` imports matplotlib
(the `plot` extra). Everything else a production module imports must be a runtime dependency, and every runtime
dependency must be used there.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared.cli import ops
from tests.support.imports import ROOT
from tests.support.imports import Import
from tests.support.imports import file_imports

FIRST_PARTY = ("shared", "web", "worker", "migrations")
# What production runs: every web and worker module, the console script, and the migrations it applies.
PRODUCTION_ROOTS = ("web", "worker", "shared/cli", "migrations")
# Reached only by the local-stack commands of the console script; their imports belong to the `demo` extra.
LOCAL_STACK = ("shared.devstack.demo", "shared.devstack.localstack", "shared.devstack.simulator.server")
# Imported by production modules, yet needed only by a command that documents its extra.
EXTRA_IMPORTS = {"matplotlib": "plot"}
# Imported where present, and installed by the runtime dependency named: the openai SDK's own HTTP stack, whose
# errors the client catches (httpx2 from openai 3.x on).
BROUGHT_BY = {"httpx2": "openai"}
# Runtime dependencies that no module imports: they are run or loaded by name.
NOT_IMPORTED = {
    "gunicorn": "serves web (web/gunicorn_conf.py holds its hooks)",
    "psycopg": "the PostgreSQL driver SQLAlchemy loads for postgresql:// URLs",
}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;]+)")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _requirements(*extras: str) -> list[Requirement]:
    """Return the runtime requirements and those of `extras`, the project's own extras expanded."""
    project = _project()
    found = [Requirement(text) for text in project["dependencies"]]
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def _names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(requirement.name) for requirement in requirements}


def _pins(lock: str) -> dict[str, str]:
    """Return the pinned versions of a lock file, by canonical name."""
    pins: dict[str, str] = {}
    for line in (ROOT / lock).read_text(encoding="utf-8").splitlines():
        if match := PIN.match(line):
            pins[canonicalize_name(match["name"])] = match["version"]
    assert pins, f"{lock} pins nothing"
    return pins


def _source_of(module: str) -> Path | None:
    """Return the file that defines `module` (or the nearest module above a name imported from it)."""
    parts = module.split(".")
    while parts:
        base = ROOT.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        parts.pop()
    return None


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _production_imports() -> tuple[Import, ...]:
    """Return every third-party import of the modules production loads."""
    pending = [path for root in PRODUCTION_ROOTS for path in sorted((ROOT / root).rglob("*.py"))]
    seen: set[Path] = set()
    third_party: list[Import] = []
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for found in file_imports(path):
            top = found.module.split(".")[0]
            if top == "__future__" or top in sys.stdlib_module_names:
                continue
            if top not in FIRST_PARTY:
                third_party.append(found)
                continue
            if any(found.module == stop or found.module.startswith(stop + ".") for stop in LOCAL_STACK):
                continue
            source = _source_of(found.module)
            assert source is not None, f"{found}: no such module in the project"
            # Importing a module runs its packages' __init__ first.
            pending.extend(
                parent / "__init__.py"
                for parent in source.parents
                if ROOT in parent.parents and (parent / "__init__.py").is_file()
            )
            pending.append(source)
    assert seen >= {ROOT / "web" / "__init__.py", ROOT / "worker" / "celery_app.py", ROOT / "shared" / "config.py"}
    return tuple(third_party)


@cache
def _distributions_by_package() -> dict[str, list[str]]:
    """Return the installed distributions providing each top-level package (a scan of every dist: read once)."""
    return metadata.packages_distributions()


def _distribution_of(top_level: str) -> str:
    distributions = _distributions_by_package().get(top_level)
    assert distributions, f"no installed distribution provides {top_level!r}"
    return canonicalize_name(distributions[0])


def test_production_modules_import_only_runtime_dependencies() -> None:
    runtime = _names(_requirements())
    offending = []
    for found in _production_imports():
        top = found.module.split(".")[0]
        if top in EXTRA_IMPORTS:
            assert canonicalize_name(top) in _names(_requirements(EXTRA_IMPORTS[top])) - runtime
        elif top in BROUGHT_BY:
            assert canonicalize_name(BROUGHT_BY[top]) in runtime
        elif _distribution_of(top) not in runtime:
            offending.append(f"{found} (from {_distribution_of(top)})")
    assert not offending, "production imports what only an extra installs:\n" + "\n".join(sorted(offending))


def test_every_runtime_dependency_is_used_by_production() -> None:
    imported = {
        _distribution_of(found.module.split(".")[0])
        for found in _production_imports()
        if found.module.split(".")[0] not in EXTRA_IMPORTS
    }
    unused = _names(_requirements()) - imported - set(NOT_IMPORTED)
    assert not unused, f"runtime dependencies no production module imports (move them to an extra): {unused}"


def test_local_stack_imports_only_runtime_and_demo_dependencies() -> None:
    allowed = _names(_requirements("demo"))
    offending = [
        f"{found} (from {_distribution_of(found.module.split('.')[0])})"
        for path in sorted((ROOT / "shared" / "devstack").rglob("*.py"))
        for found in file_imports(path)
        if (top := found.module.split(".")[0]) not in (*FIRST_PARTY, "__future__")
        and top not in sys.stdlib_module_names
        and _distribution_of(top) not in allowed
    ]
    assert not offending, "the local stack imports what neither runtime nor `demo` installs:\n" + "\n".join(offending)


def test_runtime_lock_satisfies_the_runtime_requirements() -> None:
    pins = _pins("requirements.lock")
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.lock lacks {name}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"


def test_dev_lock_satisfies_every_requirement_the_makefile_installs() -> None:
    pins = _pins("requirements-dev.lock")
    for requirement in _requirements("dev"):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements-dev.lock lacks {name}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"


def test_runtime_lock_pins_what_the_dev_lock_pins() -> None:
    """The suite runs on the dev lock, so production must install the very same versions."""
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    differing = {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version}
    assert not differing, f"requirements.lock differs from requirements-dev.lock (run `make lock`): {differing}"


def test_runtime_lock_leaves_the_extras_out() -> None:
    runtime = _pins("requirements.lock")
    extras_only = {"aiohttp", "fakeredis", "honcho", "pytest", "playwright"}
    assert not extras_only & runtime.keys()


def test_local_stack_commands_check_for_the_whole_demo_extra() -> None:
    extra_only = _names(_requirements("demo")) - _names(_requirements())
    assert {_distribution_of(name) for name in ops.DEMO_EXTRA_MODULES} == extra_only


@pytest.mark.parametrize("command", [ops.simulate, ops.run, ops.demo])
def test_local_stack_commands_name_the_missing_extra(command: click.Command, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def without_honcho(name: str, *args: object) -> object:
        return None if name == "honcho" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_honcho)
    # Were the check gone, the command would fail here at once instead of starting the stack.
    for module in LOCAL_STACK:
        monkeypatch.setitem(sys.modules, module, None)
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2
    assert "demo extra (honcho missing)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
