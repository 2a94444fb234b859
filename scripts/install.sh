#!/usr/bin/env bash
# Sets up a development checkout: a virtualenv in .venv with this package (editable), gevent,
# redis-py, and a uWSGI built with the gevent, asyncio and greenlet engines.
#   scripts/install.sh           enough to run the examples
#   scripts/install.sh --test    also the test tools: pytest & co, Playwright, redis-server,
#                                nginx, chromium, systemd-analyze and iproute2 (Debian
#                                packages), wstest (Autobahn|Testsuite, in ~/.cache), and the
#                                other Pythons that scripts/test-all.sh runs the suite on:
#                                .venv-3.10 (Python 3.10, Flask 2.3, Werkzeug 2.3) and .venv-3.13
#                                (Python 3.13), each with its own uWSGI; their interpreters come
#                                from pyenv (`pyenv install --skip-existing`) or else from PATH
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# setup_venv PYTHON VENV EXTRAS [REQUIREMENT...]: VENV with uWSGI and this package.
setup_venv() {
  local python=$1 venv=$2 extras=$3
  shift 3
  [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  bash scripts/install-uwsgi.sh "$venv/bin/python"
  "$venv/bin/python" -m pip install -q -e ".[$extras]" "$@"
}

# find_python X.Y.Z: prints the path of a Python X.Y interpreter: pyenv's X.Y.Z (which
# `pyenv install` builds when it is missing), else pythonX.Y from PATH; fails saying so.
find_python() {
  local version=$1 minor=${1%.*} pyenv python tried="no pyenv on PATH or in \$PYENV_ROOT/bin"
  pyenv=$(command -v pyenv || echo "${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv")
  if [[ -x $pyenv ]]; then
    tried="\`$pyenv install --skip-existing $version\` failed"
    if "$pyenv" install --skip-existing "$version" >&2; then
      python=$("$pyenv" root)/versions/$version/bin/python$minor
      [[ -x $python ]] && { echo "$python"; return; }
      tried="pyenv installed $version, but it has no $python"
    fi
  fi
  # pyenv's shims are on PATH too, but run only the versions pyenv has selected: check.
  if python=$(command -v "python$minor") && "$python" -c '' 2>/dev/null; then
    echo "$python"; return
  fi
  echo "install.sh: no Python $minor, which the tests run on ($tried, and no working" \
       "python$minor on PATH). Install pyenv or Python $minor, then run this again." >&2
  return 1
}

extras=gevent,asyncio,redis
if [[ ${1:-} == --test ]]; then extras+=,test,bench; fi
setup_venv "$PYTHON" "$VENV" "$extras"
if [[ ${1:-} == --test ]]; then
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
  # The other Pythons of scripts/test-all.sh, which names the same virtualenvs.
  python310=$(find_python 3.10.13)
  python313=$(find_python 3.13.0)
  setup_venv "$python310" .venv-3.10 "$extras" "Flask>=2.3,<2.4" "Werkzeug>=2.3,<2.4"
  setup_venv "$python313" .venv-3.13 "$extras"
fi
