"""Hot entries kept in memory in front of the disk store.

Orthanc's Python plugin gives every REST callback a fresh Python thread
state, so diskcache opens a new SQLite connection for every request, and a
least-recently-used read is a write transaction: a read from disk costs
several times what the rest of a hit does (bench/HISTORY.md).
:class:`HotEntries` keeps the most recently used entries, decoded, in a
size-bounded dict, so that a hit touches no file.

It is a mirror of the disk store, never more: entries go in only once
written to disk, leave with them (delete, evict, clear), expire at the
same time, and everything is dropped when the disk store fails.  Entries
carry their version like on disk, so the controller's version check
applies unchanged.  The keys read from memory are remembered, so that the
disk store can update their access times in one batch
(:meth:`take_touched`) and keep its least-recently-used order right.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional, Set

from ..core.data import Entry


class _Kept(NamedTuple):
    entry: Entry
    tag: Optional[str]
    expires: float  # on the ``clock`` given to HotEntries
    size: int
    #: The decompressed body of a gzip entry, once a client that takes identity asked.
    identity: Optional[bytes] = None


class HotEntries:
    """A thread-safe, byte-bounded, least-recently-used map of key to :class:`Entry`."""

    def __init__(self, capacity: int, clock: Callable[[], float]):
        #: Bytes of bodies (plus a fixed overhead per entry) kept at most.
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Kept] = OrderedDict()
        self._by_tag: Dict[str, Set[str]] = {}
        self._touched: Set[str] = set()
        self.size = 0

    #: Bookkeeping bytes counted for each entry besides its body.
    OVERHEAD = 512

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Optional[Entry]:
        """The entry under ``key`` if kept and not expired; marks it recently used."""
        with self._lock:
            kept = self._entries.get(key)
            if kept is None:
                return None
            if kept.expires <= self._clock():
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            self._touched.add(key)
            return kept.entry

    def put(self, key: str, entry: Entry, tag: Optional[str], lifetime: float) -> None:
        """Keep ``entry`` (written to disk just before) for ``lifetime`` seconds at most;
        entries larger than an eighth of the capacity are not kept."""
        size = len(entry.body or b"") + self.OVERHEAD
        with self._lock:
            self._remove(key)
            if size > self.capacity // 8:
                return
            self._entries[key] = _Kept(entry, tag, self._clock() + lifetime, size)
            self.size += size
            if tag is not None:
                self._by_tag.setdefault(tag, set()).add(key)
            while self.size > self.capacity:
                self._remove(next(iter(self._entries)))

    def identity(self, key: str, body: bytes, decode: Callable[[bytes], bytes]) -> bytes:
        """``decode(body)``, the identity form of the gzip ``body`` kept under ``key``:
        decoded once and kept beside it (and counted in the size), so that clients
        that take identity cost no decompression per hit."""
        with self._lock:
            kept = self._entries.get(key)
            if kept is not None and kept.entry.body is body and kept.identity is not None:
                return kept.identity
        decoded = decode(body)
        with self._lock:
            kept = self._entries.get(key)
            if kept is not None and kept.entry.body is body and kept.identity is None \
                    and kept.size + len(decoded) <= self.capacity // 8:
                self._entries[key] = kept._replace(identity=decoded,
                                                   size=kept.size + len(decoded))
                self.size += len(decoded)
                while self.size > self.capacity:
                    self._remove(next(iter(self._entries)))
        return decoded

    def delete(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def evict(self, tag: str) -> None:
        """Drop every entry kept with ``tag``."""
        with self._lock:
            for key in list(self._by_tag.get(tag, ())):
                self._remove(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_tag.clear()
            self._touched.clear()
            self.size = 0

    def take_touched(self) -> List[str]:
        """The keys read since the last call (still kept), forgetting them."""
        with self._lock:
            touched = [key for key in self._touched if key in self._entries]
            self._touched.clear()
        return touched

    def _remove(self, key: str) -> None:
        kept = self._entries.pop(key, None)
        if kept is None:
            return
        self.size -= kept.size
        self._touched.discard(key)
        if kept.tag is not None:
            keys = self._by_tag.get(kept.tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[kept.tag]
