"""Chat rooms, gevent flavour: open http://localhost:5000/lobby in two tabs and talk.

Each URL /<room> is a room; the page talks to the WebSocket /ws/<room>, shows the
connection's state (connecting, open, closed with its code and reason) and reconnects
after a close, waiting 0.5 s at first and longer after each failure (at most 5 s). One
worker process needs no broker (broadcasts stay in-process)::

    python examples/chat.py               # uWSGI on http://localhost:5000, 100 greenlets

Several worker processes, or several hosts, share the rooms through Redis::

    WEBSOCKET_BROKER_URL=redis://localhost:6379/0 uwsgi --master --http :5000 \\
        --http-websockets --gevent 100 --processes 2 --wsgi-file examples/chat.py --callable app

(``FLASK_WEBSOCKET_BROKER_URL`` works too, like every ``FLASK_WEBSOCKET_*`` setting.)
With Redis, a command run anywhere speaks in a room::

    WEBSOCKET_BROKER_URL=redis://localhost:6379/0 flask --app examples/chat.py \\
        announce "Maintenance at noon" --room lobby
"""

import json
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import click
from flask import Flask, redirect, render_template_string, request, url_for
from werkzeug.wrappers import Response

from flask_uwsgi_websocket import GeventWebSocket, GeventWebSocketClient

NAME_MAX = 32  # characters
TEXT_MAX = 500

app = Flask(__name__)
app.config.from_prefixed_env()  # FLASK_WEBSOCKET_BROKER_URL wins over the broker below
websocket = GeventWebSocket(app, broker=os.environ.get("WEBSOCKET_BROKER_URL"))


@app.route("/")
def index() -> Response:
    return redirect(url_for("page", room="lobby"))


@app.route("/<string(maxlength=40):room>")
def page(room: str) -> str:
    # Only the path of the ws:// URL that url_for builds for a WebSocket route: the page puts
    # it on the scheme and host the browser sees, which stay right behind a proxy or a TLS
    # terminator that this app is not told about.
    ws_path = urlsplit(url_for("chat", room=room)).path
    return render_template_string(
        PAGE, room=room, ws_path=ws_path, name_max=NAME_MAX, text_max=TEXT_MAX
    )


@websocket.route("/ws/<string(maxlength=40):room>", max_message_size=4096)
def chat(ws: GeventWebSocketClient, room: str) -> None:
    name = clean(request.args.get("name"), NAME_MAX) or "anonymous"
    ws.join(room)
    say(room, name, "joined", event="join")
    try:
        for message in ws:  # ends when the client goes away
            data = json_object(message)
            name = clean(data.get("name"), NAME_MAX) or name
            text = clean(data.get("text"), TEXT_MAX)
            if text:
                say(room, name, text)
    finally:
        say(room, name, "left", event="leave")


