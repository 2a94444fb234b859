"""Chat rooms, gevent flavour: open http://localhost:5000/lobby in two tabs and talk.

Each URL /<room> is a room; the page talks to the WebSocket /ws/<room>. One worker
process needs no broker (broadcasts stay in-process)::

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
    ws_url = url_for("chat", room=room, _external=True)  # ws:// (wss:// under HTTPS)
    return render_template_string(
        PAGE, room=room, ws_url=ws_url, name_max=NAME_MAX, text_max=TEXT_MAX
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
  #messages { list-style: none; padding: 0; height: 60vh; overflow-y: auto;
              border: 1px solid #ccc; border-radius: 4px; }
  #messages li { padding: .25em .5em; overflow-wrap: anywhere; }
  #messages li.join, #messages li.leave, #messages li.status { color: #777; font-style: italic; }
  time { color: #999; font-size: .8em; margin-right: .5em; }
  form { display: flex; gap: .5em; }
  #text { flex: 1; }
</style>
<h1>#{{ room }}</h1>
<ul id="messages"></ul>
<form id="form">
  <input id="name" maxlength="{{ name_max }}" placeholder="your name" aria-label="name">
  <input id="text" maxlength="{{ text_max }}" placeholder="message" aria-label="message"
         autocomplete="off" autofocus>
  <button>Send</button>
</form>
<script>
const url = {{ ws_url|tojson }};
const list = document.getElementById("messages");
const nameField = document.getElementById("name");
const textField = document.getElementById("text");
nameField.value = localStorage.getItem("chat-name") || "guest-" + Math.floor(Math.random() * 1000);
nameField.onchange = () => localStorage.setItem("chat-name", nameField.value);

function show(message) {
  const item = document.createElement("li");
  item.className = message.event;
  const time = document.createElement("time");
  time.textContent = new Date(message.time).toLocaleTimeString();
  const name = document.createElement("b");
  name.textContent = message.name;
  item.append(time, name, " ", message.text);  // strings become text nodes, never markup
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

let ws;
function connect() {
  ws = new WebSocket(url + "?name=" + encodeURIComponent(nameField.value));
  ws.onmessage = (event) => show(JSON.parse(event.data));
  ws.onclose = () => {
    show({event: "status", name: "", text: "disconnected; reconnecting...", time: Date.now()});
    setTimeout(connect, 2000);
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
