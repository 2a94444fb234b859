"""``app.run()``: the uWSGI command line it builds, and real processes started through it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import connect

from flask_uwsgi_websocket import WebSocket
from flask_uwsgi_websocket.gevent import GeventWebSocket
from flask_uwsgi_websocket.runner import (
    build_command,
    engines,
    find_uwsgi,
    serving_line,
    uwsgi_options,
)

from .helpers import ROOT, UWSGI, ServerProcess, child_env, free_port

PYTHON = sys.executable

app = Flask(__name__)
other_app = Flask(__name__)

#: The 0.6.1 README's echo example, verbatim.
README_ECHO = """\
from flask import Flask
from flask_uwsgi_websocket import GeventWebSocket

app = Flask(__name__)
websocket = GeventWebSocket(app)

@websocket.route('/echo')
def echo(ws):
    while True:
        msg = ws.receive()
        ws.send(msg)

if __name__ == '__main__':
    app.run(gevent=100)
"""


# -- uwsgi_options -----------------------------------------------------------------------------


def test_uwsgi_options() -> None:
    assert uwsgi_options(
        {
            "snake_case_name": "value",
            "master": True,
            "off": False,
            "nothing": None,
            "static_map": ["/a=x", "/b=y"],
            "pair": ("1", 2),
            "threads": 8,
            "mixed": [True, None, False, "v"],
        }
    ) == [
        "--snake-case-name", "value",
        "--master",
        "--static-map", "/a=x", "--static-map", "/b=y",
        "--pair", "1", "--pair", "2",
        "--threads", "8",
        "--mixed", "--mixed", "v",
    ]  # fmt: skip


def test_uwsgi_options_empty() -> None:
    assert uwsgi_options({}) == []
    assert uwsgi_options({"a": False, "b": None, "c": []}) == []


# -- build_command -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_run_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tests see neither FLASK_RUN_HOST/PORT nor a FLASK_DEBUG of the caller."""
    for name in ("FLASK_RUN_HOST", "FLASK_RUN_PORT", "FLASK_DEBUG"):
        monkeypatch.delenv(name, raising=False)


def command(
    defaults: dict[str, Any] | None = None, flask_app: Flask = app, **kwargs: Any
) -> tuple[list[str], dict[str, str]]:
    kwargs.setdefault("load_dotenv", False)
    return build_command(flask_app, defaults, **kwargs)