def say(room: str, name: str, text: str, event: str = "message") -> None:
    """Send to everyone in ``room``, in every worker that shares the broker."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    message = {"event": event, "name": name, "text": text, "time": now}
    websocket.broadcast(json.dumps(message), room=room)


@app.cli.command("announce")
@click.argument("text")
@click.option("--room", default="lobby", show_default=True)
def announce(text: str, room: str) -> None:
    """Say TEXT in ROOM as "announcement", from outside the server (with Redis)."""
    say(room, "announcement", clean(text, TEXT_MAX))


def json_object(message: str | bytes) -> dict[str, Any]:
    """The JSON object the page sends, or ``{}`` for anything else."""
    try:
        data = json.loads(message)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def clean(value: Any, limit: int) -> str:
    """``value`` as one line of at most ``limit`` characters; ``""`` unless a string."""
    return " ".join(value.split())[:limit] if isinstance(value, str) else ""


PAGE = """\
<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ room }} - chat</title>
<style>
  body { font: 16px system-ui, sans-serif; max-width: 40em; margin: 1em auto; padding: 0 1em; }
  header { display: flex; align-items: baseline; justify-content: space-between; gap: 1em; }
  #state { padding: .1em .6em; border-radius: 1em; font-size: .9em; background: #eee; }
  #state[data-state=open] { background: #d7f5dc; color: #14521f; }
  #state[data-state=connecting] { background: #fff2c6; color: #5c4600; }
  #state[data-state=closed] { background: #fbd9d9; color: #7a1212; }
  #messages { list-style: none; padding: 0; height: 60vh; overflow-y: auto;
              border: 1px solid #ccc; border-radius: 4px; }
  #messages li { padding: .25em .5em; overflow-wrap: anywhere; }
  #messages li.join, #messages li.leave, #messages li.status { color: #777; font-style: italic; }
  time { color: #999; font-size: .8em; margin-right: .5em; }
  form { display: flex; gap: .5em; }
  #text { flex: 1; }
</style>
<header>
  <h1>#{{ room }}</h1>
  <span id="state" role="status" data-state="connecting">connecting</span>
</header>
<ul id="messages"></ul>
<form id="form">
  <input id="name" maxlength="{{ name_max }}" placeholder="your name" aria-label="name">
  <input id="text" maxlength="{{ text_max }}" placeholder="message" aria-label="message"
         autocomplete="off" autofocus>
  <button id="send" disabled>Send</button>
</form>
<script>
const path = {{ ws_path|tojson }};
const list = document.getElementById("messages");
const state = document.getElementById("state");
const nameField = document.getElementById("name");
const textField = document.getElementById("text");
const sendButton = document.getElementById("send");
nameField.value = localStorage.getItem("chat-name") || "guest-" + Math.floor(Math.random() * 1000);
nameField.onchange = () => localStorage.setItem("chat-name", nameField.value);

function show(message) {
  const item = document.createElement("li");
  item.className = message.event;
  const time = document.createElement("time");
  time.textContent = new Date(message.time).toLocaleTimeString();
  item.append(time);
  if (message.name) {  // the page's own status lines have none
    const name = document.createElement("b");
    name.textContent = message.name;
    item.append(name, " ");
  }
  item.append(message.text);  // strings become text nodes, never markup
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

function setState(name, text) {  // connecting, open or closed; the button works when open
  state.dataset.state = name;
  state.textContent = text;
  sendButton.disabled = name !== "open";
}

const CLOSE_CODES = {
  1000: "normal", 1001: "going away", 1006: "no close frame", 1008: "policy violation",
  1009: "message too big", 1011: "server error", 1013: "try again later",
};
let ws;
let retries = 0;  // closes since the last open: the next wait doubles, up to 5 s
function connect() {
  setState("connecting", "connecting");
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("name", nameField.value);
  ws = new WebSocket(url.href);
  let opened = false;
  ws.onopen = () => {
    opened = true;
    retries = 0;
    setState("open", "open");
  };
  ws.onmessage = (event) => show(JSON.parse(event.data));
  ws.onclose = (event) => {
    const meaning = CLOSE_CODES[event.code] || "";
    const closed = ["closed", event.code, meaning].filter(Boolean).join(" ") +
      (event.reason ? ": " + event.reason : "");
    // Random, so that the clients of a restarted server do not all come back at once.
    const wait = Math.min(5000, 500 * 2 ** retries++) * (0.5 + Math.random() / 2);
    setState("closed", closed + "; reconnecting in " + (wait / 1000).toFixed(1) + " s");
    if (opened) {  // failed attempts while the server is away are only in the state
      show({event: "status", name: "", text: closed, time: Date.now()});
    }
    setTimeout(connect, wait);
  };
}
connect();

document.getElementById("form").onsubmit = (event) => {  // Enter or the button
  event.preventDefault();
  if (textField.value.trim() && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({name: nameField.value, text: textField.value}));
    textField.value = "";
  }
};
</script>
"""


if __name__ == "__main__":
    app.run(gevent=100)
