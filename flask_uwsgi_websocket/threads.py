"""The plain flavour: processes and threads (``uwsgi --threads N``, or ``app.run()``).

The handler runs in the request's thread. One daemon thread per worker process
runs an asyncio event loop that watches every connection of that process (the
:class:`IOThread`): it answers pings, keeps connections alive, runs the timers and
queues messages while handlers do other work. A lock per connection makes ``send``
and ``close`` safe from any thread.

While a handler waits in ``receive``, its own thread reads the socket instead (it
polls the socket and a :class:`Waker`), so a message goes from the socket to
the handler without waking a second thread; the I/O thread leaves the socket alone
meanwhile, and takes it back when the handler has not come back to ``receive`` for
:data:`LEND` seconds (a handler that echoes comes back long before: the socket stays
out of the I/O thread's set, without a system call per message). Every read is made
with the connection's lock held, so two threads never read at once.
"""

from __future__ import annotations

import asyncio
import os
import select
import selectors
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from .client import BlockingClient
from .core.reactor import Reactor, Timer
from .flask.extension import WebSocketExtension
from .flask.middleware import WebSocketMiddleware
from .shutdown import watch_signals

__all__ = ["WebSocket", "WebSocketClient", "WebSocketMiddleware"]

_ONE = (1).to_bytes(8, "little")  # an eventfd's increment (and 8 bytes to a pipe)

#: Seconds between the I/O thread's looks at the sockets lent to handlers' threads: one
#: whose handler has not read it since the look before goes back to the I/O thread, so it
#: answers pings and closes within twice this while the handler does other work.
LEND = 0.1


