"""Which Orthanc the tests and the benchmark run, and how to start it.

A *stack* is one Orthanc with its Python plugin and embedded Python.  The
tests run against Debian roots made by ``scripts/stack.sh`` (so the versions
do not depend on the host's release):

* ``sid``: the versions of the current orthancteam/orthanc image (Orthanc
  1.13.0, plugin 7.1, Python 3.14), which most users run; the default;
* ``bookworm``: Debian 12's packages (Orthanc 1.10.1, plugin 4.0, Python 3.11);
* ``trixie``: Debian 13's (Orthanc 1.12.7, plugin 5.0, Python 3.13);
* ``host``: the Orthanc installed on this machine, run as it is.

Inside a root, Orthanc sees the host's ``/tmp`` (where tests keep their
files) and the checkout at their own paths.  The plugin is imported from the
checkout (``PYTHONPATH``), so a test always runs the code it sits beside;
tests of the installed package turn that off.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO_ROOT / "scripts" / "stack.sh"
NAMES = ("sid", "bookworm", "trixie", "host")
#: Paths inside the stack (and on the host for ``host``).
ORTHANC_BINARY = "/usr/sbin/Orthanc"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
POSTGRESQL_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
HOUSEKEEPER_PLUGIN = "/usr/share/orthanc/plugins/libHousekeeper.so"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

_current = os.environ.get("ORTHANC_STACK", "sid")


def select(name: str) -> None:
    """Run every Orthanc started from now on in stack ``name``."""
    if name not in NAMES:
        raise ValueError("unknown stack %r (one of %s)" % (name, ", ".join(NAMES)))
    global _current
    _current = name


def current() -> str:
    """The selected stack's name."""
    return _current


def command(arguments: List[str], stack: Optional[str] = None) -> List[str]:
    """The command that runs ``arguments`` (an absolute path first) in ``stack``
    (by default the selected one)."""
    name = stack or _current
    if name == "host":
        return arguments
    return [str(STACK_SCRIPT), "run", name, "--bind", str(REPO_ROOT), "--", *arguments]


def python_path(use_checkout: bool) -> Dict[str, str]:
    """Environment that makes the embedded Python import the plugin from the checkout."""
    return {"PYTHONPATH": str(REPO_ROOT)} if use_checkout else {}


def host_path(path: str) -> Path:
    """Where a path of the selected stack is seen from the host."""
    if _current == "host":
        return Path(path)
    return root() / path.lstrip("/")


@cache
def _root(name: str) -> Path:
    found = subprocess.run([str(STACK_SCRIPT), "root", name], capture_output=True, text=True,
                           check=True)
    return Path(found.stdout.strip())


def root() -> Path:
    """The selected stack's root directory (``/`` for ``host``)."""
    return Path("/") if _current == "host" else _root(_current)


@cache
def _versions(name: str) -> Dict[str, str]:
    if name == "host":
        listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "orthanc",
                                 "orthanc-python", "python3"], capture_output=True, text=True)
        text = listed.stdout
    else:
        text = (_root(name) / ".stack-versions").read_text(encoding="utf-8")
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def versions() -> Dict[str, str]:
    """Debian package versions of the selected stack (``orthanc``, ``orthanc-python``...)."""
    return _versions(_current)


def orthanc_version() -> Optional[str]:
    """Orthanc's upstream version in the selected stack, e.g. ``1.13.0``."""
    version = versions().get("orthanc")
    return version.split("+")[0].split("-")[0] if version else None


def plugin_version() -> Tuple[int, ...]:
    """The Python plugin's upstream version in the selected stack, e.g. ``(7, 1)``;
    ``(0,)`` when unknown."""
    version = versions().get("orthanc-python", "")
    numbers = version.split("+")[0].split("-")[0].split(".")
    return tuple(int(part) for part in numbers if part.isdigit()) or (0,)


def plugin_caches_archives() -> bool:
    """Whether the plugin serves archive and media in the selected stack: not from
    Orthanc 1.12.8 on, where a plugin's REST call for an archive crashes Orthanc
    (host.adapter._plugin_may_read_archives)."""
    version = orthanc_version()
    if version is None:
        return True
    return tuple(int(part) for part in version.split(".")[:3]) < (1, 12, 8)


#: Columns of README.md's versions table and the Debian package each one names.
_TABLE_PACKAGES = (("Orthanc", "orthanc"), ("Python plugin", "orthanc-python"),
                   ("DICOMweb", "orthanc-dicomweb"), ("Python", "python3"),
                   ("diskcache", "python3-diskcache"))


def table_versions(name: str, readme: str) -> Dict[str, str]:
    """What README.md's versions table says stack ``name`` holds: package -> the version
    written in its cell (the Debian version in backquotes when there is one, else the
    upstream one, e.g. ``3.14``)."""
    lines = [line for line in readme.splitlines() if line.startswith("|")]
    header = next((line for line in lines if line.startswith("| stack |")), None)
    row = next((line for line in lines if line.startswith("| `%s` |" % name)), None)
    if header is None or row is None:
        return {}
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    cells = dict(zip(columns, (cell.strip() for cell in row.strip("|").split("|"))))
    found = {}
    for column, package in _TABLE_PACKAGES:
        cell = cells.get(column, "")
        quoted = re.search(r"`([^`]+)`", cell)
        if quoted or cell:
            found[package] = quoted.group(1) if quoted else cell.split()[0]
    return found


def _matches(written: str, held: str) -> bool:
    """A Debian version matches exactly; an upstream one (``3.14``, ``5.6.3``) matches the
    package versions that start with it."""
    if "-" in written or "+" in written:
        return written == held
    upstream = held.split("+")[0].split("-")[0]
    return upstream == written or upstream.startswith(written + ".")


def table_differences(name: str, readme: str, held: Dict[str, str]) -> List[str]:
    """One warning line per package whose version in stack ``name`` is not README.md's."""
    written = table_versions(name, readme)
    if not written:
        return ["WARNING: README.md's versions table has no row for the %s stack" % name]
    return ["WARNING: the %s stack holds %s %s, README.md's versions table says %s"
            % (name, package, held.get(package, "nothing"), version)
            for package, version in written.items()
            if not _matches(version, held.get(package, ""))]
