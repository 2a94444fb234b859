"""examples/echo_gevent.py, plus ``GET /gc``: the time Python's cyclic garbage collector
has taken in this worker, per generation (``bench/rate.py --gc``).

``BENCH_GC=freeze`` calls ``gc.freeze()`` once the app is loaded, ``BENCH_GC=disable``
turns the collector off: what the collector costs, by difference.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import echo_gevent  # type: ignore[import-not-found]
from flask import Flask

app: Flask = echo_gevent.app

#: generation -> [collections, seconds]
collections: dict[int, list[float]] = {generation: [0, 0.0] for generation in range(3)}
_started = [0.0]


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        figures = collections[info["generation"]]
        figures[0] += 1
        figures[1] += time.perf_counter() - _started[0]


gc.callbacks.append(_timed)
if os.environ.get("BENCH_GC") == "freeze":
    gc.freeze()
elif os.environ.get("BENCH_GC") == "disable":
    gc.disable()


@app.route("/gc")
def collector() -> str:
    """The collections so far, per generation, and the objects the collector tracks."""
    return json.dumps({"collections": collections, "tracked": len(gc.get_objects())})
