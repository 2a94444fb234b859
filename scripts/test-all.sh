#!/usr/bin/env bash
# The whole test suite, as CI runs it (README's second command), in the virtualenvs that
# scripts/install.sh --test sets up:
#   .venv        the default Python, latest Flask: every test, Autobahn|Testsuite included
#   .venv-3.10   Python 3.10, Flask 2.3, Werkzeug 2.3: all but the Autobahn tests and the soak
#   .venv-3.13   Python 3.13, latest Flask: all but the Autobahn tests and the soak
# One run after the other (the tests time real servers, which a parallel run would slow);
# each run goes on when one before failed, and the exit status says whether all passed.
# Arguments go to each pytest run.
#   usage: scripts/test-all.sh [PYTEST_ARG...]
set -uo pipefail
cd "$(dirname "$0")/.."
failed=()

# run VENV [PYTEST_ARG...]
run() {
  local venv=$1 start=$SECONDS
  shift
  if [[ ! -x $venv/bin/python ]]; then
    echo "test-all.sh: no $venv: run bash scripts/install.sh --test" >&2
    failed+=("$venv"); return
  fi
  echo "=== $venv: $("$venv/bin/python" -c 'import sys; from importlib.metadata import version
print("Python", sys.version.split()[0], "Flask", version("flask"), "Werkzeug", version("werkzeug"))'
  ): pytest $*"
  "$venv/bin/python" -m pytest "$@" || failed+=("$venv")
  echo "=== $venv: $((SECONDS - start)) s"
}

# The browser tests' screenshots of the other Pythons go to folders of their own.
artifacts=${TEST_ARTIFACTS:-test-artifacts}
run .venv "$@"
# The Autobahn|Testsuite and the soak exercise the same code on every Python: once is enough.
TEST_ARTIFACTS=$artifacts/python3.10 run .venv-3.10 -m "not autobahn and not soak" "$@"
TEST_ARTIFACTS=$artifacts/python3.13 run .venv-3.13 -m "not autobahn and not soak" "$@"
if (( ${#failed[@]} )); then
  echo "=== failed: ${failed[*]}" >&2
  exit 1
fi
echo "=== all passed"
