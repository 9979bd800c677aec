"""The plugin's state that lives as long as Orthanc's process: one object.

Orthanc's Python plugin keeps what a plugin hands it in ways that shape this
package: it accepts one callback of each kind per process, calls some of them
on threads it stops when Orthanc stops, and (plugin 7.1 with Python 3.14)
frees callbacks at exit where freeing them crashes.  What must outlive any
one :class:`..adapter.CachePlugin` call is kept here, in :data:`REGISTRATION`,
rather than in module variables scattered over the host layer.
"""

from __future__ import annotations

import queue
from typing import Any, Callable, List, Optional, Tuple, TypeVar

_Callback = TypeVar("_Callback", bound=Callable[..., Any])


class Registration:
    """What the plugin handed to Orthanc, and what it learnt of it, for the process."""

    def __init__(self) -> None:
        #: Every callable handed to Orthanc, referenced until the process ends.  When
        #: Orthanc stops, the Python plugin 7.1 drops its references to callbacks where
        #: Python 3.14 cannot free them: a callback that nothing else references (a
        #: closure, a bound method) is then freed there, and Orthanc ends with a
        #: segmentation fault or a corrupted heap instead of exiting cleanly.
        self.kept: List[Callable[..., Any]] = []
        #: Change events, as Orthanc reported them, waiting for the delivery thread
        #: (None: stop delivering).
        self.events: queue.SimpleQueue[Optional[Tuple[int, int, str]]] = queue.SimpleQueue()
        #: Whether RestOutput.SendHttpStatus takes (status, text, length), as up to
        #: plugin 4.1, rather than (status, body bytes); None until the first call.
        self.status_takes_text: Optional[bool] = None
        #: Secrets of the settings (a Redis password...) that no log line may hold.
        self.secrets: Tuple[str, ...] = ()

    def keep_alive(self, callback: _Callback) -> _Callback:
        """``callback``, referenced for good: hand only such callables to Orthanc."""
        self.kept.append(callback)
        return callback


#: The one registration of the process.
REGISTRATION = Registration()
