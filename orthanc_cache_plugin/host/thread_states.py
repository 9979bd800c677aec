"""Keep a Python thread state for each of Orthanc's threads, across callbacks.

Orthanc's Python plugin enters Python with ``PyGILState_Ensure`` and leaves
with ``PyGILState_Release``.  On a thread that Python did not create, the
first call makes a new thread state and the last one destroys it, so every
callback (REST, incoming-request filter, stored instance, change) starts
from a fresh state: an allocation (``mmap``) each time, and
``threading.local`` data lost between two requests on the same thread.  On
the hit path that was a quarter of the time (bench/HISTORY.md).

One extra ``PyGILState_Ensure`` on a thread, never released, keeps its
state alive: the plugin's own Release then only hands the GIL back.  One
state per Orthanc thread stays allocated (a few kilobytes each) until
Orthanc stops; Orthanc's callbacks come from pools of long-lived threads
(HTTP server, DICOM server, jobs, changes), so their number is bounded.
"""

from __future__ import annotations

import ctypes
import threading

_kept = threading.local()


def keep_thread_state() -> None:
    """Keep the calling thread's Python thread state once the callback returns.

    Cheap after the first call on a thread (its ``threading.local`` then
    survives).  Call it only from callbacks that Orthanc runs on its own
    threads: a thread started by Python keeps its state anyway.
    """
    if not getattr(_kept, "done", False):
        ctypes.pythonapi.PyGILState_Ensure()  # the GIL is held: this only counts a user
        _kept.done = True
