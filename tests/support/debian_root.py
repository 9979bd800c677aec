"""A fresh Debian system in a folder, as a new user's machine: debootstrap's minimal
variant from the archive that scripts/stack.sh uses, nothing else installed.

Made outside pytest's temporary folders (under /var/tmp): while in use, the host's
``/dev`` and a ``proc`` are mounted in it, and a recursive removal must never reach
them.  :func:`fresh_root` unmounts before it removes, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Iterator

from support.stacks import STACK_SCRIPT

HOST_AUTHORITIES = "/etc/ssl/certs/ca-certificates.crt"


def mirror() -> str:
    """The Debian archive the stacks are built from (``stack.sh mirror``)."""
    return subprocess.run([str(STACK_SCRIPT), "mirror"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


@contextlib.contextmanager
def fresh_root(suite: str) -> Iterator[Path]:
    """A new minimal Debian ``suite`` root, with ``/proc`` and ``/dev`` mounted, removed
    at the end.  Its packages' scripts never start services (``policy-rc.d``), as in a
    container."""
    root = Path(tempfile.mkdtemp(prefix="debian-%s-" % suite, dir="/var/tmp"))
    try:
        made = subprocess.run(["debootstrap", "--variant=minbase", suite, str(root), mirror()],
                              capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, "debootstrap %s failed:\n%s" % (suite, made.stdout[-3000:])
        policy = root / "usr" / "sbin" / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n", encoding="utf-8")
        policy.chmod(0o755)
        # The host's name servers and certificate authorities, so that apt and pip inside
        # reach what the host reaches (a proxy's authority may be among them): a local
        # authority, which Debian's ca-certificates adds to the bundle when it installs.
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        if Path(HOST_AUTHORITIES).is_file():
            local = root / "usr" / "local" / "share" / "ca-certificates"
            local.mkdir(parents=True, exist_ok=True)
            shutil.copy(HOST_AUTHORITIES, local / "host.crt")
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        subprocess.run(["mount", "--bind", "/dev", str(root / "dev")], check=True)
        yield root
    finally:
        for mount in (root / "dev", root / "proc"):
            if _mounted(mount):
                subprocess.run(["umount", "-l", str(mount)], check=False)
        if not (_mounted(root / "dev") or _mounted(root / "proc")):
            subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def environment(**extra: str) -> Dict[str, str]:
    """Environment for commands in a :func:`fresh_root`: the host's, without its pip
    settings (they name host paths)."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("PIP_") and name != "PYTHONPATH"}
    env.update({"DEBIAN_FRONTEND": "noninteractive",
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    env.update(extra)
    return env
