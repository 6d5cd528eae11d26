"""architecture.md's import rule, read from the source: no module under app/ imports `worker`
(the studio starts workers by name and sends by task name), and sam3_lora imports neither
app nor worker. Every import counts: module level, inside functions, relative, and the
`importlib.import_module("...")` / `__import__("...")` / `find_spec("...")` forms."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"app": {"worker"}, "sam3_lora": {"app", "worker"}, "worker": set()}
IMPORT_CALLS = {"import_module", "__import__", "find_spec"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, the source of `module`."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORT_CALLS):
            found.append((node.lineno, node.args[0].value))
    return found


def sources() -> list[Path]:
    return sorted(path for room in FORBIDDEN for path in (REPO_ROOT / room).rglob("*.py"))


def test_the_reader_sees_every_form_of_import():
    source = ("import os\n"
              "def f():\n    from worker.tasks import train\n"
              "def g():\n    import importlib\n    importlib.import_module('worker.run_job')\n"
              "from . import recipe\nfrom ..store import db\n")
    names = {name for _, name in imported_modules(source, "app.jobs.queue")}
    assert names == {"os", "worker.tasks", "importlib", "worker.run_job", "app.jobs", "app.store"}
    assert {name for _, name in imported_modules("from . import x", "app.jobs", is_package=True)} == {"app.jobs"}


def test_the_rooms_are_read():
    rooms = {module_name(path).split(".")[0] for path in sources()}
    assert rooms == set(FORBIDDEN) and len(sources()) > 50


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_no_import_climbs_against_the_rule(room):
    crossings = []
    for path in (REPO_ROOT / room).rglob("*.py"):
        module = module_name(path)
        for line, name in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            if name.split(".")[0] in FORBIDDEN[room]:
                crossings.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {name}")
    assert crossings == []
