"""Failure episodes: "fail once, warn once, retry, works again", written once for every backend.

A store that fails (a disk error, a Redis server stopped) must neither break
the API nor flood the log: every failed operation gives its "nothing", and
the log says once that the store failed (with the first reason) and once
that it works again.  In between, nothing is sent to the failing resource,
except one attempt to reopen it every ``retry_delay`` seconds (doubled after
each failed attempt, up to ``longest_delay``, when given: a server that stays
away is not asked 12 times a minute).  :class:`FailureEpisode` keeps that
state, so that the disk and the Redis backends cannot drift apart; the
backends keep their resource (the cache, the client) and decide what a
failure is.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional


class FailureEpisode:
    """The failure state of one resource, named ``name`` in the log (e.g. "cache store in
    /var/cache").  Safe to call from several threads.

    ``failing`` is a plain attribute: the backends' hot paths read it on every call and
    call :meth:`works` only when it is True.  A backend that holds a lock of its own may
    call :meth:`retry_due` under it (its lock, then this one's), never the other way.
    """

    def __init__(self, name: str, warn: Callable[[str], None], clock: Callable[[], float],
                 retry_delay: float, longest_delay: Optional[float] = None):
        self.name = name
        self._warn = warn
        self._clock = clock
        self._first_delay = self._delay = retry_delay
        self._longest_delay = longest_delay
        self._lock = threading.Lock()
        #: When the last failure or attempt to reopen was (clock seconds).
        self._last = 0.0
        #: Whether an episode is on: from the first failure to the first call that works.
        self.failing = False
        #: Failures so far (each failed operation or attempt to reopen).
        self.failures = 0

    @property
    def delay(self) -> float:
        """Seconds from the last failure or attempt to the next attempt."""
        return self._delay

    def failed(self, reason: str) -> None:
        """A failure of the resource: counted, and dated (the next attempt waits the
        delay from now).  The first of an episode begins it, with the one warning."""
        with self._lock:
            first = not self.failing
            self.failing = True
            self._last = self._clock()
            self.failures += 1
        if first:
            self._warn("%s failed (%s); requests go to Orthanc until it works again"
                       % (self.name, reason))

    def counted(self) -> None:
        """A failure that says nothing of the resource as it is now (a call on a client
        already replaced): counted only, neither beginning nor dating an episode."""
        with self._lock:
            self.failures += 1

    def retry_due(self) -> bool:
        """Whether the caller should make an attempt to reopen now: True at most once per
        delay, while failing.  A True dates the attempt, so that concurrent callers find
        the resource still failing rather than all reopening it at once."""
        if not self.failing or self._clock() - self._last < self._delay:
            return False  # the common answer while failing, without the lock
        with self._lock:
            now = self._clock()
            due = self.failing and now - self._last >= self._delay
            if due:
                self._last = now
        return due

    def backoff(self) -> None:
        """The attempt failed: wait twice as long before the next, up to ``longest_delay``
        (no change without one)."""
        if self._longest_delay is not None:
            with self._lock:
                self._delay = min(self._delay * 2, self._longest_delay)

    def works(self, current: Callable[[], bool] = lambda: True) -> None:
        """A call worked: ends the episode (one warning) and the delay starts afresh.

        ``current()`` says whether that call used the resource as it is now; checked
        under the lock, so that a call that began before a concurrent failure does not
        end the episode that failure began (the store would then stay without its
        resource and without attempts to reopen it)."""
        with self._lock:
            ended = self.failing and current()
            if ended:
                self.failing = False
                self._delay = self._first_delay
        if ended:
            self._warn("%s works again" % self.name)

    def stop(self) -> None:
        """Ends any episode without a word: the owner closed the resource on purpose,
        and nothing is reopened."""
        with self._lock:
            self.failing = False
