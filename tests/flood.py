"""Broadcasts from a plain process that creates the app of ``tests/app_rooms.py``:

    python -m tests.flood ROOM COUNT PREFIX [EVERY] [FLUSH_TIMEOUT]

``COUNT`` messages to ``ROOM`` (see ``flood_messages``); with ``FLUSH_TIMEOUT``,
``websocket.flush(FLUSH_TIMEOUT)`` then, its result printed; the rest is left to
the flush at exit.
"""

from __future__ import annotations

import sys

from tests.app_rooms import flood_messages, websocket


def main(room: str, count: str, prefix: str, every: str = "0", flush: str = "") -> None:
    flood_messages(room, int(count), prefix, int(every))
    if flush:
        print("flushed:", websocket.flush(float(flush)), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
