#!/usr/bin/env bash
# The whole test suite from a fresh machine: sets up .venv, chromium for the browser
# tests (Debian package, when missing), then runs pytest on 2 workers.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m browser`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium (Debian package) for the browser tests..."
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "WARNING: could not install chromium; the browser tests will fail and say why"
    else
        echo "WARNING: chromium not found and not root: install it (apt-get install chromium) for the browser tests"
    fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per pytest worker: no oversubscription
exec .venv/bin/python -m pytest -n "${FLOWLIB_TEST_WORKERS:-2}" --timeout 900 "$@"