def option(argv: Sequence[str], flag: str) -> list[str]:
    """Every value given to ``flag`` in ``argv``."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def test_command_basics() -> None:
    argv, env = command()
    assert argv[0] == UWSGI
    assert "--master" in argv and "--http-websockets" in argv
    assert option(argv, "--http") == ["localhost:5000"]
    assert option(argv, "--module") == ["tests.test_run:app"]
    assert option(argv, "--pythonpath") == [str(ROOT)]
    in_venv = sys.prefix != sys.base_prefix
    assert option(argv, "--virtualenv") == ([sys.prefix] if in_venv else [])
    assert env["FLASK_DEBUG"] == "0"
    assert "--py-autoreload" not in argv


def test_host_and_port() -> None:
    argv, _ = command(host="127.0.0.1", port=8123)
    assert option(argv, "--http") == ["127.0.0.1:8123"]


def test_flask_run_host_and_port_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_RUN_HOST", "127.0.0.2")
    monkeypatch.setenv("FLASK_RUN_PORT", "8765")
    assert option(command()[0], "--http") == ["127.0.0.2:8765"]
    assert option(command(port=9000)[0], "--http") == ["127.0.0.2:9000"]
    assert option(command(host="127.0.0.3")[0], "--http") == ["127.0.0.3:8765"]
    monkeypatch.setenv("FLASK_RUN_PORT", "")
    assert option(command()[0], "--http") == ["127.0.0.2:5000"]


@pytest.mark.parametrize("value", ["http", "0", "70000", "-1"])
def test_bad_flask_run_port(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLASK_RUN_PORT", value)
    with pytest.raises(RuntimeError, match="FLASK_RUN_PORT"):
        command()


def test_plain_flavour_defaults() -> None:
    argv, _ = command(WebSocket.run_defaults)
    assert "--enable-threads" in argv
    assert option(argv, "--threads") == ["8"]
    assert "--gevent" not in argv


def test_gevent_flavour_defaults() -> None:
    argv, _ = command(GeventWebSocket.run_defaults)
    assert option(argv, "--gevent") == ["100"]
    assert "--threads" not in argv and "--enable-threads" not in argv


def test_explicit_options_override_defaults() -> None:
    argv, _ = command(WebSocket.run_defaults, threads=2, buffer_size=32768)
    assert option(argv, "--threads") == ["2"]
    assert option(argv, "--buffer-size") == ["32768"]
    argv, _ = command(GeventWebSocket.run_defaults, gevent=10)
    assert option(argv, "--gevent") == ["10"]


def test_an_explicit_false_removes_a_default() -> None:
    argv, _ = command(WebSocket.run_defaults, enable_threads=False)
    assert "--enable-threads" not in argv


def test_threaded_false_drops_default_threads() -> None:
    argv, _ = command(WebSocket.run_defaults, threaded=False)
    assert "--threads" not in argv


def test_threaded_true_enables_threads() -> None:
    argv, _ = command(GeventWebSocket.run_defaults, threaded=True)
    assert "--enable-threads" in argv
    assert option(argv, "--gevent") == ["100"]


def test_processes_drop_default_threads() -> None:
    argv, _ = command(WebSocket.run_defaults, processes=4)
    assert option(argv, "--processes") == ["4"]
    assert "--threads" not in argv
    argv, _ = command(WebSocket.run_defaults, processes=4, threads=2)
    assert option(argv, "--threads") == ["2"]


def test_debug() -> None:
    argv, env = command(debug=True)
    assert env["FLASK_DEBUG"] == "1"
    assert option(argv, "--py-autoreload") == ["1"]


def test_debug_without_reloader() -> None:
    argv, env = command(debug=True, use_reloader=False)
    assert env["FLASK_DEBUG"] == "1"
    assert "--py-autoreload" not in argv


def test_reloader_without_debug() -> None:
    argv, env = command(use_reloader=True)
    assert env["FLASK_DEBUG"] == "0"
    assert option(argv, "--py-autoreload") == ["1"]


def test_debug_serves_the_debugger_in_one_worker() -> None:
    assert command(debug=True)[1]["FLASK_UWSGI_DEBUG"] == "1"
    assert command(debug=False)[1]["FLASK_UWSGI_DEBUG"] == "0"
    assert command(debug=True, processes=1)[1]["FLASK_UWSGI_DEBUG"] == "1"
    with pytest.raises(RuntimeError, match="debug=True runs one worker process"):
        command(debug=True, processes=2)


def test_debug_defaults_to_app_debug() -> None:
    debug_app = Flask(__name__)
    debug_app.debug = True
    globals()["debug_app"] = debug_app
    try:
        argv, env = command(flask_app=debug_app)
    finally:
        del globals()["debug_app"]
    assert env["FLASK_DEBUG"] == "1"
    assert option(argv, "--module") == ["tests.test_run:debug_app"]


@pytest.mark.parametrize(
    ("name", "advice"),
    [
        ("ssl_context", "https="),
        ("use_debugger", "debug=True serves the interactive debugger"),
        ("extra_files", "touch_reload"),
        ("reloader_type", "py_autoreload"),
        ("static_files", "static_map"),
    ],
)
def test_werkzeug_only_arguments_are_refused(name: str, advice: str) -> None:
    with pytest.raises(TypeError, match=rf"app.run\({name}=\.\.\.\) is not supported") as info:
        refused: dict[str, Any] = {name: "x"}
        command(**refused)
    assert advice in str(info.value)


def test_the_serving_line() -> None:
    argv = [UWSGI, "--master", "--http", "0.0.0.0:8000", "--gevent", "100", "--module", "m:a"]
    assert serving_line(argv, {"gevent": 100}, "GeventWebSocket") == (
        "serving on http://0.0.0.0:8000 (GeventWebSocket, --gevent 100)"
    )
    argv = [UWSGI, "--http", "localhost:5000", "--asyncio", "10", "--greenlet"]
    assert serving_line(argv, {"asyncio": 100, "greenlet": True}, "AsyncioWebSocket") == (
        "serving on http://localhost:5000 (AsyncioWebSocket, --asyncio 10 --greenlet)"
    )
    argv = [UWSGI, "--http", "localhost:5000", "--enable-threads", "--processes", "2"]
    assert serving_line(argv, {"enable_threads": True, "threads": 8}, "WebSocket") == (
        "serving on http://localhost:5000 (WebSocket)"
    )


def test_explicit_binary() -> None:
    assert command(uwsgi_binary=UWSGI)[0][0] == UWSGI


def test_explicit_binary_not_found() -> None:
    with pytest.raises(RuntimeError, match=r"uWSGI binary '/nonexistent/uwsgi' not found"):
        command(uwsgi_binary="/nonexistent/uwsgi")


def test_no_uwsgi_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(RuntimeError, match="uWSGI is not installed: install it"):
        find_uwsgi()
    with pytest.raises(RuntimeError, match="uWSGI is not installed"):
        command()


def test_uwsgi_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    on_path = tmp_path / "bin" / "uwsgi"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert find_uwsgi() == str(on_path)


def test_app_in_another_variable() -> None:
    assert option(command(flask_app=other_app)[0], "--module") == ["tests.test_run:other_app"]


def test_app_not_in_a_module_variable() -> None:
    with pytest.raises(RuntimeError, match=r"can't find the app in module 'tests\.test_run'"):
        command(flask_app=Flask(__name__))


def script_command(
    tmp_path: Path, args: Sequence[str], cwd: Path, files: dict[str, str]
) -> list[str]:
    """Write ``files`` under ``tmp_path``, run ``python ARGS``, return the argv it printed."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    result = subprocess.run(
        [PYTHON, *args], cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    argv: list[str] = json.loads(result.stdout)
    return argv


