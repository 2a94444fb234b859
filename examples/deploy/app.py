"""The app of README.rst's Deployment chapter: an echo, served as ``uwsgi.ini`` or
``uwsgi-https.ini`` says, behind nginx or uWSGI's ``--https`` router.

    uwsgi --ini examples/deploy/uwsgi.ini
"""

from flask import Flask, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_uwsgi_websocket import GeventWebSocket

app = Flask(__name__)
app.config.from_prefixed_env()  # e.g. FLASK_WEBSOCKET_ALLOWED_ORIGINS='["https://example.com"]'
# nginx's proxy_pass tells the client's scheme in X-Forwarded-Proto (one proxy: x_proto=1),
# so that url_for(..., _external=True) gives wss:// behind TLS.
app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)
websocket = GeventWebSocket(app)


@app.route("/")
def index() -> dict[str, str]:
    return {"echo": url_for("echo", _external=True)}


@websocket.route("/echo")
def echo(ws):  # type: ignore[no-untyped-def]
    for message in ws:
        ws.send(message)
