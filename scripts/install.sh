#!/usr/bin/env bash
# Sets up a development checkout: a virtualenv in .venv with this package (editable), gevent,
# redis-py, and a uWSGI built with the gevent, asyncio and greenlet engines.
#   scripts/install.sh           enough to run the examples
#   scripts/install.sh --test    also the test tools: pytest & co, Playwright, redis-server,
#                                nginx, chromium, systemd-analyze and iproute2 (Debian
#                                packages) and wstest (Autobahn|Testsuite, in ~/.cache)
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
py=$VENV/bin/python
"$py" -m pip install -q --upgrade pip
bash scripts/install-uwsgi.sh "$py"
if [[ ${1:-} == --test ]]; then
  "$py" -m pip install -q -e ".[gevent,asyncio,redis,test,bench]"
  # nginx and systemd-analyze: tests/test_deployment.py; chromium, which Playwright drives
  # (`playwright install`, a browser download, is not used): tests/test_chat_browser.py;
  # iproute2 (`ip netns`): tests/test_broadcast_hosts.py.
  if ! command -v redis-server >/dev/null || [[ ! -x /usr/sbin/nginx ]] \
      || [[ ! -x /usr/bin/chromium ]] || ! command -v systemd-analyze >/dev/null \
      || ! command -v ip >/dev/null; then
    sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -q \
      && $sudo apt-get install -y -q redis-server nginx chromium systemd iproute2 >/dev/null
  fi
  bash scripts/install-autobahn.sh >/dev/null
else
  "$py" -m pip install -q -e ".[gevent,asyncio,redis]"
fi
