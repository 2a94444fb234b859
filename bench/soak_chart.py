"""Draw a soak's RSS and open file descriptors over time, per flavour and worker, to a PNG.

    .venv/bin/python bench/soak_chart.py soak.json soak.png

``soak.json`` is what ``bench/soak.py --json`` writes (also while it runs: it is rewritten
every minute). One column per flavour; top: each worker's RSS (MiB) at every sample, dots
at the idle moments after each wave, the end of the warm-up as a dashed line, recycles of
worker 2 where its line breaks; bottom: the workers' open fds at the idle moments, and
sockets in CLOSE_WAIT. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FLAVOURS = ("plain", "gevent", "asyncio")
COLOURS = {1: "tab:blue", 2: "tab:orange"}


def series(points: list[dict[str, Any]], worker_id: int, key: str) -> tuple[list[Any], ...]:
    """``(minutes, values, pids)`` of one worker, ``None`` where it was being respawned
    (the line breaks there)."""
    ts, values, pids = [], [], []
    for point in points:
        for worker in point["workers"]:
            if worker["id"] == worker_id and key in worker:
                ts.append(point["t"] / 60)
                values.append(worker[key] / 1024 if key.endswith("_kib") else worker[key])
                pids.append(worker["pid"])
                if not worker[key]:
                    values[-1] = None
    return ts, values, pids


def breaks(ts: list[float], values: list[Any], pids: list[int]) -> tuple[list[Any], list[Any]]:
    """The values with a gap wherever the pid changes (a respawned worker)."""
    out_t: list[Any] = []
    out_v: list[Any] = []
    for n, (t, v, pid) in enumerate(zip(ts, values, pids, strict=True)):
        if n and pid != pids[n - 1]:
            out_t.append(t)
            out_v.append(None)
        out_t.append(t)
        out_v.append(v)
    return out_t, out_v


def draw(figures: dict[str, Any], out: Path) -> None:
    warmup = float(figures["settings"]["warmup"]) / 60
    flavours = [flavour for flavour in FLAVOURS if flavour in figures["samples"]]
    fig, axes = plt.subplots(
        2, len(flavours), figsize=(5 * len(flavours), 7), sharex=True, squeeze=False
    )
    for column, flavour in enumerate(flavours):
        samples, idle = figures["samples"][flavour], figures["idle"][flavour]
        top, bottom = axes[0][column], axes[1][column]
        for worker_id, colour in COLOURS.items():
            label = f"worker {worker_id}" + (" (recycled)" if worker_id == 2 else "")
            top.plot(*breaks(*series(samples, worker_id, "rss_kib")), color=colour, lw=1,
                     label=label)  # fmt: skip
            ts, values, _ = series(idle, worker_id, "rss_kib")
            top.plot(ts, values, ".", color=colour, ms=3)
            ts, values, _ = series(idle, worker_id, "rss_trimmed_kib")
            if ts:
                top.plot(ts, values, "x", color="black", ms=3, label="worker 1, trimmed")
            ts, values, _ = series(idle, worker_id, "fds")
            bottom.plot(ts, values, ".-", color=colour, lw=0.8, ms=3, label=f"fds, w{worker_id}")
        bottom.plot(
            [p["t"] / 60 for p in idle], [p["close_wait"] for p in idle], "x", color="tab:red",
            ms=4, label="CLOSE_WAIT",
        )  # fmt: skip
        top.axvline(warmup, color="grey", ls="--", lw=0.8)
        check = figures["rss"].get(flavour, {}).get("rss_trimmed_kib")
        title = flavour
        if check:
            title += f": worker 1 trimmed {check['growth_pct']:+.1f}% after the warm-up"
        top.set_title(title)
        top.set_ylabel("RSS (MiB)")
        top.set_ylim(bottom=0)
        bottom.set_ylabel("after each wave")
        bottom.set_ylim(bottom=-1)
        bottom.set_xlabel("minutes")
        top.legend(loc="lower right", fontsize=8)
        bottom.legend(loc="center right", fontsize=8)
    fig.suptitle(f"bench/soak.py, {figures['elapsed_s'] / 60:.0f} minutes")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    draw(json.loads(args.json.read_text()), args.png)


if __name__ == "__main__":
    main()
