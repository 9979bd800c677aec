"""The server-side store: stored answers on disk, behind get / set / delete.

An entry (:class:`.data.Entry`) is one stored answer (or only its validators)
with the version of the resource it was computed from.  :class:`Store` is
the facade the rest of the plugin uses; it combines

* the disk (:class:`.disk.DiskStore`): one ``diskcache.Cache`` (SQLite
  index plus files, size-limited, LRU eviction, per-entry expiry) that turns
  every failure of the disk into "no entry": the caller then asks Orthanc, so
  a broken store slows the API down but never breaks it.  A warning is
  logged once per failure episode, and the disk reopens itself a little later;
* the entries kept decoded in memory in front of it
  (:class:`.memory.HotEntries`), a mirror of the disk kept in sync here;
* small named strings in files beside the entries (:class:`.state_files.StateFiles`).

With ``redis`` options (the setting ``Backend: redis``), a Redis or Valkey
server (:class:`.redis_backend.RedisStore`, the same contract,
:class:`.backend.Backend`, and the same failure handling) takes the disk's
place; the memory front mirrors it as it mirrors the disk, and the state
files stay in ``directory``: they belong to the node.  What a server shared
by nodes adds is named, not found by the type of the backend:
:attr:`Store.claims`, :attr:`Store.shared_by_nodes` and
:attr:`Store.shared_connection` (for the cluster's bus).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

from .. import __version__
from ..core.data import FORMAT, Entry
from ..http.encoding import decompress
from .backend import Backend, Claims
from .disk import DiskStore
from .memory import HotEntries
from .redis_backend import RedisOptions, RedisStore
from .redis_connection import RedisConnection
from .state_files import StateFiles

#: The small value (Store.get_value) naming what computed the stored answers.
COMPUTED_BY = "computed-by"


def computed_by(orthanc_version: str) -> str:
    """What shapes every stored answer: Orthanc's version (its output formats change
    between versions), this plugin's version and the store's FORMAT."""
    return "orthanc %s, plugin %s, format %d" % (orthanc_version, __version__, FORMAT)


def _inflate(body: bytes) -> bytes:
    # The store's own entries (checked by their CRC-32): no bound but Python's.
    return decompress(body, _LARGEST_BODY)


#: Larger than any answer the store keeps (MaximumEntrySize is at most an eighth of
#: MaximumSize).
_LARGEST_BODY = 1 << 40


class Store:
    """Failure-tolerant, size-limited store of :class:`Entry` objects.

    Opened once per process; every method is safe to call from several
    threads (diskcache opens one SQLite connection per thread).  With a
    ``memory`` size, the most recently used entries are also kept decoded in
    memory (:class:`~.memory.HotEntries`) and read from there.
    """

    #: Seconds before the first attempt to reopen a store that failed (given to the backend).
    RETRY_DELAY = DiskStore.RETRY_DELAY
    #: Bytes of write-ahead log SQLite keeps after a checkpoint (given to the disk part).
    JOURNAL_SIZE_LIMIT = DiskStore.JOURNAL_SIZE_LIMIT

    def __init__(self, directory: str, size_limit: int, expiration: int,
                 warn: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 memory: int = 0, redis: Optional[RedisOptions] = None):
        self.directory = directory
        #: Expiry times are compared with diskcache's own (wall clock).
        self._hot = HotEntries(memory, time.time) if memory > 0 else None
        self._expiration = expiration
        self._state = StateFiles(directory)
        self._backend: Backend
        #: The server's connection, when other nodes may share it (the cluster's bus
        #: uses it); None for the disk.
        self.shared_connection: Optional[RedisConnection] = None
        if redis is None:
            self._backend = DiskStore(directory, size_limit, warn, clock,
                                      on_failure=self._forget_memory,
                                      retry_delay=self.RETRY_DELAY,
                                      journal_size_limit=self.JOURNAL_SIZE_LIMIT)
        else:
            # diskcache makes the directory for the disk store; the state files need it
            # too (a node that cannot keep its generations starts afresh at each restart).
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as error:
                warn("cannot make %s for the state files (%s)" % (directory, error))
            # The size bound is the server's (maxmemory): see docs/deployment.md.
            server = RedisStore(redis, warn, clock, on_failure=self._forget_memory,
                                retry_delay=self.RETRY_DELAY)
            self._backend, self.shared_connection = server, server.connection
        #: Claims that coalesce misses across the nodes sharing the store; None for one
        #: node's store.
        self.claims: Optional[Claims] = self._backend.claims
        #: Whether other nodes read and write the same entries (a plain attribute: read on
        #: hits from memory).
        self.shared_by_nodes = self._backend.shared_by_nodes

    @property
    def location(self) -> str:
        """Where the entries are: the directory, or the Redis server (without password)
        and the key prefix."""
        return self._backend.location

    @property
    def available(self) -> bool:
        """False while the store is failing (requests then bypass it)."""
        return self._backend.available

    @property
    def failures(self) -> int:
        """How many times the backend failed (operations and attempts to reopen)."""
        return self._backend.failures

    def _forget_memory(self) -> None:
        """The memory mirrors a working disk store, never more: a failing disk empties it."""
        if self._hot is not None:
            self._hot.clear()

    def get(self, key: str, wanted: Optional[str] = None) -> Optional[Entry]:
        """The entry stored under ``key``; None if absent, unreadable or the store fails.

        ``wanted`` is the version the caller can use: with a shared store, an entry in
        memory at another version is read again from the server, where another node
        may have stored the wanted one (the memory mirrors what this node saw)."""
        if self._hot is not None:
            entry = self._hot.get(key)
            if entry is not None and (wanted is None or entry.version == wanted
                                      or not self.shared_by_nodes):
                return entry
        raw, expires, tag = self._backend.get(key)
        if raw is None:
            return None
        entry = Entry.decode(raw)
        if entry is None:  # written by another plugin version, or damaged
            self.delete(key)
        elif self._hot is not None and self._backend.available:
            lifetime = self._expiration if expires is None else expires - time.time()
            self._hot.put(key, entry, tag, lifetime)
        return entry

    def set(self, key: str, entry: Entry, tag: Optional[str] = None) -> bool:
        """Store ``entry`` under ``key`` (replacing any older version); False on failure.

        ``tag`` (a resource id) lets :meth:`evict` drop every entry of a resource.
        """
        if self._hot is not None:
            self._hot.delete(key)
        written = self._backend.set(key, entry.encode(), self._expiration, tag)
        if written and self._hot is not None:
            self._hot.put(key, entry, tag, self._expiration)
        return written

    def identity_body(self, key: str, body: bytes) -> bytes:
        """The identity form of ``body``, the gzip body of the entry under ``key``: kept in
        memory beside the entry once decoded, when the entry is kept there."""
        if self._hot is not None:
            return self._hot.identity(key, body, _inflate)
        return _inflate(body)

    def evict(self, tag: str) -> int:
        """Drop every entry stored with ``tag``; how many went (an indexed query)."""
        if self._hot is not None:
            self._hot.evict(tag)
        return self._backend.evict(tag)

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        if self._hot is not None:
            self._hot.delete(key)
        self._backend.delete(key)

    def close_thread_connection(self) -> None:
        """Close the SQLite connection of the calling thread, if it opened one.

        Called when a REST callback ends: the next request then opens a new
        connection, which notices a store deleted or damaged on disk (an open
        connection keeps working on an unlinked or overwritten file)."""
        self._backend.close_thread_connection()

    def record_accesses(self) -> None:
        """Give the entries read from memory their access time on disk, in one transaction,
        so that the disk's least-recently-used eviction spares them.  Called periodically."""
        touched = self._hot.take_touched() if self._hot is not None else []
        if touched:
            self._backend.touch(touched)

    def get_value(self, name: str) -> Optional[str]:
        """A small named string kept in a file beside the entries; None if absent."""
        return self._state.get(name)

    def set_value(self, name: str, value: str) -> None:
        """Keep ``value`` under ``name``, replacing the file atomically; errors are ignored
        (the store's own failure handling reports a broken directory)."""
        self._state.set(name, value)

    def clear(self) -> int:
        """Forget everything; returns how many entries were removed (the small named
        values stay)."""
        if self._hot is not None:
            self._hot.clear()
        return self._backend.clear()

    def count(self) -> int:
        """Number of entries (kept by diskcache, not counted)."""
        return self._backend.count()

    def volume(self) -> int:
        """Bytes used on disk."""
        return self._backend.volume()

    def close(self) -> None:
        """Release the files; later calls reopen nothing."""
        self._backend.close()
        self._forget_memory()
