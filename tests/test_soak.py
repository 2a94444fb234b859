"""The soak (``bench/soak.py``) for 2 minutes: every flavour at once, with the Redis broker,
under churn. It must find nothing lost or corrupted, every close as expected, fds and
CLOSE_WAIT back to their baseline after each wave, and no respawn but those it caused.

Two minutes are not enough for RSS to settle, so this run bounds the growth of worker 1's
trimmed RSS (after ``malloc_trim(0)``) after its 90 s warm-up at 25%: a gross leak. The 5%
bound is the 60-minute run's (``bench/README.md``, *Soak*). Marked ``soak``:
``scripts/test-all.sh`` runs it with the default Python only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT

FLAVOURS = ("plain", "gevent", "asyncio")


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_for_two_minutes(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "120",
         "--recycle-every", "60", "--warmup", "90", "--rss-growth", "25", "--sample", "5",
         "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    report = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, report
    found = json.loads(figures.read_text())
    assert found["failures"] == {}, report
    for flavour in FLAVOURS:
        counts = found["counts"][flavour]
        # Every kind of churn happened, in every flavour.
        assert counts["waves"] >= 4, (flavour, counts)
        assert counts["opened"] >= 200, (flavour, counts)
        assert counts["echo_checked"] >= 1000, (flavour, counts)
        assert counts["broadcast_delivered"] >= 1000, (flavour, counts)
        assert counts.get("broadcast_lost", 0) == 0, (flavour, counts)
        assert counts["ping_answered"] >= 50, (flavour, counts)
        for kind in ("closed_normally", "closed_by_reset", "closed_half_closed",
                     "closed_silent", "closed_killed", "closed_1013_slow", "recycles"):  # fmt: skip
            assert counts.get(kind, 0) >= 1, (flavour, kind, counts)
        assert found["rss"][flavour]["rss_trimmed_kib"]["growth_pct"] < 25, found["rss"]
        assert counts["trims"] >= 4, (flavour, counts)
        idle = found["idle"][flavour]
        assert idle and all(moment["close_wait"] == 0 for moment in idle), idle
