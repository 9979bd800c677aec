"""Request coalescing ("single flight"): one computation per key at a time.

When a study is opened by several viewers at once, or one viewer sends
parallel requests, many GETs may miss the same cache key together.  Without
coordination every one of them asks Orthanc for the same answer (for
``instances-tags``, a read of every file of the study each).  This module
lets the first one compute while the others wait for its answer, as nginx's
``proxy_cache_lock`` and Varnish's request coalescing do.

How it is used (see :meth:`.controller.CacheController._miss`)::

    flight, leading = flights.join(key)
    if leading:
        try:
            value = compute()
            flight.land(value)          # wakes the followers with the value
        finally:
            flight.land(None)           # no effect after a first land()
    else:
        value = flight.wait(timeout)    # None: compute yourself

* :meth:`Flights.join` is atomic: exactly one caller per key *leads* the
  flight; the others get the same :class:`Flight` and *follow* it.
* :meth:`Flight.land` publishes the leader's value (or ``None``: nothing
  to share, e.g. Orthanc answered an error), removes the flight from the
  table and wakes every follower.  Only the first call counts, so a
  ``finally: flight.land(None)`` guarantees that an exception in the leader
  never leaves followers waiting nor a flight in the table.  The next
  caller of :meth:`Flights.join` for the key leads a new flight.
* :meth:`Flight.wait` blocks at most ``timeout`` seconds and returns the
  value, or ``None`` after the timeout or when the leader shared nothing.
  A follower that gets ``None`` computes on its own, outside any flight:
  waiting is an optimization, never a condition for an answer.  A follower
  keeps its :class:`Flight` object, so it gets the value even when the
  flight landed (and left the table) before it started waiting.

The key must cover everything the value depends on: the controller uses the
cache key (URI, normalized query, representation) *and* the resource's
version token, so requests for another representation or version never
wait for each other, nor receive each other's answers.

The table holds only flights in the air (removed when they land), so it
needs no bound beyond the number of concurrent requests.  This module has no
I/O and imports nothing from the package.
"""

from __future__ import annotations

import threading
from typing import Dict, Generic, Hashable, Optional, Tuple, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    """One computation in progress, awaited by its followers."""

    __slots__ = ("_flights", "_key", "_landed", "_value")

    def __init__(self, flights: Flights[T], key: Hashable):
        self._flights = flights
        self._key = key
        self._landed = threading.Event()
        self._value: Optional[T] = None

    @property
    def landed(self) -> bool:
        """Whether the leader has finished (with or without a value)."""
        return self._landed.is_set()

    def land(self, value: Optional[T]) -> None:
        """Leader: publish ``value`` (None: nothing to share) and wake the followers.

        Only the first call has an effect.
        """
        with self._flights._lock:
            if self._landed.is_set():
                return
            self._value = value
            if self._flights._in_air.get(self._key) is self:
                del self._flights._in_air[self._key]
            # Set under the lock: a follower that sees the event set also sees the value.
            self._landed.set()

    def wait(self, timeout: float) -> Optional[T]:
        """Follower: the leader's value, or None after ``timeout`` seconds or
        when the leader had nothing to share."""
        if not self._landed.wait(max(timeout, 0.0)):
            return None
        return self._value


class Flights(Generic[T]):
    """The flights in the air, by key (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_air: Dict[Hashable, Flight[T]] = {}

    def join(self, key: Hashable) -> Tuple[Flight[T], bool]:
        """The flight of ``key`` and whether the caller leads it.

        The leader must call :meth:`Flight.land` exactly once it is done
        (in a ``finally``); followers call :meth:`Flight.wait`.
        """
        with self._lock:
            flight = self._in_air.get(key)
            if flight is not None:
                return flight, False
            flight = Flight(self, key)
            self._in_air[key] = flight
            return flight, True

    def __len__(self) -> int:
        """How many flights are in the air (for tests and statistics)."""
        with self._lock:
            return len(self._in_air)