class ReadSet:
    """The sockets an :class:`IOThread` watches for reading, apart from its loop's own
    selector: any thread may add or remove one, without waking the I/O thread (epoll and
    kqueue take changes from any thread); the loop watches the set's descriptor."""

    def __init__(self) -> None:
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._selector: Any = None  # a selector with a fileno(): epoll's, kqueue's...
        if hasattr(select, "epoll"):  # C calls only: it is used twice per message
            self._epoll: select.epoll | None = select.epoll()
        else:  # pragma: no cover - not Linux
            self._epoll = None
            self._selector = selectors.DefaultSelector()

    def fileno(self) -> int:
        """The descriptor that is readable when a socket of the set is."""
        if self._epoll is not None:
            return self._epoll.fileno()
        fileno: int = self._selector.fileno()  # pragma: no cover - not Linux
        return fileno  # pragma: no cover - not Linux

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` in the I/O thread whenever ``fd`` is readable."""
        self._callbacks[fd] = callback
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:  # pragma: no cover - not Linux
            self._selector.register(fd, selectors.EVENT_READ)

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``; a callback the I/O thread is about to make may still come."""
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:  # pragma: no cover - not Linux
            self._selector.unregister(fd)
        self._callbacks.pop(fd, None)

    def dispatch(self) -> None:
        """Make the callbacks of the sockets that are readable; in the I/O thread."""
        if self._epoll is not None:
            ready = [fd for fd, _ in self._epoll.poll(0)]
        else:  # pragma: no cover - not Linux
            ready = [key.fd for key, _ in self._selector.select(0)]
        for fd in ready:
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback()

    def close(self) -> None:
        """Give the descriptor back."""
        if self._epoll is not None:
            self._epoll.close()
        else:  # pragma: no cover - not Linux
            self._selector.close()


class IOThread:
    """An asyncio event loop in a daemon thread: one per worker process."""

    _current: IOThread | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        #: The sockets watched for reading (see :class:`ThreadReactor`).
        self.readers = ReadSet()
        #: The sockets lent to handlers' threads (see :meth:`ThreadReactor.lend`).
        self.lent: set[ThreadReactor] = set()
        #: How many looks at them have been made (:meth:`_look_at_lent`).
        self.looks = 0
        self._looking = False  # a look is scheduled; with _lent_lock held
        self._lent_lock = threading.Lock()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="websocket-io", daemon=True
        )
        try:
            self.loop.add_reader(self.readers.fileno(), self.readers.dispatch)
            self.thread.start()
        except BaseException:  # no thread to be had: give the loop's descriptors back
            self.readers.close()
            self.loop.close()
            raise

    @classmethod
    def current(cls) -> IOThread:
        """This process's I/O thread, started on first use (after uWSGI forked)."""
        with cls._lock:
            io = cls._current
            if io is None or io.pid != os.getpid():
                io = cls._current = cls()
            return io

    def call(self, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function`` in the I/O thread, now if this is it."""
        if threading.get_ident() == self.thread.ident:
            function(*args)
        else:
            self.loop.call_soon_threadsafe(function, *args)

    def lend(self, reactor: ThreadReactor) -> None:
        """Keep an eye on ``reactor``, lent to its handler's thread; from any thread."""
        with self._lent_lock:
            self.lent.add(reactor)
            if self._looking:
                return
            self._looking = True
        self.call(self.loop.call_later, LEND, self._look_at_lent)

    def unlend(self, reactor: ThreadReactor) -> None:
        """Forget ``reactor``: taken back, or its connection is over; from any thread."""
        with self._lent_lock:
            self.lent.discard(reactor)

    def _look_at_lent(self) -> None:
        """Take back the sockets whose handlers have not read since the last look."""
        looks = self.looks
        self.looks = looks + 1
        with self._lent_lock:
            lent = list(self.lent)
        try:
            for reactor in lent:
                if reactor.lent_at < looks:  # asked again with its lock held
                    reactor.take_back(looks)
        finally:  # the next look, whatever happened: a socket left lent is read by no one
            with self._lent_lock:
                again = self._looking = bool(self.lent)
            if again:
                self.loop.call_later(LEND, self._look_at_lent)

    def call_and_wait(self, function: Callable[[], Any]) -> None:
        """Call ``function`` in the I/O thread and wait until it has run."""
        if threading.get_ident() == self.thread.ident:
            function()
            return
        done = threading.Event()

        def run() -> None:
            try:
                function()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait()


class ThreadTimer:
    """A call scheduled on the I/O thread; ``cancel`` works from any thread."""

    def __init__(self, io: IOThread, delay: float, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback
        self._handle: asyncio.TimerHandle | None = None
        self._io = io
        io.call(self._arm, delay)

    def _arm(self, delay: float) -> None:
        if self._callback is not None:
            self._handle = self._io.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def cancel(self) -> None:
        """Do not make the call."""
        self._callback = None
        handle = self._handle
        if handle is not None:
            self._io.call(handle.cancel)


class Waker:
    """What ends a thread's ``poll`` from another thread: an eventfd (a pipe where there
    is none) and a ``poll`` object watching it. One per thread that has waited in
    ``receive`` (see :func:`waker`); its descriptors are closed with the thread."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self.fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            self.fd, self._write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._write_fd, False)
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)
        #: Set since the last :meth:`clear`: the descriptor is readable, no need to write.
        self.set = False

    def wake(self) -> None:
        """End the owner's ``poll``; with the lock of the connection it waits for held."""
        if not self.set:
            self.set = True
            try:
                os.write(self._write_fd, _ONE)
            except BlockingIOError:  # pragma: no cover - a full pipe is readable already
                pass

    def clear(self) -> None:
        """Take the wake-up, after the ``poll`` saw it; with the same lock held."""
        self.set = False
        try:
            os.read(self.fd, 4096)
        except BlockingIOError:
            pass

    def __del__(self) -> None:
        os.close(self.fd)
        if self._write_fd != self.fd:  # pragma: no cover - not Linux
            os.close(self._write_fd)


_local = threading.local()


def waker() -> Waker:
    """The current thread's :class:`Waker`, made on first use."""
    try:
        made: Waker = _local.waker
    except AttributeError:
        made = _local.waker = Waker()
    return made


class ThreadReactor:
    """A connection's watchers on the process's :class:`IOThread`.

    While the handler's thread reads the socket (from :meth:`take` to :meth:`lend`, with
    ``lock`` held) the socket is out of the I/O thread's read set, so that thread is not
    woken for it; it stays out (lent) while the handler comes back to read it again, and
    the I/O thread takes it back (:meth:`take_back`) once the handler has not read it for
    a while. Taking it out and putting it back are a system call each. A read event the
    I/O thread had already taken finds the flag set and does nothing.
    """

    def __init__(self, fd: int, io: IOThread, lock: Any) -> None:
        self.fd = fd
        self.io = io
        self.lock = lock
        #: The connection's read callback while it wants reads, else ``None``.
        self.reader: Callable[[], None] | None = None
        self._handler_reads = False
        self._in_read_set = False
        self._lent = False  # out of the read set between the handler's reads (lend)
        #: :attr:`IOThread.looks` when the handler last read.
        self.lent_at = 0

    def take(self) -> None:
        """The handler's thread reads from now on, until :meth:`lend`. With ``lock`` held;
        every message in ``receive`` comes through here: no call it can spare."""
        self._handler_reads = True
        if self._in_read_set:
            self._in_read_set = False
            self.io.readers.remove(self.fd)

    def lend(self) -> None:
        """The handler's read is over: the socket stays out of the read set until it reads
        again, or until the I/O thread takes it back (:meth:`take_back`, after 1 to 2
        :data:`LEND`). With ``lock`` held."""
        self._handler_reads = False
        self.lent_at = self.io.looks
        if not self._lent and self.reader is not None and not self._in_read_set:
            self._lent = True
            self.io.lend(self)

    def take_back(self, looks: int) -> None:
        """In the I/O thread: read the socket again, unless the handler's thread has read
        it since look number ``looks`` began, or reads it now."""
        with self.lock:
            if self._handler_reads or self.lent_at >= looks:
                return
            self._lent = False
            self.io.unlend(self)  # with the lock held: a lend() cannot come in between
            self._update()

    def watch_read(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` in the I/O thread whenever the socket is readable, unless
        the handler's thread reads it then. With ``lock`` held."""
        self.reader = callback
        self._update()

    def _update(self) -> None:
        want = self.reader is not None and not self._handler_reads
        if want != self._in_read_set:
            self._in_read_set = want
            if want:
                self.io.readers.add(self.fd, self._on_readable)
            else:
                self.io.readers.remove(self.fd)

    def _on_readable(self) -> None:
        with self.lock:
            reader = self.reader
            if reader is not None and not self._handler_reads:
                reader()

    def watch_write(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` in the I/O thread whenever the socket is writable."""
        loop = self.io.loop
        if callback is None:
            self.io.call(loop.remove_writer, self.fd)
        else:
            self.io.call(loop.add_writer, self.fd, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` in the I/O thread after ``delay`` seconds."""
        return ThreadTimer(self.io, delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` now, in this thread: the connection locks its state."""
        callback()

    def close(self) -> None:
        """Stop watching the socket before uWSGI closes it (and may reuse its number):
        once this returns, the I/O thread has no event of it left to act on."""
        with self.lock:
            self.reader = None
            self._lent = False
            self._update()
        self.io.unlend(self)
        self.io.call_and_wait(partial(self.io.loop.remove_writer, self.fd))


class WebSocketClient(BlockingClient):
    """A WebSocket connection, as a handler sees it (plain flavour).

    ``receive`` returns ``str`` for a text message and ``bytes`` for a binary
    one; ``send`` sends ``str`` as text and bytes-like objects as binary.
    ``send`` and ``close`` may be called from any thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.RLock()
        self._condition = threading.Condition(self._lock)
        self._poller: Waker | None = None  # the waker of the thread reading in receive
        self._waiting = 0  # threads in self._condition.wait
        super().__init__(*args, **kwargs)

    def _make_reactor(self, fd: int) -> Reactor:
        self._reactor = ThreadReactor(fd, IOThread.current(), self._lock)
        return self._reactor

    def _make_lock(self) -> Any:
        return self._lock

    def _wait(self, timeout: float | None) -> None:
        self._waiting += 1
        try:
            self._condition.wait(timeout)
        finally:
            self._waiting -= 1

    def _wait_message(self, timeout: float | None) -> None:
        """Read the socket in this thread until it has something, a wake-up or
        ``timeout``: the I/O thread does not read it meanwhile. Waits as :meth:`_wait`
        when the connection does not want reads (its queue is full, it is over...) or
        another thread reads it already. With the lock held (once)."""
        reactor = self._reactor
        if reactor.reader is None or self._poller is not None:
            self._wait(timeout)
            return
        try:
            poller = waker()
        except OSError:  # no descriptor to be had: the I/O thread reads
            self._wait(timeout)
            return
        fd = self.fd
        poll = poller.poll
        reactor.take()
        try:
            self._poller = poller
            poll.register(fd, select.POLLIN)
            self._lock.release()
            try:
                # In milliseconds, rounded up: a wait of under 1 ms is no busy loop.
                events = poll.poll(None if timeout is None else timeout * 1000)
            finally:
                self._lock.acquire()
                self._poller = None
                poll.unregister(fd)
            for ready, _ in events:
                if ready != fd:
                    poller.clear()
                elif (reader := reactor.reader) is not None:
                    reader()
        finally:
            reactor.lend()

    def _wake(self) -> None:
        if self._waiting:  # else notify_all, in Python, would find no one, every message
            self._condition.notify_all()
        if self._poller is not None:
            self._poller.wake()


class WebSocket(WebSocketExtension):
    """The Flask extension, plain flavour: handlers run in the request's thread.

    ``WebSocket(app, **options)`` or ``WebSocket(**options)`` then
    ``init_app(app)``; see :class:`~flask_uwsgi_websocket.flask.extension.WebSocketExtension`.
    """

    client_class = WebSocketClient
    run_defaults: ClassVar[dict[str, Any]] = {"enable_threads": True, "threads": 8}
    engine: ClassVar[str | None] = None
    plugins: ClassVar[tuple[str, ...]] = ()
    watch_worker_end = staticmethod(watch_signals)

    def prepare_worker(self) -> None:
        """Start this process's I/O thread (its event loop takes four descriptors)."""
        IOThread.current()
