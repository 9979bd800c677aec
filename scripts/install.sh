#!/bin/sh
# Installs what the plugin needs on Debian 12 or 13 (run as root): Orthanc, its
# Python plugin, and this package with its dependencies for the interpreter
# that the plugin embeds (/usr/bin/python3). The Dockerfile does the same.
set -eu
cd "$(dirname "$0")/.."

packages="orthanc orthanc-python python3-pip"
if ! dpkg -s $packages >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages
fi

# Debian marks its Python as externally managed; Orthanc's embedded
# interpreter only sees system site-packages, hence --break-system-packages.
/usr/bin/python3 -m pip install -q --root-user-action=ignore --break-system-packages --upgrade .
