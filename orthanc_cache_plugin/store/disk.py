"""The store's disk part: one ``diskcache.Cache`` that turns every failure into "nothing".

:class:`DiskStore` owns the ``diskcache.Cache`` (SQLite index plus files,
size-limited, LRU eviction, per-entry expiry) and its failures: every error
of the disk makes an operation return its "nothing" (no value, not written,
0), so the caller asks Orthanc instead and a broken disk slows the API down
but never breaks it.  A warning is logged once per failure episode, the
cache is reopened :attr:`~DiskStore.RETRY_DELAY` seconds later
(:mod:`.episodes`), and a damaged database is started afresh.  Its owner hears of every failure
(``on_failure``), so that nothing kept elsewhere outlives a failing disk.

It stores raw values (bytes) with their expiry and tag; what they mean is
the owner's business (:class:`.facade.Store`): it is one
:class:`.backend.Backend`, of one node (no claims, nothing shared).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import threading
import time
from typing import Any, Callable, List, Optional

import diskcache

from .backend import NOTHING, Claims, Found
from .episodes import FailureEpisode

_DISKCACHE_FILES = re.compile(r"cache\.db(-wal|-shm|-journal)?")
_DISKCACHE_FOLDERS = re.compile(r"[0-9a-f]{2}")



class DiskStore:
    """Failure-tolerant, size-limited ``diskcache.Cache`` in ``directory``.

    Opened once per process; every method is safe to call from several
    threads (diskcache opens one SQLite connection per thread).
    """

    #: One node's files: nothing to claim, nobody else writing.
    claims: Optional[Claims] = None
    shared_by_nodes = False

    #: Seconds between attempts to reopen a cache that failed.
    RETRY_DELAY = 5.0
    #: Bytes of write-ahead log SQLite keeps after a checkpoint.
    JOURNAL_SIZE_LIMIT = 1024 * 1024

    def __init__(self, directory: str, size_limit: int, warn: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[], None] = lambda: None,
                 retry_delay: Optional[float] = None,
                 journal_size_limit: Optional[int] = None):
        self.directory = directory
        self._size_limit = size_limit
        self._warn = warn
        self._on_failure = on_failure
        self._journal_size_limit = (self.JOURNAL_SIZE_LIMIT if journal_size_limit is None
                                    else journal_size_limit)
        self._lock = threading.Lock()
        self._cache: Optional[diskcache.Cache] = None
        self._episode = FailureEpisode(
            "cache store in %s" % directory, warn, clock,
            self.RETRY_DELAY if retry_delay is None else retry_delay)
        self._damaged = False
        self._open()

    @property
    def available(self) -> bool:
        """False while the cache is failing (or closed)."""
        return self._cache is not None

    @property
    def location(self) -> str:
        """The directory."""
        return self.directory

    @property
    def failures(self) -> int:
        """Failures so far (each failed operation or attempt to open)."""
        return self._episode.failures

    # -- operations: each returns its "nothing" when the disk fails ----------------------------

    def get(self, key: str) -> Found:
        """(value, expiry time, tag) under ``key``; (None, None, None) if absent or failing.

        A read is a write: diskcache's least-recently-used policy records its time."""
        found = self._call(lambda cache: cache.get(key, expire_time=True, tag=True))
        if found is None:
            return NOTHING
        value = found[0]
        # Not bytes: written by something else (an older plugin's pickled object), which
        # the owner then deletes as any value it cannot decode.
        return (value if value is None or isinstance(value, bytes) else b"", found[1],
                found[2])

    def set(self, key: str, value: bytes, expire: Optional[float], tag: Optional[str]) -> bool:
        """Write ``value`` under ``key`` for ``expire`` seconds; False on failure."""
        return bool(self._call(lambda cache: cache.set(key, value, expire=expire, tag=tag),
                               False))

    def evict(self, tag: str) -> int:
        """Drop every value stored with ``tag``; how many went (an indexed query)."""
        return int(self._call(lambda cache: cache.evict(tag), 0))

    def delete(self, key: str) -> None:
        self._call(lambda cache: cache.delete(key))

    def clear(self) -> int:
        """Remove every value; how many went."""
        return int(self._call(lambda cache: cache.clear(), 0))

    def count(self) -> int:
        """Number of values (kept by diskcache, not counted)."""
        return int(self._call(lambda cache: len(cache), 0))

    def volume(self) -> int:
        """Bytes used on disk."""
        return int(self._call(lambda cache: cache.volume(), 0))

    def touch(self, keys: List[str]) -> None:
        """Give ``keys`` the access time now, in one transaction."""
        self.update_access_times(keys, time.time())

    def update_access_times(self, keys: List[str], when: float) -> None:
        """Give ``keys`` the access time ``when`` (wall clock), in one transaction."""
        if keys:
            self._call(lambda cache: _write_access_times(cache, keys, when))

    def close_thread_connection(self) -> None:
        """Close the SQLite connection of the calling thread, if it opened one.

        The next call from this thread then opens a new connection, which
        notices a database deleted or damaged on disk (an open connection
        keeps working on an unlinked or overwritten file)."""
        cache = self._cache
        if cache is not None:
            try:
                cache.close()  # diskcache closes only this thread's connection
            except Exception as error:
                self._fail(error)

    def close(self) -> None:
        """Release the files; later calls reopen nothing."""
        with self._lock:
            cache, self._cache = self._cache, None
            self._episode.stop()
        if cache is not None:
            cache.close()

    # -- failures and reopening ----------------------------------------------------------------

    def _open(self) -> None:
        if self._damaged:
            self._start_afresh()
        try:
            self._cache = diskcache.Cache(
                self.directory, size_limit=self._size_limit,
                eviction_policy="least-recently-used", statistics=False, tag_index=True,
                # Keep SQLite's write-ahead log small once checkpointed.
                sqlite_journal_size_limit=self._journal_size_limit)
        except Exception as error:  # sqlite3, OSError, anything from the disk
            self._fail(error)

    def _start_afresh(self) -> None:
        """Remove a damaged database and its value folders (only diskcache's own files:
        the owner's other files in the directory, like state files, stay)."""
        self._damaged = False
        self._warn("cache store in %s is damaged: starting it afresh" % self.directory)
        try:
            for name in os.listdir(self.directory):
                path = os.path.join(self.directory, name)
                if _DISKCACHE_FILES.fullmatch(name) and os.path.isfile(path):
                    os.remove(path)
                elif _DISKCACHE_FOLDERS.fullmatch(name) and os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # the next attempt to open reports it

    def _fail(self, error: BaseException) -> None:
        # diskcache's Timeout hides SQLite's own error (e.g. a read-only disk).
        cause = error.__context__ if not str(error) and error.__context__ else error
        if isinstance(cause, sqlite3.DatabaseError) and \
                re.search(r"malformed|not a database", str(cause)):
            self._damaged = True
        with self._lock:
            broken, self._cache = self._cache, None
        self._on_failure()
        if broken is not None:
            try:
                broken.close()
            except Exception:
                pass
        self._episode.failed("%s: %s" % (type(cause).__name__, cause))

    def _usable(self) -> Optional[diskcache.Cache]:
        if self._cache is None and self._episode.failing:
            with self._lock:
                retry = self._cache is None and self._episode.retry_due()
            if retry:
                self._open()
        return self._cache

    def _call(self, action: Callable[[diskcache.Cache], Any], default: Any = None) -> Any:
        cache = self._usable()
        if cache is None:
            return default
        try:
            result = action(cache)
        except Exception as error:
            self._fail(error)
            return default
        if self._episode.failing:
            self._episode.works()
        return result


def _write_access_times(cache: diskcache.Cache, keys: List[str], when: float) -> None:
    """The one use of diskcache's private API: its per-thread connection (``_con``).

    diskcache has no public way to set an access time but a read
    (``Cache.get``), which costs ~80 µs per key even in one transaction; this
    single ``executemany`` UPDATE costs ~9 µs per key.  It runs every 0.25 s
    on a background thread holding the GIL and SQLite's write lock, for every
    key read from memory.  It is diskcache's own LRU update (its ``get``: its
    schema keeps str keys raw), so the pyproject pins diskcache to the
    versions the tests run (tests/unit/test_disk.py and test_store.py read
    ``access_time`` back from the table).
    """
    with cache.transact():
        cache._con.executemany(  # pylint: disable=protected-access
            "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1",
            [(when, key) for key in keys])
