"""The code stays as the style guide asks: ruff-clean and formatted, and mypy --strict clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "zerotask", "tests", "examples", "bench"],
        ["ruff", "format", "--check", "zerotask", "tests", "examples", "bench"],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_lint(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The zerotask modules ``path`` imports anywhere in it (function-level imports included). ``from
    package import module`` counts as importing the module: a parent package is imported on the way."""
    import ast

    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {base})
    return {name for name in found if name in modules}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((ROOT / "zerotask").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_no_import_cycles() -> None:
    """No module imports, however indirectly, one that imports it back, not even from inside a function
    (``__main__`` modules, which nothing imports, aside)."""
    modules = _modules()
    names = set(modules)
    graph = {name: _imports(path, name, names) - {name} for name, path in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            current, trail = stack.pop()
            for target in graph[current]:
                if target == start:
                    return [*trail, start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))
        return None

    cycles = [cycle for name in graph if not name.endswith("__main__") and (cycle := cycle_from(name)) is not None]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_is_longer_than_one_person_holds_in_their_head() -> None:
    long = {name: lines for name, path in _modules().items() if (lines := len(path.read_text().splitlines())) > 400}
    assert not long, f"split these along a concept: {long}"
