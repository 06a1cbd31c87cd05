"""Convention C1: imports flow one way (web → worker.tasks/celery_app → shared), and shared knows no framework.

Every import statement in the package sources is read with `ast`, including imports inside functions,
so a lazy import cannot slip past the rule.
"""

from __future__ import annotations

from tests.support.imports import ROOT
from tests.support.imports import Import
from tests.support.imports import file_imports
from tests.support.imports import imports_in

SHARED_FORBIDDEN = ("flask", "celery", "kombu", "gunicorn", "web", "worker")
WEB_MAY_IMPORT_FROM_WORKER = ("worker.tasks", "worker.celery_app")


def _package_imports(package: str) -> list[Import]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return [found for path in files for found in file_imports(path)]


def _is_within(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


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
    ]
    assert str(found[1]) == "web/api/probe.py:2 imports worker.runtime"


def test_relative_imports_in_a_package_init_count_from_that_package() -> None:
    found = imports_in("from . import db\nfrom .api import jobs\n", path=ROOT / "web" / "__init__.py")
    assert [item.module for item in found] == ["web.db", "web.api.jobs"]
