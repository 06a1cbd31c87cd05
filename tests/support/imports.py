"""Read the imports of the package sources with `ast`, including those inside functions.

Shared by the import-boundary rules and the runtime-dependency rules, so both read imports the same way.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Import:
    """One imported module, resolved to its absolute dotted name, and where it was imported."""

    path: Path
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.module}"


def _package_of(path: Path) -> tuple[str, ...]:
    """Return the dotted package `path` belongs to, as the parts relative imports count up from."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    # A package's __init__ is the package itself; any other module lives in its directory's package.
    return parts[:-1]


def imports_in(source: str, *, path: Path) -> list[Import]:
    """Return every module `source` (the text of `path`) imports, resolved to absolute names.

    `from a import b` yields `a.b`, since `b` may be a submodule (`from worker import tasks`).
    """
    package = _package_of(path)
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(Import(path, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.extend(Import(path, node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def file_imports(path: Path) -> list[Import]:
    """Return every module the source file at `path` imports."""
    return imports_in(path.read_text(encoding="utf-8"), path=path)
