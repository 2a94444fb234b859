"""The project's promises: lint and types clean, README's commands are CI's, names documented."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import flask_uwsgi_websocket

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    run = subprocess.run(
        [str(BIN / "ruff"), "check", "flask_uwsgi_websocket", "tests", "examples", "bench"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_strict_is_clean() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.rst").read_text()
    commands = [line.strip() for line in readme.split("Usage")[0].splitlines() if "&&" in line]
    assert commands == [
        "bash scripts/install.sh && .venv/bin/python examples/echo_gevent.py",
        "bash scripts/install.sh --test && bash scripts/test-all.sh",
    ]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci


def test_public_names_are_exported_and_documented() -> None:
    assert (ROOT / "flask_uwsgi_websocket" / "py.typed").exists()
    for name in flask_uwsgi_websocket.__all__:
        obj = getattr(flask_uwsgi_websocket, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(member):
                    assert inspect.getdoc(member), f"{name}.{attr}"


def _package_imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports, type-only ones too."""
    package = ROOT / "flask_uwsgi_websocket"

    def name_of(path: Path) -> str:
        parts = list(path.with_suffix("").relative_to(ROOT).parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    paths = {name_of(path): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    found.add(target if target in paths else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = found
    return graph


def test_no_import_cycle_between_the_package_modules() -> None:
    graph = _package_imports()
    inside = {
        module: {d for d in deps if d in graph and d != module} for module, deps in graph.items()
    }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        for dep in inside[module]:
            visit(dep, [*path, module])
        done.add(module)

    for module in inside:
        visit(module, [])


def test_the_core_knows_neither_flask_nor_uwsgi_and_one_module_talks_to_uwsgi() -> None:
    graph = _package_imports()
    for module, deps in graph.items():
        outside = {dep.split(".")[0] for dep in deps if not dep.startswith("flask_uwsgi_websocket")}
        if module.startswith("flask_uwsgi_websocket.core"):
            assert not outside & {"flask", "werkzeug", "uwsgi"}, module
            assert all(
                dep.startswith(("flask_uwsgi_websocket.core", "flask_uwsgi_websocket.exceptions"))
                for dep in deps
                if dep.startswith("flask_uwsgi_websocket")
            ), module
        if module != "flask_uwsgi_websocket.uwsgi_api":
            assert "uwsgi" not in outside, module


def test_no_module_uses_another_modules_private_names() -> None:
    # Werkzeug's LocalProxy._get_current_object is its documented way to the proxied object.
    allowed = {"_get_current_object"}
    for path in (ROOT / "flask_uwsgi_websocket").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [alias.name for alias in node.names]
                assert not [n for n in names if n.startswith("_") and not n.startswith("__")], path
            if not isinstance(node, ast.Attribute) or node.attr in allowed:
                continue
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                assert isinstance(owner, ast.Name) and owner.id in ("self", "cls"), (
                    f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
                )