PRINT_COMMAND = """\
import json
from flask_uwsgi_websocket.runner import build_command
print(json.dumps(build_command(APP, load_dotenv=False)[0]))
"""

APP_MODULE = """\
from flask import Flask
from flask_uwsgi_websocket import WebSocket

application = Flask(__name__)
WebSocket(application)
"""


def test_main_script_is_a_wsgi_file(tmp_path: Path) -> None:
    argv = script_command(
        tmp_path,
        [str(tmp_path / "site" / "serve.py")],
        cwd=tmp_path,
        files={"site/serve.py": APP_MODULE + PRINT_COMMAND.replace("APP", "application")},
    )
    assert option(argv, "--wsgi-file") == [str(tmp_path / "site" / "serve.py")]
    assert option(argv, "--callable") == ["application"]
    assert option(argv, "--pythonpath") == [str(tmp_path / "site")]
    assert "--module" not in argv


def test_imported_module_is_a_module_from_its_own_root(tmp_path: Path) -> None:
    """``python /elsewhere/run.py`` importing the app: loadable whatever the cwd."""
    (tmp_path / "cwd").mkdir()
    argv = script_command(
        tmp_path,
        [str(tmp_path / "project" / "run.py")],
        cwd=tmp_path / "cwd",
        files={
            "project/pkg/__init__.py": "",
            "project/pkg/web.py": APP_MODULE,
            "project/run.py": "from pkg.web import application\n"
            + PRINT_COMMAND.replace("APP", "application"),
        },
    )
    assert option(argv, "--module") == ["pkg.web:application"]
    assert option(argv, "--pythonpath") == [str(tmp_path / "project")]
    assert "--wsgi-file" not in argv


def test_package_init_module(tmp_path: Path) -> None:
    argv = script_command(
        tmp_path,
        [str(tmp_path / "run.py")],
        cwd=tmp_path,
        files={
            "mypkg/__init__.py": APP_MODULE,
            "run.py": "from mypkg import application\n"
            + PRINT_COMMAND.replace("APP", "application"),
        },
    )
    assert option(argv, "--module") == ["mypkg:application"]
    assert option(argv, "--pythonpath") == [str(tmp_path)]


def test_python_dash_m_is_a_module(tmp_path: Path) -> None:
    argv = script_command(
        tmp_path,
        ["-m", "pkg.serve"],
        cwd=tmp_path,
        files={
            "pkg/__init__.py": "",
            "pkg/serve.py": APP_MODULE + PRINT_COMMAND.replace("APP", "application"),
        },
    )
    assert option(argv, "--module") == ["pkg.serve:application"]
    assert option(argv, "--pythonpath") == [str(tmp_path)]


