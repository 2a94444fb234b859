"""What only the asyncio flavour promises: tasks, cancellation, released cores, broadcast."""

from __future__ import annotations

import asyncio
import contextlib
import time

import greenlet
import pytest
from websockets.sync.client import connect

from flask_uwsgi_websocket import AsyncioWebSocket
from flask_uwsgi_websocket.asyncio import Wakeup

from .helpers import AppServer, wait_for


def test_plain_def_handler_is_refused_when_registered() -> None:
    websocket = AsyncioWebSocket()

    def handler(ws: object) -> None: ...

    with pytest.raises(TypeError, match="not a coroutine function"):
        websocket.route("/sync")(handler)
    assert not websocket.view_functions


def test_handler_awaiting_elsewhere_is_cancelled_when_the_peer_goes(
    asyncio_server: AppServer,
) -> None:
    asyncio_server.http("/events", "DELETE")
    with connect(f"{asyncio_server.url}/blocked") as ws:
        assert ws.recv() == "sleeping"
    started = time.monotonic()
    event = wait_for(lambda: asyncio_server.events("blocked"))[0]
    assert event == {"route": "blocked", "outcome": "CancelledError", "code": 1000}
    assert time.monotonic() - started < 5  # not the 30 s sleep


def test_broadcast_from_one_task_to_many_connections(asyncio_server: AppServer) -> None:
    with contextlib.ExitStack() as stack:
        subscribers = [
            stack.enter_context(connect(f"{asyncio_server.url}/subscribe")) for _ in range(20)
        ]
        time.sleep(0.3)  # every subscriber registered
        with connect(f"{asyncio_server.url}/broadcast") as publisher:
            publisher.send("50")
            assert publisher.recv(timeout=10) == "sent 50 to 20"
        for ws in subscribers:
            assert [ws.recv(timeout=10) for _ in range(50)] == [f"news {i}" for i in range(50)]


def test_cores_are_released_when_connections_end() -> None:
    # Ten async cores: if a connection's core stayed parked after the connection went away,
    # the second batch of ten would wait forever in uWSGI's queue.
    with AppServer("asyncio", extra_args=("--asyncio", "10")) as server:
        with contextlib.ExitStack() as stack:
            blocked = [stack.enter_context(connect(f"{server.url}/blocked")) for _ in range(9)]
            for ws in blocked:
                assert ws.recv(timeout=10) == "sleeping"
        wait_for(lambda: len(server.events("blocked")) == 9)
        for _ in range(3):  # and again: nothing leaks across batches
            with contextlib.ExitStack() as stack:
                echoes = [
                    stack.enter_context(connect(f"{server.url}/echo", open_timeout=5))
                    for _ in range(9)
                ]
                for i, ws in enumerate(echoes):
                    ws.send(str(i))
                assert [ws.recv(timeout=5) for ws in echoes] == [str(i) for i in range(9)]
        assert "async queue is full" not in server.output()


def test_several_processes_with_lazy_apps() -> None:
    # Each worker gets its own event loop, whether the app loads in the master or, with
    # --lazy-apps, in each worker (on Python 3.12+ a worker without one dies at start-up).
    for lazy in ((), ("--lazy-apps",)):
        with AppServer("asyncio", extra_args=("--processes", "2", *lazy)) as server:
            with contextlib.ExitStack() as stack:
                sockets = [stack.enter_context(connect(f"{server.url}/echo")) for _ in range(6)]
                for i, ws in enumerate(sockets):
                    ws.send(f"message {i}")
                assert [ws.recv(timeout=10) for ws in sockets] == [f"message {i}" for i in range(6)]
            assert "Traceback" not in server.output()
            assert "spawned uWSGI worker 2" in server.output()


# The Wakeup a waiting task awaits, on a real loop: stepped at once from the loop's
# callbacks, scheduled from a task or another greenlet, cancellable as a future.


def _waiting_task(
    loop: asyncio.AbstractEventLoop, runner: greenlet.greenlet, log: list[str]
) -> tuple[Wakeup, asyncio.Task[None]]:
    wakeup = Wakeup(loop, runner)

    async def wait() -> None:
        try:
            await wakeup
            log.append("woken")
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    return wakeup, loop.create_task(wait())


def test_wakeup_set_from_a_loop_callback_steps_the_task_at_once() -> None:
    loop = asyncio.new_event_loop()
    log: list[str] = []
    wakeup, task = _waiting_task(loop, greenlet.getcurrent(), log)

    def callback() -> None:
        wakeup.set()
        log.append("set returned")

    loop.run_until_complete(asyncio.sleep(0))  # the task waits
    loop.call_soon(callback)
    loop.run_until_complete(task)
    loop.close()
    assert log == ["woken", "set returned"]
    assert wakeup.done() and not wakeup.cancelled()


def test_wakeup_set_from_a_task_or_another_greenlet_is_scheduled() -> None:
    loop = asyncio.new_event_loop()
    log: list[str] = []
    wakeup, task = _waiting_task(loop, greenlet.getcurrent(), log)
    other, other_task = _waiting_task(loop, greenlet.getcurrent(), log)

    async def setter() -> None:
        wakeup.set()  # a task is running: no other may step now
        log.append("set returned")
        greenlet.greenlet(other.set).switch()  # not the loop's greenlet
        log.append("other set returned")

    async def main() -> None:
        await asyncio.gather(setter(), task, other_task)

    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(main())
    loop.close()
    assert log == ["set returned", "other set returned", "woken", "woken"]


def test_wakeup_is_cancelled_with_its_task_and_by_wait_for() -> None:
    loop = asyncio.new_event_loop()
    log: list[str] = []
    wakeup, task = _waiting_task(loop, greenlet.getcurrent(), log)
    loop.run_until_complete(asyncio.sleep(0))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert log == ["cancelled"]
    assert wakeup.cancelled() and not wakeup.cancel()
    wakeup.set()  # too late: nothing happens
    with pytest.raises(asyncio.CancelledError):
        wakeup.result()

    async def timed_out() -> None:
        await asyncio.wait_for(Wakeup(loop, greenlet.getcurrent()), 0.01)

    with pytest.raises(asyncio.TimeoutError):
        loop.run_until_complete(timed_out())
    loop.close()


def test_wakeup_done_before_it_is_awaited_does_not_wait() -> None:
    loop = asyncio.new_event_loop()
    wakeup = Wakeup(loop, greenlet.getcurrent())
    with pytest.raises(asyncio.InvalidStateError):
        wakeup.result()
    wakeup.set()

    async def wait() -> str:
        await wakeup
        return "done"

    assert loop.run_until_complete(wait()) == "done"
    assert wakeup.exception() is None
    loop.close()
