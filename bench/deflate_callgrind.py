"""Instructions per compressed round trip, counted by callgrind (the machine is too noisy for time).

    .venv/bin/python bench/deflate_callgrind.py [--servers gevent,asyncio,websockets]
                                               [--sizes 64,16384] [--conns 10]
                                               [--counts 20,60] [--root DIR]

Each server of bench/echo.py (``gevent``, ``asyncio``: this package's examples, under
uWSGI without ``--master``, so that the process valgrind runs is the worker; or a peer,
``websockets``) runs under ``valgrind --tool=callgrind``. For every size,
bench/deflate_client.py makes ``--conns`` x the first count of round trips of
compressed JSON-like text, then the same with the second count, the counters zeroed
before and dumped after each (``callgrind_control``); the figure is the difference over
the extra round trips, so that the handshakes and closes cancel out. ``--root`` is the
checkout whose package the uWSGI servers import (default: this one), to compare commits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from echo import BENCH, HOST, ROOT, SERVERS, Server, free_port, http_probe, stop

STARTUP_TIMEOUT = 300.0


@contextlib.contextmanager
def under_callgrind(server: Server, root: Path, out: Path) -> Iterator[tuple[int, int]]:
    """Run ``server`` under callgrind, dumping to ``out``; yield (its pid, its port)."""
    port = free_port()
    if server.command:
        values = {"python": sys.executable, "host": HOST, "port": str(port)}
        cmd = [arg.format(**values) for arg in server.command]
    else:
        app_args = [arg.replace(str(ROOT), str(root)) for arg in server.app_args]
        cmd = [
            str(Path(sys.prefix) / "bin" / "uwsgi"), *server.engine,
            "--virtualenv", sys.prefix, "--pythonpath", str(root), "--chdir", str(root),
            "--need-app", "--disable-logging", "--http-socket", f"{HOST}:{port}", *app_args,
        ]  # fmt: skip
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out / 'callgrind.out'}"]
    with (out / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            valgrind + cmd, stdout=log, stderr=subprocess.STDOUT, cwd=BENCH,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not http_probe(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not come up; see {out / 'server.log'}")
            time.sleep(0.5)
        yield proc.pid, port
    finally:
        stop(proc)


def instructions(pid: int, out: Path) -> int:
    """Dump the counters of ``pid`` and return the instructions since they were zeroed."""
    before = set(out.glob("callgrind.out.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while not (new := set(out.glob("callgrind.out.*")) - before):
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.2)
    [dump] = new
    for _ in range(100):
        match = re.search(r"^(?:totals|summary): (\d+)", dump.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"no totals in {dump}")


def client(url: str, conns: int, size: int, count: int) -> None:
    """Make exactly ``count`` compressed round trips on each of ``conns`` connections."""
    cmd = [sys.executable, str(BENCH / "deflate_client.py"), url, "--conns", str(conns)]
    cmd += ["--size", str(size), "--count", str(count)]
    done = subprocess.run(cmd, capture_output=True, timeout=1800, check=False)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if result["errors"] or result.get("round_trips") != conns * count:
        raise RuntimeError(f"client failed: {result}")


def main() -> None:
    """Count for every selected server and size; print a line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="gevent,asyncio,websockets")
    parser.add_argument("--sizes", default="64,16384")
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--counts", default="20,60")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    low, high = (int(c) for c in args.counts.split(","))
    for server in (s for s in SERVERS if s.name in args.servers.split(",")):
        with (
            tempfile.TemporaryDirectory(prefix="deflate-callgrind-") as tmp,
            under_callgrind(server, args.root.resolve(), Path(tmp)) as (pid, port),
        ):
            url = f"ws://{HOST}:{port}{server.path}"
            for size in (int(s) for s in args.sizes.split(",")):
                client(url, args.conns, size, low)  # warm-up: imports, caches, allocations
                figures = []
                for count in (low, high):
                    subprocess.run(
                        ["callgrind_control", "-z", str(pid)], check=True, capture_output=True
                    )
                    client(url, args.conns, size, count)
                    figures.append(instructions(pid, Path(tmp)))
                per = (figures[1] - figures[0]) / (args.conns * (high - low))
                print(f"{server.name:<10} {size:>6} B: {per:,.0f} instructions per round trip")


if __name__ == "__main__":
    main()