# -- real processes ----------------------------------------------------------------------------


@contextlib.contextmanager
def started(
    args: Sequence[str], port: int, cwd: Path, env: dict[str, str]
) -> Iterator[ServerProcess]:
    process = ServerProcess(args, port, cwd, env)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


def check_echo(port: int) -> None:
    with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
        ws.send("héllo text")
        assert ws.recv(timeout=10) == "héllo text"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=10) == b"\x00\x01binary\xff"
        ws.send("")
        assert ws.recv(timeout=10) == ""


def check_became_uwsgi(process: ServerProcess) -> None:
    """The ``python`` process exec'd uWSGI: its PID is the uWSGI master's."""
    assert os.path.realpath(f"/proc/{process.pid}/exe") == os.path.realpath(UWSGI)
    assert f"spawned uWSGI master process (pid: {process.pid})" in process.output()


def wait_logged(process: ServerProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.output():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{process.output()}"
        time.sleep(0.05)


@pytest.mark.parametrize("example", ["echo_gevent.py", "echo.py"])
def test_examples_run_with_python(example: str) -> None:
    port = free_port()
    env = child_env(FLASK_RUN_HOST="127.0.0.1", FLASK_RUN_PORT=str(port))
    process = ServerProcess([PYTHON, str(ROOT / "examples" / example)], port, ROOT, env)
    try:
        process.wait_ready()
        check_became_uwsgi(process)
        assert f"uWSGI http bound on 127.0.0.1:{port}" in process.output()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_text().split("\0")
        engine = "--gevent" if example == "echo_gevent.py" else "--threads"
        assert engine in cmdline and "--wsgi-file" in cmdline
        served = (
            "GeventWebSocket, --gevent 100" if engine == "--gevent" else "WebSocket, --threads 8"
        )
        assert f"serving on http://127.0.0.1:{port} ({served})\n" in process.output()
        check_echo(port)
        status = process.stop()
        # uWSGI's master exits 0 on SIGINT ("goodbye to uWSGI."), and so does the python
        # process, which is that master.
        assert status == 0, process.output()
        assert "goodbye to uWSGI." in process.output()
        assert "Traceback" not in process.output()
    finally:
        process.close()


def test_python_process_exit_status_is_uwsgis(tmp_path: Path) -> None:
    """``app.run(some_bogus_option=1)``: uWSGI refuses the option; python exits with its status."""
    script = tmp_path / "bogus.py"
    script.write_text(
        textwrap.dedent(
            """\
            import json, sys
            from flask import Flask
            from flask_uwsgi_websocket import GeventWebSocket
            from flask_uwsgi_websocket.runner import build_command

            app = Flask(__name__)
            websocket = GeventWebSocket(app)

            if __name__ == "__main__":
                if sys.argv[1:] == ["argv"]:
                    print(json.dumps(build_command(
                        app, GeventWebSocket.run_defaults, some_bogus_option=1)))
                else:
                    app.run(some_bogus_option=1)
            """
        )
    )
    env = child_env(FLASK_RUN_HOST="127.0.0.1", FLASK_RUN_PORT=str(free_port()))
    through_python = subprocess.run(
        [PYTHON, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    printed = subprocess.run(
        [PYTHON, str(script), "argv"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    argv, uwsgi_env = json.loads(printed.stdout)
    assert "--some-bogus-option" in argv
    direct = subprocess.run(argv, env=uwsgi_env, capture_output=True, text=True, timeout=60)
    assert direct.returncode != 0
    assert through_python.returncode == direct.returncode, through_python.stderr
    output = through_python.stdout + through_python.stderr
    assert "unrecognized option '--some-bogus-option'" in output
    assert "Traceback" not in output


def test_imported_app_served_from_another_directory(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "myapp.py").write_text(README_ECHO.replace("app.run(gevent=100)", "pass"))
    (project / "run.py").write_text("from myapp import app\n\napp.run(gevent=10)\n")
    port = free_port()
    env = child_env(FLASK_RUN_HOST="127.0.0.1", FLASK_RUN_PORT=str(port))
    with started([PYTHON, str(project / "run.py")], port, elsewhere, env) as process:
        check_became_uwsgi(process)
        check_echo(port)
        assert process.stop() == 0


@pytest.fixture
def readme_dir(tmp_path: Path) -> Path:
    (tmp_path / "echo.py").write_text(README_ECHO)
    return tmp_path


def check_readme_echo(process: ServerProcess) -> None:
    check_echo(process.port)
    # The client has closed: the handler's receive() raised ConnectionClosed, which must end
    # it quietly. A second connection shows the worker serves on; then read the log.
    with connect(f"ws://127.0.0.1:{process.port}/echo", open_timeout=10) as ws:
        ws.send("second connection")
        assert ws.recv(timeout=10) == "second connection"
    time.sleep(0.5)
    assert process.stop() == 0
    wait_logged(process, "goodbye to uWSGI.")
    assert "Traceback" not in process.output()
    assert "ConnectionClosed" not in process.output()


def test_readme_echo_with_python(readme_dir: Path) -> None:
    port = free_port()
    env = child_env(FLASK_RUN_HOST="127.0.0.1", FLASK_RUN_PORT=str(port))
    with started([PYTHON, "echo.py"], port, readme_dir, env) as process:
        check_became_uwsgi(process)
        check_readme_echo(process)


def test_readme_echo_with_uwsgi_command(readme_dir: Path) -> None:
    """The README's deploy command verbatim; neither --virtualenv nor VIRTUAL_ENV needed."""
    port = free_port()
    args = [
        UWSGI, "--master", "--http", f":{port}", "--http-websockets", "--gevent", "100",
        "--wsgi", "echo:app",
    ]  # fmt: skip
    with started(args, port, readme_dir, child_env()) as process:
        assert f"uWSGI http bound on :{port}" in process.output()
        check_readme_echo(process)


# -- engines -----------------------------------------------------------------------------------


def test_engines_of_our_uwsgi() -> None:
    found = engines(UWSGI)
    assert {"gevent", "asyncio", "greenlet"} <= found
    assert "python" not in found  # a request plugin, not a generic one
    assert "0: python" not in found


FAKE_UWSGI = """\
#!/bin/sh
if [ "$1" = "--plugins-list" ]; then
  printf '\\n*** uWSGI loaded generic plugins ***\\n{plugins}\\ncorerouter\\nhttp\\n'
  printf '\\n*** uWSGI loaded request plugins ***\\n0: python\\n--- end of plugins list ---\\n'
  exit 1
fi
echo "fake uWSGI was executed" >&2
exit 3
"""


@pytest.fixture
def fake_uwsgi(tmp_path: Path) -> Path:
    """An executable that prints a plugins list without gevent (uWSGI's output format)."""
    return write_fake_uwsgi(tmp_path / "uwsgi-without-gevent", ["asyncio", "greenlet"])


def write_fake_uwsgi(path: Path, plugins: list[str]) -> Path:
    path.write_text(FAKE_UWSGI.replace("{plugins}", "\\n".join(plugins)))
    path.chmod(0o755)
    return path


def test_engines_parses_plugins_list(fake_uwsgi: Path) -> None:
    assert engines(str(fake_uwsgi)) == {"asyncio", "greenlet", "corerouter", "http"}


def run_script(
    tmp_path: Path, call: str, extension: str = "GeventWebSocket"
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "serve.py"
    script.write_text(
        "from flask import Flask\n"
        f"from flask_uwsgi_websocket import {extension}\n\n"
        "app = Flask(__name__)\n"
        f"{extension}(app)\n\n"
        f"app.run({call})\n"
    )
    env = child_env(FLASK_RUN_HOST="127.0.0.1", FLASK_RUN_PORT=str(free_port()))
    return subprocess.run(
        [PYTHON, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def test_run_refuses_a_uwsgi_without_the_engine(tmp_path: Path, fake_uwsgi: Path) -> None:
    result = run_script(tmp_path, f"uwsgi_binary={str(fake_uwsgi)!r}")
    assert result.returncode == 1
    assert f"RuntimeError: uWSGI at {fake_uwsgi} has no gevent engine" in result.stderr
    assert "UWSGI_PROFILE=asyncio UWSGI_EMBED_PLUGINS=gevent" in result.stderr
    assert "fake uWSGI was executed" not in result.stderr


def test_run_refuses_a_uwsgi_without_asyncio_and_greenlet(tmp_path: Path) -> None:
    fake = write_fake_uwsgi(tmp_path / "uwsgi-gevent-only", ["gevent"])
    result = run_script(tmp_path, f"uwsgi_binary={str(fake)!r}", "AsyncioWebSocket")
    assert result.returncode == 1
    assert f"RuntimeError: uWSGI at {fake} has no asyncio or greenlet engine" in result.stderr
    assert "fake uWSGI was executed" not in result.stderr


def test_run_with_a_missing_binary(tmp_path: Path) -> None:
    result = run_script(tmp_path, "uwsgi_binary='no-such-uwsgi-binary'")
    assert result.returncode == 1
    assert "RuntimeError: uWSGI binary 'no-such-uwsgi-binary' not found" in result.stderr


def test_router_buffer_is_raised_unless_given() -> None:
    from flask_uwsgi_websocket.runner import ROUTER_BUFFER_SIZE

    assert option(command()[0], "--http-buffer-size") == [str(ROUTER_BUFFER_SIZE)]
    assert option(command(http_buffer_size=8192)[0], "--http-buffer-size") == ["8192"]


DEBUG_APP = """\
from flask import Flask

from flask_uwsgi_websocket import GeventWebSocket

app = Flask(__name__)
websocket = GeventWebSocket(app)


@app.route("/fails")
def fails():
    raise RuntimeError("an HTTP view failed")


@websocket.route("/raise")
def raises(ws):
    raise RuntimeError("a handler failed")


if __name__ == "__main__":
    app.run(debug=True, gevent=10)
"""


def test_debug_true_serves_the_interactive_debugger(tmp_path: Path) -> None:
    (tmp_path / "debugged.py").write_text(DEBUG_APP)
    port = free_port()
    env = child_env(FLASK_RUN_HOST="127.0.0.1", FLASK_RUN_PORT=str(port))
    with started([PYTHON, "debugged.py"], port, tmp_path, env) as process:
        wait_logged(process, "Debugger is active! Debugger PIN: ")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/fails")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        page = info.value.read().decode()
        assert info.value.code == 500
        assert "Werkzeug Debugger" in page and "RuntimeError: an HTTP view failed" in page
        assert "EVALEX = true" in page and "EVALEX_TRUSTED = false" in page  # the PIN asked
        with pytest.raises(ClientClosed) as closed, connect(f"ws://127.0.0.1:{port}/raise") as ws:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        wait_logged(process, "RuntimeError: a handler failed")
        check_became_uwsgi(process)


def test_flask_uwsgi_debug_refuses_several_workers(tmp_path: Path) -> None:
    (tmp_path / "debugged.py").write_text(DEBUG_APP)
    port = free_port()
    args = [
        UWSGI, "--master", "--http-socket", f"127.0.0.1:{port}", "--gevent", "10",
        "--processes", "2", "--need-app", "--wsgi", "debugged:app",
    ]  # fmt: skip
    process = ServerProcess(args, port, tmp_path, child_env(FLASK_UWSGI_DEBUG="1"))
    try:
        with pytest.raises(RuntimeError, match="exited"):
            process.wait_ready(timeout=30)
        assert "FLASK_UWSGI_DEBUG=1 needs one uWSGI worker process" in process.output()
    finally:
        process.close()


def test_the_install_hint_builds_every_engine_over_a_stock_uwsgi(tmp_path: Path) -> None:
    """The hint that errors print, followed literally in a fresh venv that has the package
    and pip's stock uWSGI (no asyncio): afterwards its uWSGI has every engine."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q"]
    # A copy of the project: pip builds in the source tree, which would keep a build/ folder.
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "tests", "bench", "examples",
    ))  # fmt: skip
    subprocess.run([*pip, str(project), "uwsgi"], check=True, capture_output=True, timeout=600)
    assert "asyncio" not in engines(str(venv / "bin" / "uwsgi"))
    printed = "from flask_uwsgi_websocket.runner import INSTALL_HINT; print(INSTALL_HINT)"
    hint = subprocess.run(
        [python, "-c", printed], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    command = hint.split("needs: ", 1)[1].rsplit(" (README.rst", 1)[0]
    assert f"{python} -m pip install" in command and "--force-reinstall" in command
    built = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout + built.stderr
    assert {"gevent", "asyncio", "greenlet"} <= engines(str(venv / "bin" / "uwsgi"))
