"""Round-trip latency of one connection: 64-byte binary echoes, one at a time.

    .venv/bin/python bench/latency.py ws://127.0.0.1:5000/echo [--count 3000]

Throughput with one connection is too noisy on a shared machine to compare servers (the
same server varied 2x between runs); latency percentiles are steadier. Prints p10, p50
and p90 in microseconds.
"""

from __future__ import annotations

import argparse
import time

from websockets.sync.client import connect


def main() -> None:
    """Measure and print the percentiles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    payload = b"x" * args.size
    samples = []
    with connect(args.url, compression=None, max_size=None) as ws:
        for _ in range(200):  # warm-up
            ws.send(payload)
            ws.recv()
        for _ in range(args.count):
            started = time.perf_counter()
            ws.send(payload)
            ws.recv()
            samples.append(time.perf_counter() - started)
    samples.sort()
    p = {q: samples[len(samples) * q // 100] * 1e6 for q in (10, 50, 90)}
    print(f"p10 {p[10]:.0f} us  p50 {p[50]:.0f} us  p90 {p[90]:.0f} us")


if __name__ == "__main__":
    main()
