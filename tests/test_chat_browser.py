"""``examples/chat.py`` in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright for Python, served by uWSGI (``--http-socket``) and through nginx with TLS.

Two users, each in a browser context of their own (own storage, as two people), type in the
page and see each other's messages; the page's state line shows connecting, open, and closed
with the close code, and the page reconnects by itself.

Playwright drives the system's Chromium (``executable_path``): ``playwright install`` and its
downloaded browsers are not used. Playwright starts Chromium with ``--no-sandbox`` unless
told otherwise, which root needs, and the browser only loads these loopback pages.

Screenshots of every page, taken at the end of each test, are kept as PNG files in the
directory ``$TEST_ARTIFACTS`` (default: ``test-artifacts/`` at the root of the checkout, which
git ignores), named ``chat-<test>-<user>.png``; each run replaces them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, expect, sync_playwright

from .helpers import ROOT, NginxServer, UwsgiServer, tls_certificate

pytestmark = pytest.mark.timeout(180)

CHAT = ROOT / "examples" / "chat.py"
#: Debian's Chromium (``scripts/install.sh --test`` installs it).
CHROMIUM = "/usr/bin/chromium"
#: How long the browser may take to show what a test expects, in ms: the machine may be busy.
WAIT = 30_000

#: What the README recommends for nginx in front of ``--http-socket``: HTTP/1.1 with the
#: upgrade headers passed on, and ``Host`` as the browser sent it (with its port), which the
#: extension compares with the browser's ``Origin``.
NGINX_HTTP = """\
map $http_upgrade $connection_upgrade {
    default upgrade;
    '' close;
}
"""
NGINX_SERVER = """\
location / {{
    proxy_pass http://{upstream};
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_set_header Host $http_host;
}}
"""


@pytest.fixture(autouse=True)
def no_broker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers see no broker setting of the caller's environment."""
    monkeypatch.delenv("WEBSOCKET_BROKER_URL", raising=False)
    monkeypatch.delenv("FLASK_WEBSOCKET_BROKER_URL", raising=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, for the module."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: run scripts/install.sh --test")
    expect.set_options(timeout=WAIT)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where the screenshots go (see the module's docstring)."""
    directory = Path(os.environ.get("TEST_ARTIFACTS") or ROOT / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def chat_server(mode: str = "http", port: int | None = None) -> UwsgiServer:
    """The example as the README deploys it, one worker of 100 greenlets."""
    args = ["--wsgi-file", str(CHAT), "--callable", "app", "--gevent", "100"]
    return UwsgiServer(args, mode=mode, port=port)


class User:
    """A person at the chat page ``url``, in a browser context of their own, named ``name``."""

    def __init__(self, stack: contextlib.ExitStack, browser: Browser, url: str, name: str) -> None:
        self.name = name
        context = browser.new_context(ignore_https_errors=True)  # the test's self-signed cert
        stack.callback(context.close)
        context.set_default_timeout(WAIT)
        self.page = context.new_page()
        self.errors: list[str] = []  # uncaught exceptions in the page
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)
        self.page.fill("#name", name)
        #: The state line: "connecting", "open", "closed <code> ...; reconnecting in ...".
        self.state = self.page.locator("#state")

    def say(self, text: str) -> None:
        """Type ``text`` and press Enter."""
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")
        expect(self.page.locator("#text")).to_have_value("")  # sent

    def sees(self, name: str, text: str) -> None:
        """Wait until the page lists the message ``text`` from ``name``, once."""
        item = self.messages("message").filter(has_text=text)
        expect(item).to_have_count(1)
        expect(item.locator("b")).to_have_text(name)

    def messages(self, event: str) -> Locator:
        """The items of the message list of that event ("message", "join", "status"...)."""
        return self.page.locator(f"#messages li.{event}")

    def screenshot(self, artifacts: Path, test: str) -> None:
        """Keep a picture of the page (see the module's docstring)."""
        self.page.screenshot(path=artifacts / f"chat-{test}-{self.name}.png")


def talk(alice: User, bob: User) -> None:
    """Alice and Bob, both open, exchange a message each; markup stays text."""
    for user in (alice, bob):
        expect(user.state).to_have_text("open")
    alice.say("hello bob")
    markup = "<img src=x onerror=alert(1)> & <b>hi</b>"
    bob.say(markup)
    for user in (alice, bob):
        user.sees("alice", "hello bob")
        user.sees("bob", markup)
        expect(user.page.locator("#messages img")).to_have_count(0)


def test_talk_reload_stop_and_come_back(browser: Browser, artifacts: Path) -> None:
    """Served by uWSGI (``--http-socket``): the page shows the server's close codes, a
    reload's 1001 and the reconnect, a stop's 1001, and is open again once a new server
    listens on the same port."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(chat_server(mode="http-socket"))
        url = f"http://{server.address}/lobby"
        alice, bob = User(stack, browser, url, "alice"), User(stack, browser, url, "bob")
        talk(alice, bob)

        # The server closes with a code: a message over the route's max_message_size. The
        # state line shows it for the first wait only (0.25-0.5 s), the message list keeps it.
        alice.page.evaluate("ws.send('x'.repeat(5000))")
        closed_1009 = re.compile(r"closed 1009 message too big: \S")  # and a reason
        expect(alice.messages("status")).to_have_text([closed_1009])
        expect(alice.state).to_have_text("open")

        # A graceful reload: both pages are told 1001 and reconnect to the new worker.
        os.kill(server.pid, signal.SIGHUP)
        going_away = re.compile(r"closed 1001 going away")
        for user in (alice, bob):
            expect(user.messages("status").last).to_have_text(going_away)
            expect(user.state).to_have_text("open")
        alice.say("after the reload")
        bob.sees("alice", "after the reload")

        # A stop: 1001 again, then a new server on the same port, and both pages are back.
        assert server.stop() == 0
        for user in (alice, bob):
            expect(user.state).to_have_text(re.compile(r"^closed .*; reconnecting in "))
            expect(user.messages("status")).to_have_count(2 if user is bob else 3)
            expect(user.messages("status").last).to_have_text(going_away)
        stack.enter_context(chat_server(mode="http-socket", port=server.port))
        for user in (alice, bob):
            expect(user.state).to_have_text("open")
        bob.say("back again")
        alice.sees("bob", "back again")
        for user in (alice, bob):
            user.screenshot(artifacts, "reconnect")
            assert not user.errors


def test_through_nginx_with_tls_on_its_own_port(
    browser: Browser, artifacts: Path, tmp_path: Path
) -> None:
    """nginx terminates TLS on a non-default port and proxies to ``--http-socket``: the
    browser's ``Origin`` (with that port) passes the extension's check."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(chat_server(mode="http-socket"))
        nginx = stack.enter_context(
            NginxServer(
                NGINX_SERVER.format(upstream=server.address),
                tmp_path,
                certificate=tls_certificate(tmp_path),
                http=NGINX_HTTP,
            )
        )
        url = f"{nginx.url}/lobby"
        assert url.startswith("https://")
        alice, bob = User(stack, browser, url, "alice"), User(stack, browser, url, "bob")
        talk(alice, bob)
        assert alice.page.evaluate("ws.url").startswith(f"wss://{nginx.address}/ws/lobby?")
        for user in (alice, bob):
            user.screenshot(artifacts, "nginx-tls")
            assert not user.errors
        assert "Traceback" not in server.output()
