"""Autobahn|Testsuite's fuzzingclient, every case of sections 1 to 13, against the examples.

Framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close handling (1-7),
limits and performance (9, 10), permessage-deflate (12, 13). Every case must be OK or
INFORMATIONAL (7.1.6, 7.13.1-2 have no verdict), none NON-STRICT, and its closing never
FAILED. One wstest per flavour, side
by side. wstest is installed by ``scripts/install.sh --test`` (``AUTOBAHN_HOME`` or
``~/.cache/autobahn-testsuite``). README.rst's conformance table comes from this run;
``python -m tests.test_autobahn`` runs it alone and prints the table; ``pytest -m "not autobahn"``
runs everything else (README.rst's test command and CI run it too).

The examples are served with ``--http-socket``: this measures the protocol, which is this
package's, and keeps uWSGI's ``--http`` router out of a run that moves about 10 GB. The
router relays large messages in ``--http-buffer-size`` chunks with Nagle's delay between
them (README.rst), so sections 12-13 would take hours through it; and under a heavy load
on this 2-core machine it once left a connection relaying nothing in either direction
after the 101 (the worker's pings never reached the client), which would hang the run.
Every other test runs in both modes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .helpers import FLAVOUR_ARGS, UwsgiServer

#: Every case of sections 1 to 13 (the suite has no section 8 or 11).
CASES = ["*"]
CASE_COUNT = 517
PASSING = {"OK", "INFORMATIONAL"}
EXAMPLES = {
    "plain": "examples/echo.py",
    "gevent": "examples/echo_gevent.py",
    "asyncio": "examples/echo_asyncio.py",
}
#: Section 9 sends messages of up to 16 MiB; the examples read their config from the
#: environment (``app.config.from_prefixed_env()``).
ENV = {"FLASK_WEBSOCKET_MAX_MESSAGE_SIZE": str(1 << 24)}
#: Seconds one flavour's run may take (about 15 minutes here, the three side by side).
TIMEOUT = 2700


def wstest() -> str:
    home = os.environ.get("AUTOBAHN_HOME", str(Path.home() / ".cache" / "autobahn-testsuite"))
    path = Path(home) / "wstest"
    if not os.access(path, os.X_OK):
        pytest.fail(f"wstest not found at {path}: run scripts/install.sh --test")
    return str(path)


def run_suite(workdir: Path) -> dict[str, dict[str, Any]]:
    """Serve the three examples, run one wstest per flavour, return each flavour's results."""
    binary = wstest()
    servers = {
        flavour: UwsgiServer(
            ["--wsgi-file", script, "--callable", "app", *FLAVOUR_ARGS[flavour]],
            mode="http-socket",
            env=ENV,
        )
        for flavour, script in EXAMPLES.items()
    }
    runs: dict[str, subprocess.Popen[str]] = {}
    try:
        for server in servers.values():
            server.wait_ready()
        for flavour, server in servers.items():
            spec = {
                "outdir": str(workdir / flavour),
                "servers": [{"agent": flavour, "url": f"{server.url}/echo"}],
                "cases": CASES,
                "exclude-cases": [],
                "exclude-agent-cases": {},
            }
            (workdir / f"{flavour}.json").write_text(json.dumps(spec))
            runs[flavour] = subprocess.Popen(
                [binary, "-m", "fuzzingclient", "-s", f"{flavour}.json"],
                cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        results = {}
        for flavour, run in runs.items():
            try:
                output, _ = run.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                run.kill()
                output, _ = run.communicate()
                pytest.fail(f"{flavour}: wstest still running after {TIMEOUT} s: {output[-3000:]}")
            assert run.returncode == 0, f"{flavour}: {output[-3000:]}"
            index = json.loads((workdir / flavour / "index.json").read_text())
            results[flavour] = index[flavour]
        for flavour, server in servers.items():
            assert "Segmentation fault" not in server.output(), flavour
            assert server.process.poll() is None, flavour  # the master and worker live on
        return results
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
        for server in servers.values():
            server.close()


def failures(cases: dict[str, Any]) -> list[str]:
    return sorted(
        f"{case} {result['behavior']}/{result['behaviorClose']}"
        for case, result in cases.items()
        if result["behavior"] not in PASSING or result["behaviorClose"] == "FAILED"
    )


@pytest.mark.autobahn
def test_autobahn_sections_1_to_13(tmp_path: Path) -> None:
    results = run_suite(tmp_path)
    assert {flavour: len(cases) for flavour, cases in results.items()} == {
        flavour: CASE_COUNT for flavour in EXAMPLES
    }
    assert {flavour: failures(cases) for flavour, cases in results.items()} == {
        flavour: [] for flavour in EXAMPLES
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """README.rst's conformance table: per flavour, cases passed out of run, and verdicts."""
    header = ("flavour", "passed", "verdicts")
    rows = [header]
    for flavour, cases in results.items():
        counts = Counter(result["behavior"] for result in cases.values())
        passed = len(cases) - len(failures(cases))
        verdicts = ", ".join(f"{name} {counts[name]}" for name in sorted(counts))
        rows.append((flavour, f"{passed}/{len(cases)}", verdicts))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    rule = "  ".join("=" * width for width in widths)
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        found = run_suite(Path(workdir))
    print(table(found))
    sys.exit(1 if any(failures(cases) for cases in found.values()) else 0)
