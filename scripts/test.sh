#!/bin/sh
# Sets up and runs the whole test suite (Debian 12, as root): unit tests, and
# integration tests that start real Orthanc servers on free loopback ports.
set -eu
cd "$(dirname "$0")/.."
./scripts/install.sh

# Test tools live in a virtual environment made from the system interpreter.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
