#!/usr/bin/env bash
# Builds uWSGI from source into the virtualenv of PYTHON with the gevent, asyncio and greenlet
# loop engines (pip's default build has no asyncio). Idempotent: does nothing when the uWSGI
# beside PYTHON already has all three.
#   usage: scripts/install-uwsgi.sh [PYTHON]      (default .venv/bin/python)
set -euo pipefail
py=${1:-.venv/bin/python}
bindir=$(cd "$(dirname "$py")" && pwd)
has_engines() {
  local list
  list=$("$bindir/uwsgi" --plugins-list 2>&1 || true)
  for engine in gevent asyncio greenlet; do grep -qx "$engine" <<<"$list" || return 1; done
}
if [[ -x $bindir/uwsgi ]] && has_engines; then exit 0; fi
"$py" -m pip install -q greenlet gevent
prefix=$("$py" -c 'import sys; print(sys.prefix)')
version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
echo "building uWSGI with the gevent, asyncio and greenlet engines (about a minute)" >&2
UWSGI_PROFILE=asyncio UWSGI_EMBED_PLUGINS=gevent CFLAGS="-I$prefix/include/site/python$version" \
  "$py" -m pip install -q --no-cache-dir --no-binary uwsgi --force-reinstall uwsgi
has_engines || { echo "uWSGI was built without gevent, asyncio or greenlet" >&2; exit 1; }
