"""Draw the benchmarks' JSON as PNG charts, each next to its JSON (``x.json`` -> ``x.png``).

    .venv/bin/python bench/charts.py bench/results/echo.json bench/results/fanout.json ...

A file is recognised by what is in it:

- ``bench/echo.py --json``: round trips per second by server, message size and connection
  count, one panel per uWSGI mode, each bar labelled with its ratio to ``native``;
- ``bench/memory.py --json`` (a list of rows): KiB per connection by server and setting;
- ``bench/fanout.py --json``: when each recipient had the message (its arrival after the
  request, every round pooled), one panel per connection count, one line per broker and
  method (solid 64 B; dashed, dotted: larger messages).

900 x 500 pixels, 256 colours. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

SIZE = (9, 5)  # inches, at 100 dpi
LINE_STYLES = ("-", "--", ":", "-.")


def echo_chart(report: dict[str, Any]) -> Figure:
    """Round trips per second: a panel per mode, a group of bars per size x connections."""
    results = report["results"]
    modes = list(dict.fromkeys(r["mode"] for r in results))
    fig, axes = plt.subplots(1, len(modes), figsize=SIZE, squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        rows = [r for r in results if r["mode"] == mode]
        servers = list(dict.fromkeys(k for r in rows for k in r if f"{k}_runs" in r))
        width = 0.8 / len(servers)
        for n, server in enumerate(servers):
            values = [r.get(server) or 0.0 for r in rows]
            ratios = [f"{v / r['native']:.2f}" if r.get("native") else "" for v, r in
                      zip(values, rows, strict=True)]  # fmt: skip
            bars = ax.bar([x + n * width for x in range(len(rows))], values, width, label=server)
            ax.bar_label(bars, ratios, fontsize=6, rotation=90, padding=2)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
        ax.set_xticklabels([f"{r['size']:,} B\nx {r['conns']}" for r in rows])
        ax.set_title(mode)
        ax.margins(y=0.12)
        ax.yaxis.set_major_formatter("{x:,.0f}")
    axes[0][0].set_ylabel("round trips / s (bar labels: ratio to native)")
    axes[0][-1].legend(fontsize=8)
    meta = report["meta"]
    client = meta.get("client", "client.py")
    what = "" if client == "client.py" else f", {client}"
    fig.suptitle(f"bench/echo.py{what}, medians of the rounds, {meta['duration']:g} s each")
    return fig


def memory_chart(rows: list[dict[str, Any]]) -> Figure:
    """KiB per connection: a group of bars per server, a bar per setting it was run with."""
    servers = list(dict.fromkeys(r["server"] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    found = {(r["server"], r["setting"]): r for r in rows}
    fig, ax = plt.subplots(figsize=SIZE)
    width = 0.8 / len(settings)
    labelled = set()
    for x, server in enumerate(servers):
        present = [setting for setting in settings if (server, setting) in found]
        for n, setting in enumerate(present):
            row = found[server, setting]
            bars = ax.bar(
                x + (n - (len(present) - 1) / 2) * width, row["kib_per_connection"], width,
                color=f"C{settings.index(setting)}",
                label=None if setting in labelled else setting,
            )  # fmt: skip
            labelled.add(setting)
            label = f"{row['kib_per_connection']:.1f}" + (" !" if row["failures"] else "")
            ax.bar_label(bars, [label], fontsize=7, padding=2)
    ax.set_xticks(range(len(servers)), servers)
    ax.set_ylabel("worker RSS growth per connection (KiB)")
    ax.margins(y=0.1)
    if len(settings) > 1:
        ax.legend(fontsize=8, title="client setting", title_fontsize=8)
    counts = ", ".join(f"{c:,}" for c in sorted({r["connections"] for r in rows}))
    failed = " (!: some did not echo)" if any(r["failures"] for r in rows) else ""
    fig.suptitle(f"bench/memory.py, {counts} connections{failed}")
    return fig


def fanout_chart(report: dict[str, Any]) -> Figure:
    """Recipients that have the message against milliseconds after the request."""
    cells = [r for r in report["results"] if r.get("kind") == "fanout"]
    counts = sorted({r["conns"] for r in cells})
    sizes = sorted({r["size"] for r in cells})
    lines = list(dict.fromkeys((r["broker"], r["method"]) for r in cells))
    colours = {line: f"C{n}" for n, line in enumerate(lines)}
    fig, axes = plt.subplots(1, len(counts), figsize=SIZE, squeeze=False, sharey=True)
    for ax, count in zip(axes[0], counts, strict=True):
        for r in cells:
            if r["conns"] == count and r.get("arrival_percentiles"):
                line = (r["broker"], r["method"])
                style = LINE_STYLES[sizes.index(r["size"]) % len(LINE_STYLES)]
                ax.plot(r["arrival_percentiles"], range(1, 101), style, color=colours[line],
                        label=f"{'/'.join(line)}, {r['size']:,} B")  # fmt: skip
        ax.set_title(f"{count:,} connections")
        ax.set_xlabel("ms after the request")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("% of recipients that have it")
    axes[0][0].legend(fontsize=8)
    rounds = report["meta"]["rounds"]
    fig.suptitle(f"bench/fanout.py, one gevent worker, {rounds} rounds pooled")
    return fig


def chart(data: Any) -> Figure:
    """The chart of one benchmark's JSON, whichever it is."""
    if isinstance(data, list):
        return memory_chart(data)
    if any(r.get("kind") == "fanout" for r in data["results"]):
        return fanout_chart(data)
    return echo_chart(data)


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG of 256 colours (a third of the size, no visible change)."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def main() -> None:
    """Draw every JSON file given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+")
    for path in parser.parse_args().json:
        fig = chart(json.loads(path.read_text()))
        save(fig, path.with_suffix(".png"))
        plt.close(fig)
        print(path.with_suffix(".png"))


if __name__ == "__main__":
    main()
