"""Warm-up: compute the JSON routes of a resource once Orthanc says it is stable.

Orthanc's change callback only :meth:`WarmUp.submit`\\ s; a single background
thread does the work from a bounded queue, so a burst of stable events never
blocks Orthanc's event thread nor grows memory without limit.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Optional, Tuple

from ..core.data import Request
from ..core.routes import Level, routes_of
from .controller import CacheController


def warm_requests(level: Level, resource_id: str) -> Tuple[Request, ...]:
    """The GETs whose answers warm-up stores for one resource."""
    requests = []
    for route in routes_of(level):
        uri = "/%s/%s%s" % (level.value, resource_id, route.suffix)
        for variant in route.warm_variants:
            arguments = {variant: ""} if variant else {}
            requests.append(Request(route, (resource_id,), uri, arguments, {}))
    return tuple(requests)


class WarmUp:
    """A background worker with a bounded queue of (level, id) to warm."""

    def __init__(self, controller: CacheController, queue_size: int,
                 info: Callable[[str], None], warn: Callable[[str], None]):
        self._controller = controller
        self._queue: queue.Queue[Optional[Tuple[Level, str]]] = queue.Queue(queue_size)
        self._info = info
        self._warn = warn
        self._stopping = threading.Event()
        self.done = 0
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="cache-warm-up", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Resources waiting in the queue."""
        return self._queue.qsize()

    def submit(self, level: Level, resource_id: str) -> bool:
        """Queue a resource; False (and nothing queued) when the queue is full."""
        if self._stopping.is_set():
            return False
        try:
            self._queue.put_nowait((level, resource_id))
            return True
        except queue.Full:
            self.skipped += 1
            self._info("warm-up queue full, %s %s left to its first request"
                       % (level.value, resource_id))
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current request (a wait for settling ends at once), drop
        the rest, and join the thread."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the worker checks _stopping after each resource
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:
                break
            level, resource_id = item
            try:
                stored = 0
                for request in warm_requests(level, resource_id):
                    if self._stopping.is_set():
                        return
                    stored += self._controller.warm(request, self._stopping.wait)
                self.done += 1
                self._info("warm-up of %s %s: %d answers stored"
                           % (level.value, resource_id, stored))
            except Exception as error:  # keep the worker alive whatever happens
                self._warn("warm-up of %s %s failed: %s: %s"
                           % (level.value, resource_id, type(error).__name__, error))
