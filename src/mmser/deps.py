"""Which `src/mmser` modules a script needs: the transitive closure of its `mmser` imports, read from the source.

One answer serves two checks that must not drift from the code: a stage's code deps in `dvc.yaml` (a test
compares them with this closure) and the code part of an encoder's identity (mmser.encoders.identity hashes
the closure of the encoder's module). Imports are read with `ast`, not executed: function-level imports
count (they run when the function does), imports under `if TYPE_CHECKING:` do not (they never run).
A package's `__init__.py` counts when it holds code; an empty one executes nothing. A module that runs a
sibling by its file name (pyfunc.py hands MLflow `pyfunc_entry.py`) names it in a string literal: a literal
`<name>.py` that is a file beside the module counts as an import of it.
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = "mmser"
PACKAGE_DIR = Path(__file__).resolve().parent  # src/mmser


def module_file(name: str) -> Path | None:
    """The source file of module `name` (`mmser.data.audio` -> src/mmser/data/audio.py), or None if not in mmser."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, package: str | None) -> set[str]:
    """Dotted names imported anywhere in `tree` (candidates: `from a import b` gives both a and a.b)."""
    names: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)  # the body runs only under a type checker
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and package:  # relative import, resolved against the importing file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return names


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    docstring = body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    return len(body) > (1 if docstring else 0)


def _package_of(path: Path) -> str | None:
    """The package a file inside mmser belongs to (its own name for an `__init__.py`)."""
    try:
        rel = path.resolve().relative_to(PACKAGE_DIR)
    except ValueError:
        return None
    return ".".join([PACKAGE, *rel.parent.parts])


@lru_cache(maxsize=None)
def _direct(path: Path) -> tuple[frozenset[Path], frozenset[str]]:
    """(mmser files, top-level names of other modules) that the file at `path` imports directly."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    files: set[Path] = set()
    others: set[str] = set()
    for name in _imported_names(tree, _package_of(path)):
        if name.split(".")[0] != PACKAGE:
            if name:
                others.add(name.split(".")[0])
            continue
        found = module_file(name)
        if found is not None and (found.name != "__init__.py" or _has_code(found)):
            files.add(found)
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs the __init__ of a and a.b
            init = module_file(".".join(parts[:i]))
            if init is not None and init.name == "__init__.py" and _has_code(init):
                files.add(init)
    for node in ast.walk(tree):  # a sibling run by file name
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py"):
            sibling = path.parent / node.value
            if ("/" not in node.value and node.value != "__init__.py" and sibling.is_file()
                    and _package_of(sibling) is not None):
                files.add(sibling.resolve())
    files.discard(path)
    return frozenset(files), frozenset(others)


def closure(path: str | Path) -> set[Path]:
    """The mmser source files that `path` (a stage script or a module file) imports, directly or not.

    `path` itself is not included. Files are absolute; the answer is read from the files as they are now
    (a cached parse is reused only while the file is unchanged).
    """
    start = Path(path).resolve()
    _refresh(start)
    seen: set[Path] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        _refresh(current)
        for found in _direct(current)[0]:
            if found not in seen and found != start:
                seen.add(found)
                todo.append(found)
    return seen


def third_party_imports(paths: set[Path]) -> set[str]:
    """Top-level names of the non-mmser, non-standard-library modules that `paths` import (e.g. torch, soxr)."""
    names: set[str] = set()
    for path in paths:
        _refresh(path)
        names |= _direct(path)[1]
    return {n for n in names if n not in sys.stdlib_module_names and n != "__future__"}


_stamps: dict[Path, tuple[int, int]] = {}


def _refresh(path: Path) -> None:
    """Forget a cached parse of `path` when the file changed since (an edit must change the answer)."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    if _stamps.get(path) != stamp:
        _stamps[path] = stamp
        _direct.cache_clear()


def module_source_file(module: str) -> Path:
    """The source file of an imported module (any package), from `sys.modules` or by importing it."""
    import importlib

    mod = sys.modules.get(module) or importlib.import_module(module)
    if not getattr(mod, "__file__", None):
        raise ValueError(f"module {module} has no source file")
    return Path(mod.__file__).resolve()
