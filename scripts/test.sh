#!/bin/sh
# Sets up and runs the whole test suite (Debian 12 or 13, as root): linters,
# unit tests, then integration tests that start real Orthanc servers on free
# loopback ports, on three Orthanc stacks (scripts/stack.sh):
#   sid       Orthanc 1.13.0, Python plugin 7.1 (the orthancteam image): every test
#   bookworm  Orthanc 1.10.1, Python plugin 4.0 (Debian 12): the tests marked old_stack
#   trixie    Orthanc 1.12.7, Python plugin 5.0 (Debian 13): the tests marked old_stack
# Arguments go to every pytest run (e.g. -q, -x, -k name).
set -eu
cd "$(dirname "$0")/.."

# Each stage's duration, printed as it ends (the README's figures come from them).
started=$(date +%s)
last=$started
took() {
    now=$(date +%s)
    echo "test.sh: $1 took $((now - last)) s (total $((now - started)) s)"
    last=$now
}

# The cluster tests start PostgreSQL, the proxy tests nginx, the benchmark's
# smoke test wrk, the Redis store's tests redis-server: their own processes on
# free loopback ports (the services these packages install are not used).
packages="debootstrap postgresql nginx wrk redis-server python3-pip python3-venv"
if ! dpkg -s $packages >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages
fi

# The roots: built once (a few minutes each), checked and reused after.
./scripts/stack.sh build sid
./scripts/stack.sh build bookworm
./scripts/stack.sh build trixie
took "host packages and stack roots"

# Test tools live in a virtual environment made from the system interpreter.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
took "test tools"

failed=0
# Linters (configured in pyproject.toml): a finding fails the run; the tests still run.
.venv/bin/python -m ruff check orthanc_cache_plugin tests bench tools example.py || failed=1
.venv/bin/python -m mypy || failed=1
# The layers that the package's folders show ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports || failed=1
# Each run gets its own temporary folder: pytest's default one is shared by every
# pytest on the machine, which removes the older runs' folders while they still work.
basetemp=$(mktemp -d /tmp/orthanc-cache-plugin-tests.XXXXXX)
trap 'rm -rf "$basetemp"' EXIT
.venv/bin/python -m pytest "$@" --basetemp "$basetemp/unit" tests/unit || failed=1
took "linters and unit tests"
.venv/bin/python -m pytest "$@" --basetemp "$basetemp/sid" --stack sid tests/integration \
    || failed=1
took "integration tests on sid"
for old in bookworm trixie; do
    .venv/bin/python -m pytest "$@" --basetemp "$basetemp/$old" --stack $old -m old_stack \
        tests/integration || failed=1
    took "old_stack tests on $old"
done
exit $failed
