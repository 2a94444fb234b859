"""bench/charts.py draws each benchmark's JSON (small fixtures in their formats) as a PNG."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

CHARTS = Path(__file__).resolve().parent.parent / "bench" / "charts.py"

RATES = {"native": 100.0, "gevent": 90.0, "plain": 40.0, "picows": 250.0}
ECHO = {
    "meta": {"duration": 3.0},
    "results": [
        {"mode": "http-socket", "size": size, "conns": conns}
        | {server: rate * conns for server, rate in RATES.items()}
        | {f"{server}_runs": [rate * conns] for server, rate in RATES.items()}
        for size in (64, 16384) for conns in (1, 50)
    ],
    "notes": [],
}  # fmt: skip
MEMORY = [
    {"server": server, "setting": "no compression", "connections": 100,
     "kib_per_connection": kib, "echoed": 100, "failures": {}}
    for server, kib in (("native", 27.5), ("gevent", 33.3), ("websockets", 14.5))
] + [
    {"server": "gevent", "setting": "deflate", "connections": 100, "kib_per_connection": 92.9,
     "echoed": 99, "failures": {"open: HTTP 503": 1}},
]  # fmt: skip
FANOUT = {
    "meta": {"rounds": 3},
    "results": [
        {"kind": "fanout", "broker": "local", "method": method, "conns": conns, "size": 64,
         "arrival_percentiles": [q * conns / 50 * scale for q in range(1, 101)]}
        for method, scale in (("broadcast", 1.0), ("raw", 0.8)) for conns in (1000, 5000)
    ] + [{"kind": "traffic", "broker": "redis", "conns": 1000, "size": 64, "workers": []}],
    "notes": [],
    "failures": [],
}  # fmt: skip


def test_every_benchmark_json_becomes_a_900_by_500_png(tmp_path: Path) -> None:
    files = []
    for name, data in (("echo", ECHO), ("memory", MEMORY), ("fanout", FANOUT)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    done = subprocess.run(
        [sys.executable, str(CHARTS), *map(str, files)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for path in files:
        png = path.with_suffix(".png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", png[16:24]) == (900, 500)  # IHDR: width, height
        assert len(png) > 8_000  # bars, lines and labels: empty axes make about 4,400 bytes
