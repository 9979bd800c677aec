"""Let Orthanc exit cleanly where the Python plugin's own teardown crashes.

With the Python plugin 7.1 on Python 3.14 (the orthancteam image, Debian
``sid``), an Orthanc whose Python script registers both a REST callback and
a change callback ends most of its stops with a corrupted heap or a
segmentation fault (exit status 134 or 139), after it has logged "Orthanc has
stopped": a static object of ``libOrthancPython.so`` is destroyed when the
library is unloaded (``dlclose``) or when the process exits, and frees memory
that is no longer its own.  Scripts with only one kind of callback, and the
plugin 5.0 on Python 3.13, stop cleanly (tests/integration/test_stacks.py).

Every callback a cache needs is of those two kinds, so the teardown is
avoided instead: the library is kept loaded (``RTLD_NODELETE``), and an
``on_exit`` handler, registered after the library's static objects, ends the
process with Orthanc's own exit status before they are destroyed.  By then
``main`` has returned: Orthanc has stopped its servers, jobs and plugins and
closed its database and storage; what is skipped is memory that the system
reclaims anyway, and the flushing of C stdio buffers (Orthanc's log, up to its
last line "Orthanc has stopped", was complete in every test).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

#: The interpreters with which the Python plugin's teardown was seen to crash.
AFFECTED_PYTHON = (3, 14)


def avoid_plugin_teardown(maps: str = "/proc/self/maps") -> Optional[str]:
    """Keep the Python plugin's library loaded and skip its static destructors at exit.

    Returns what was done (for the log), or None where nothing is needed or
    possible (another interpreter, not Linux with glibc, library not found).
    """
    if sys.version_info[:2] < AFFECTED_PYTHON or not sys.platform.startswith("linux"):
        return None
    try:
        with open(maps, encoding="utf-8", errors="replace") as mapped:
            paths = {line.split()[-1] for line in mapped if "/libOrthancPython.so" in line}
        if len(paths) != 1:
            return None
        path = paths.pop()
        ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NODELETE)
        libc = ctypes.CDLL(None)
        # on_exit(function, argument) calls function(status, argument): _exit(status).
        if libc.on_exit(libc._exit, None) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return "%s kept loaded, process ends with _exit after Orthanc has stopped" % path
