#!/bin/sh
# Sets up and runs the whole test suite (Debian 12, as root): unit tests, and
# integration tests that start real Orthanc servers on free loopback ports.
set -eu
cd "$(dirname "$0")/.."
./scripts/install.sh

# The cluster tests start PostgreSQL and several Orthancs sharing its index;
# the proxy tests start nginx in front of Orthanc (their own processes, on
# free loopback ports: the services these packages install are not used).
packages="postgresql orthanc-postgresql nginx"
if ! dpkg -s $packages >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages
fi

# Test tools live in a virtual environment made from the system interpreter.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
