"""Autobahn|Testsuite's fuzzingclient against the examples, one server per flavour.

Cases 1-7 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close) and 10
(limits). Every case must be OK, NON-STRICT or INFORMATIONAL, its closing never FAILED.
wstest is installed by ``scripts/install.sh --test`` (``AUTOBAHN_HOME`` or
``~/.cache/autobahn-testsuite``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .uwsgi_server import FLAVOUR_ARGS, UwsgiServer

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
EXAMPLES = {
    "plain": "examples/echo.py",
    "gevent": "examples/echo_gevent.py",
    "asyncio": "examples/echo_asyncio.py",
}


def wstest() -> str:
    home = os.environ.get("AUTOBAHN_HOME", str(Path.home() / ".cache" / "autobahn-testsuite"))
    path = Path(home) / "wstest"
    if not os.access(path, os.X_OK):
        pytest.fail(f"wstest not found at {path}: run scripts/install.sh --test")
    return str(path)


def test_autobahn_cases_1_to_7_and_10(tmp_path: Path) -> None:
    binary = wstest()
    servers = {
        flavour: UwsgiServer(
            ["--wsgi-file", script, "--callable", "app", *FLAVOUR_ARGS[flavour]]
        )
        for flavour, script in EXAMPLES.items()
    }
    try:
        for server in servers.values():
            server.wait_ready()
        spec = {
            "outdir": str(tmp_path / "reports"),
            "servers": [
                {"agent": flavour, "url": f"{server.url}/echo"}
                for flavour, server in servers.items()
            ],
            "cases": CASES,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        run = subprocess.run(
            [binary, "-m", "fuzzingclient", "-s", "spec.json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        index = json.loads((tmp_path / "reports" / "index.json").read_text())
        failures = {}
        for flavour in servers:
            cases = index[flavour]
            assert len(cases) == 247, f"{flavour}: {len(cases)} cases ran"
            failures[flavour] = sorted(
                f"{case} {result['behavior']}/{result['behaviorClose']}"
                for case, result in cases.items()
                if result["behavior"] not in PASSING or result["behaviorClose"] == "FAILED"
            )
        assert failures == {flavour: [] for flavour in servers}
        for server in servers.values():
            assert "Segmentation fault" not in server.output()
            assert server.process.poll() is None  # the master and its worker are alive
    finally:
        for server in servers.values():
            server.close()
