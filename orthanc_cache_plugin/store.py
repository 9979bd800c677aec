"""The server-side store: stored answers on disk, behind get / set / delete.

An entry (:class:`.data.Entry`) is one stored answer (or only its validators)
with the version of the resource it was computed from.  :class:`Store` keeps entries in
one ``diskcache.Cache`` (SQLite index plus files, size-limited, LRU
eviction, per-entry expiry) and turns every failure of the disk into "no
entry": the caller then asks Orthanc, so a broken store slows the API down but
never breaks it.  A warning is logged once per failure episode, and the
store reopens itself a little later.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import threading
import time
from typing import Any, Callable, Optional

import diskcache

from . import __version__
from .data import FORMAT, Entry
from .memory import HotEntries

#: The small value (Store.get_value) naming what computed the stored answers.
COMPUTED_BY = "computed-by"


def computed_by(orthanc_version: str) -> str:
    """What shapes every stored answer: Orthanc's version (its output formats change
    between versions), this plugin's version and the store's FORMAT."""
    return "orthanc %s, plugin %s, format %d" % (orthanc_version, __version__, FORMAT)


_DISKCACHE_FILES = re.compile(r"cache\.db(-wal|-shm|-journal)?")
_DISKCACHE_FOLDERS = re.compile(r"[0-9a-f]{2}")


class Store:
    """Failure-tolerant, size-limited store of :class:`Entry` objects.

    Opened once per process; every method is safe to call from several
    threads (diskcache opens one SQLite connection per thread).  With a
    ``memory`` size, the most recently used entries are also kept decoded in
    memory (:class:`~.memory.HotEntries`) and read from there.
    """

    #: Seconds between attempts to reopen a store that failed.
    RETRY_DELAY = 5.0
    #: Bytes of write-ahead log SQLite keeps after a checkpoint.
    JOURNAL_SIZE_LIMIT = 1024 * 1024

    def __init__(self, directory: str, size_limit: int, expiration: int,
                 warn: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 memory: int = 0):
        self.directory = directory
        #: Expiry times are compared with diskcache's own (wall clock).
        self._hot = HotEntries(memory, time.time) if memory > 0 else None
        self._size_limit = size_limit
        self._expiration = expiration
        self._warn = warn
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: Optional[diskcache.Cache] = None
        self._failed_at: Optional[float] = None
        self._damaged = False
        self.failures = 0
        self._open()

    @property
    def available(self) -> bool:
        """False while the store is failing (requests then bypass it)."""
        return self._cache is not None

    def _open(self) -> None:
        if self._damaged:
            self._start_afresh()
        try:
            self._cache = diskcache.Cache(
                self.directory, size_limit=self._size_limit,
                eviction_policy="least-recently-used", statistics=False, tag_index=True,
                # Keep SQLite's write-ahead log small once checkpointed.
                sqlite_journal_size_limit=self.JOURNAL_SIZE_LIMIT)
        except Exception as error:  # sqlite3, OSError, anything from the disk
            self._fail(error)

    def _start_afresh(self) -> None:
        """Remove a damaged database and its value folders (only diskcache's own files)."""
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
            first = self._failed_at is None
            self._failed_at = self._clock()
            self.failures += 1
            broken, self._cache = self._cache, None
        if self._hot is not None:  # the memory mirrors a working disk store, never more
            self._hot.clear()
        if broken is not None:
            try:
                broken.close()
            except Exception:
                pass
        if first:
            self._warn("cache store in %s failed (%s: %s); requests go to Orthanc until it "
                       "works again" % (self.directory, type(cause).__name__, cause))

    def _usable(self) -> Optional[diskcache.Cache]:
        if self._cache is None and self._failed_at is not None:
            if self._clock() - self._failed_at >= self.RETRY_DELAY:
                with self._lock:
                    retry = self._cache is None
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
        if self._failed_at is not None:
            self._failed_at = None
            self._warn("cache store in %s works again" % self.directory)
        return result

    def get(self, key: str) -> Optional[Entry]:
        """The entry stored under ``key``; None if absent, unreadable or the store fails."""
        if self._hot is not None:
            entry = self._hot.get(key)
            if entry is not None:
                return entry
        found = self._call(lambda cache: cache.get(key, expire_time=True, tag=True))
        raw, expires, tag = found if found is not None else (None, None, None)
        if raw is None:
            return None
        entry = Entry.decode(raw) if isinstance(raw, bytes) else None
        if entry is None:  # written by another plugin version, or damaged
            self.delete(key)
        elif self._hot is not None and self._cache is not None:
            lifetime = self._expiration if expires is None else expires - time.time()
            self._hot.put(key, entry, tag, lifetime)
        return entry

    def set(self, key: str, entry: Entry, tag: Optional[str] = None) -> bool:
        """Store ``entry`` under ``key`` (replacing any older version); False on failure.

        ``tag`` (a resource id) lets :meth:`evict` drop every entry of a resource.
        """
        if self._hot is not None:
            self._hot.delete(key)
        written = bool(self._call(
            lambda cache: cache.set(key, entry.encode(), expire=self._expiration, tag=tag), False))
        if written and self._hot is not None:
            self._hot.put(key, entry, tag, self._expiration)
        return written

    def evict(self, tag: str) -> int:
        """Drop every entry stored with ``tag``; how many went (an indexed query)."""
        if self._hot is not None:
            self._hot.evict(tag)
        return int(self._call(lambda cache: cache.evict(tag), 0))

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        if self._hot is not None:
            self._hot.delete(key)
        self._call(lambda cache: cache.delete(key))

    def close_thread_connection(self) -> None:
        """Close the SQLite connection of the calling thread, if it opened one.

        Called when a REST callback ends: the next request then opens a new
        connection, which notices a store deleted or damaged on disk (an open
        connection keeps working on an unlinked or overwritten file)."""
        cache = self._cache
        if cache is not None:
            try:
                cache.close()  # diskcache closes only this thread's connection
            except Exception as error:
                self._fail(error)

    def record_accesses(self) -> None:
        """Give the entries read from memory their access time on disk, in one transaction,
        so that the disk's least-recently-used eviction spares them.  Called periodically."""
        touched = self._hot.take_touched() if self._hot is not None else []
        if not touched:
            return
        now = time.time()

        def update(cache: diskcache.Cache) -> None:
            # diskcache's own LRU update (Cache.get): its schema keeps str keys raw.
            with cache.transact():
                cache._con.executemany(  # pylint: disable=protected-access
                    "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1",
                    [(now, key) for key in touched])
        self._call(update)

    def get_value(self, name: str) -> Optional[str]:
        """A small named string kept in a file beside the entries; None if absent."""
        try:
            with open(os.path.join(self.directory, "state-" + name), encoding="utf-8") as file:
                return file.read()
        except (OSError, ValueError):
            return None

    def set_value(self, name: str, value: str) -> None:
        """Keep ``value`` under ``name``, replacing the file atomically; errors are ignored
        (the store's own failure handling reports a broken directory)."""
        path = os.path.join(self.directory, "state-" + name)
        temporary = "%s.%d.%d" % (path, os.getpid(), threading.get_ident())
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                file.write(value)
            os.replace(temporary, path)
        except OSError:
            pass

    def clear(self) -> int:
        """Forget everything; returns how many entries were removed."""
        if self._hot is not None:
            self._hot.clear()
        return int(self._call(lambda cache: cache.clear(), 0))

    def count(self) -> int:
        """Number of entries (kept by diskcache, not counted)."""
        return int(self._call(lambda cache: len(cache), 0))

    def volume(self) -> int:
        """Bytes used on disk."""
        return int(self._call(lambda cache: cache.volume(), 0))

    def close(self) -> None:
        """Release the files; later calls reopen nothing."""
        with self._lock:
            cache, self._cache, self._failed_at = self._cache, None, None
        if self._hot is not None:
            self._hot.clear()
        if cache is not None:
            cache.close()
