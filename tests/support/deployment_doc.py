"""The nginx blocks of docs/deployment.md, as the integration tests run them verbatim.

A block is marked ``<!-- tested by tests/integration/<file>: <profile> -->``; only
its addresses and paths are replaced (Orthanc's port, nginx's port, cache folder,
Unix socket, log file) by this test's, see :mod:`support.nginx`.
"""

from __future__ import annotations

import re
from pathlib import Path

DEPLOYMENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def documented_block(test_file: str, profile: str) -> str:
    """The nginx block of docs/deployment.md marked as tested by ``test_file`` for ``profile``."""
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- tested by tests/integration/%s: %s -->\n```nginx\n(.*?)```"
                      % (re.escape(test_file), re.escape(profile)), text, re.DOTALL)
    assert match, "docs/deployment.md has no nginx block marked for %s: %s" % (test_file, profile)
    return match.group(1)


def documented_site(test_file: str, profile: str, orthanc_port: int) -> str:
    """The documented block with this test's addresses and paths (see support.nginx)."""
    site = documented_block(test_file, profile)
    replacements = {
        "127.0.0.1:8042": "127.0.0.1:%d" % orthanc_port,
        "listen 80;": "listen 127.0.0.1:@PORT@;",
        "/var/cache/nginx/orthanc": "@PREFIX@/cache",
        "/run/nginx-orthanc-origin.sock": "@PREFIX@/origin.sock",
        "/var/log/nginx/orthanc-access.log": "@PREFIX@/orthanc-access.log",
    }
    for documented, tested in replacements.items():
        site = site.replace(documented, tested)
    leftovers = re.findall(r"/var/\S*|/run/\S*|:8042\b|listen 80\b", site)
    assert not leftovers, "unexpected addresses or paths in the documented block: %s" % leftovers
    return site
