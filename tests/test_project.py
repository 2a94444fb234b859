"""The project's promises: lint and types clean, README's commands are CI's, names documented."""

from __future__ import annotations

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
        "bash scripts/install.sh --test && .venv/bin/python -m pytest",
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
