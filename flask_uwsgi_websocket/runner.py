"""``app.run()``: turn keyword arguments into a uWSGI command line and become uWSGI."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["build_command", "checked_command", "find_uwsgi", "run_uwsgi", "uwsgi_options"]

#: How to build a uWSGI with every engine for this interpreter, as a shell command: greenlet's
#: header is found by its absolute path; --force-reinstall and --no-cache-dir make pip build
#: even when a stock uWSGI (without asyncio) is installed or cached.
INSTALL_COMMAND = (
    f"{shlex.quote(sys.executable)} -m pip install greenlet gevent && UWSGI_PROFILE=asyncio "
    f"UWSGI_EMBED_PLUGINS=gevent CFLAGS={shlex.quote(f'-I{sys.prefix}/include/site/python')}"
    f"{sys.version_info[0]}.{sys.version_info[1]} {shlex.quote(sys.executable)} -m pip install "
    f"--force-reinstall --no-cache-dir --no-binary uwsgi uwsgi"
)
INSTALL_HINT = (
    f"install it with the engines this package needs: {INSTALL_COMMAND} "
    f"(README.rst, 'Installing uWSGI')"
)

#: The environment variable that serves Werkzeug's interactive debugger in the worker
#: (``app.run(debug=True)`` sets it; set it to ``1`` when starting uWSGI by hand).
DEBUG_ENV = "FLASK_UWSGI_DEBUG"

#: ``--http-buffer-size`` that ``app.run`` gives uWSGI's ``--http`` router.
ROUTER_BUFFER_SIZE = 65536

#: Werkzeug development-server arguments that have no uWSGI meaning.
_REFUSED = {
    "ssl_context": (
        "serve HTTPS with uWSGI's own option, e.g. https='localhost:5443,cert.pem,key.pem'"
    ),
    "use_debugger": "debug=True serves the interactive debugger",
    "use_evalex": "debug=True serves the interactive debugger, console included",
    "passthrough_errors": "a Werkzeug development server option",
    "extra_files": "use py_autoreload=1 or uWSGI's touch_reload='file'",
    "exclude_patterns": "a Werkzeug reloader option",
    "reloader_type": "a Werkzeug reloader option; uWSGI's is py_autoreload",
    "reloader_interval": "a Werkzeug reloader option; use py_autoreload=SECONDS",
    "static_files": "use uWSGI's static_map='/static=folder'",
    "request_handler": "a Werkzeug development server option",
}


def uwsgi_options(options: Mapping[str, Any]) -> list[str]:
    """``{"snake_case": value}`` as uWSGI arguments.

    ``True`` is a bare flag, ``False`` and ``None`` are left out, a list or
    tuple repeats the option, anything else is ``--snake-case str(value)``.
    """
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is None or item is False:
                continue
            if item is True:
                args.append(flag)
            else:
                args += [flag, str(item)]
    return args


def _app_location(app: Flask) -> list[str]:
    """The uWSGI options that load ``app`` in the workers."""
    module = sys.modules.get(app.import_name)
    names = [name for name, value in vars(module).items() if value is app] if module else []
    if not names:
        raise RuntimeError(
            f"run() can't find the app in module {app.import_name!r}: keep it in a "
            f"module-level variable, or start uWSGI yourself (--wsgi module:variable)"
        )
    callable_name = "app" if "app" in names else names[0]
    filename = getattr(module, "__file__", None)
    import_name = app.import_name
    if import_name == "__main__":
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.name != "__main__":
            import_name = spec.name  # python -m package.module: import it by its name
        elif filename:
            path = os.path.abspath(filename)
            return [
                "--wsgi-file", path, "--callable", callable_name,
                "--pythonpath", os.path.dirname(path),
            ]  # fmt: skip
    return [
        "--module", f"{import_name}:{callable_name}",
        "--pythonpath", _import_root(import_name, filename),
    ]  # fmt: skip


def _import_root(import_name: str, filename: str | None) -> str:
    """The directory from which ``import_name``, found at ``filename``, is importable.

    Not the current directory: ``python /elsewhere/run.py`` importing the app
    from a module beside it must work from any directory.
    """
    if not filename:
        return os.getcwd()
    path = os.path.abspath(filename)
    levels = import_name.count(".") + 1
    if os.path.splitext(os.path.basename(path))[0] == "__init__":
        levels += 1
    root = path
    for _ in range(levels):
        root = os.path.dirname(root)
    return root


def find_uwsgi(binary: str | None = None) -> str:
    """The uWSGI binary: ``binary``, else the one beside ``sys.executable``, else on PATH."""
    if binary is not None:
        found = shutil.which(binary)
        if found is None:
            raise RuntimeError(f"uWSGI binary {binary!r} not found")
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "uwsgi")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("uwsgi")
    if found is None:
        raise RuntimeError(f"uWSGI is not installed: {INSTALL_HINT}")
    return found


def engines(binary: str) -> set[str]:
    """The plugins (loop engines among them) built into the uWSGI ``binary``."""
    result = subprocess.run(
        [binary, "--plugins-list"], capture_output=True, text=True, timeout=30, check=False
    )
    output = result.stdout + result.stderr
    section = output.split("loaded generic plugins", 1)[-1].split("loaded request plugins", 1)[0]
    return {line.strip() for line in section.splitlines() if line.strip().isidentifier()}


def _env_port(value: str | None) -> int:
    """The port ``FLASK_RUN_PORT`` names, 5000 when unset or empty."""
    if value is None or not value.strip():
        return 5000
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise RuntimeError(f"FLASK_RUN_PORT={value!r} is not a TCP port number")
    return port


def build_command(
    app: Flask,
    defaults: Mapping[str, Any] | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    debug: bool | None = None,
    load_dotenv: bool = True,
    uwsgi_binary: str | None = None,
    use_reloader: bool | None = None,
    threaded: bool | None = None,
    **options: Any,
) -> tuple[list[str], dict[str, str]]:
    """The argument list and environment that :func:`run_uwsgi` executes."""
    refused = sorted(set(options) & set(_REFUSED))
    if refused:
        raise TypeError(
            "; ".join(f"app.run({name}=...) is not supported under uWSGI: {_REFUSED[name]}"
                      for name in refused)
        )  # fmt: skip
    if load_dotenv:
        from flask.cli import load_dotenv as load

        load()
    env = dict(os.environ)
    if debug is None:
        debug = app.debug or env.get(DEBUG_ENV) == "1"
    env["FLASK_DEBUG"] = "1" if debug else "0"
    env[DEBUG_ENV] = "1" if debug else "0"
    if debug and int(options.get("processes", options.get("workers", 1)) or 1) > 1:
        raise RuntimeError(
            "debug=True runs one worker process: the interactive debugger keeps its "
            "tracebacks and consoles in the process that showed them"
        )
    if use_reloader is None:
        use_reloader = debug
    # The router relays WebSocket data in chunks of this size; at its default (one page),
    # Nagle's algorithm in the router delays every chunk after the first by a delayed ACK:
    # a 16 KiB echo took ~90 ms, 11 round trips/s (bench/README.md).
    settings: dict[str, Any] = {"http_buffer_size": ROUTER_BUFFER_SIZE}
    for key, value in (defaults or {}).items():
        if key == "threads" and (threaded is False or "processes" in options):
            continue
        settings[key] = value
    if threaded:
        settings["enable_threads"] = True
    if use_reloader:
        settings["py_autoreload"] = 1
    settings.update(options)
    binary = find_uwsgi(uwsgi_binary)
    # Like ``flask run``, FLASK_RUN_HOST and FLASK_RUN_PORT (read after .env is loaded) are the
    # defaults of host and port; explicit arguments win.
    if not host:
        host = env.get("FLASK_RUN_HOST") or "localhost"
    if not port:
        port = _env_port(env.get("FLASK_RUN_PORT"))
    argv = [binary, "--master", "--http", f"{host}:{port}"]
    argv += ["--http-websockets", "--need-app", "--die-on-term"]
    argv += _app_location(app)
    if sys.prefix != sys.base_prefix:
        argv += ["--virtualenv", sys.prefix]
    argv += uwsgi_options(settings)
    return argv, env


def checked_command(
    app: Flask,
    defaults: Mapping[str, Any] | None = None,
    plugins: Sequence[str] = (),
    **kwargs: Any,
) -> tuple[list[str], dict[str, str]]:
    """:func:`build_command`, after checking that the uWSGI binary has the ``plugins``
    (the flavour's engines) unless ``plugin``/``plugins`` options load them."""
    argv, env = build_command(app, defaults, **kwargs)
    if plugins and not {"plugin", "plugins"} & set(kwargs):
        built_in = engines(argv[0])
        missing = [name for name in plugins if name not in built_in]
        if missing:
            raise RuntimeError(
                f"uWSGI at {argv[0]} has no {' or '.join(missing)} engine: {INSTALL_HINT}"
            )
    return argv, env


def serving_line(argv: Sequence[str], defaults: Mapping[str, Any], label: str) -> str:
    """``serving on http://HOST:PORT (LABEL, ENGINE OPTIONS)`` for the command ``argv``:
    the options of ``defaults`` (the flavour's engine) as ``argv`` has them."""
    address = argv[argv.index("--http") + 1]
    engine = []
    for key in defaults:
        flag = "--" + key.replace("_", "-")
        if flag not in argv or key == "enable_threads":
            continue
        value = argv[argv.index(flag) + 1 :][:1]
        engine.append(flag if not value or value[0].startswith("--") else f"{flag} {value[0]}")
    shown = f"{label}, {' '.join(engine)}" if engine else label
    return f"serving on http://{address} ({shown})"


def run_uwsgi(
    app: Flask,
    defaults: Mapping[str, Any] | None = None,
    plugins: Sequence[str] = (),
    label: str = "WebSocket",
    **kwargs: Any,
) -> NoReturn:
    """Replace this process with uWSGI serving ``app``; see :meth:`WebSocket.run`.

    First prints where it serves and with which engine (``label`` names the extension):
    ``serving on http://localhost:5000 (GeventWebSocket, --gevent 100)``.
    """
    argv, env = checked_command(app, defaults, plugins, **kwargs)
    print(serving_line(argv, defaults or {}, label), file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
