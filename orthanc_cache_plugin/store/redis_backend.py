"""The store's Redis part: entries in a Redis or Valkey server, every failure as "nothing".

:class:`RedisStore` is the storage contract (:class:`.backend.Backend`) on a
server, so that :class:`.facade.Store` (the memory front and the state
files) uses it as it uses the disk.  Its calls go through a
:class:`.redis_connection.RedisConnection`, which turns every error into the
operation's "nothing" (no value, not written, 0) with one warning per
failure episode, and reconnects a little later.  The owner hears of every
failure (``on_failure``): the memory front is emptied, so that it never
outlives a failing server.  :class:`RedisClaims` lets the nodes sharing the
server coalesce their misses (:attr:`.backend.Backend.claims`).

**Nothing stale after an outage.**  Every entry carries the version it was
computed at (``LastUpdate`` and the generations, :mod:`.freshness`), which
the controller compares with the current one (``policy.current``).  The
nodes sharing the server keep their generations in step through it
(:mod:`..cluster.bus`), and a node that cannot hear the others serves nothing
from the store until it has joined them again; changes it made meanwhile
are told through Orthanc's change log, then merged when it joins.  What an
outage may leave behind is harmless for the same reason: a write sent just
before the server paused and carried out when it resumes stores an answer
at the version it was computed for, an entry a node failed to delete is
refused by its version, and a server restarted from an old snapshot gives
back entries of older versions only, while the nodes publish their newer
generations when they join.  The memory front is emptied on the first
error and refilled only from entries read or written once the server works.

**Keys** (all under ``KeyPrefix``, so that several clusters or test and
production share a server without seeing each other's keys, and
:meth:`clear` removes only this prefix's keys):

* ``{prefix}e:{key}``: an entry: a one-line header (expiry time, tag
  length), the tag, the value; read with one ``GET``, written with the
  ``Expiration`` as its TTL (``PX``);
* ``{prefix}t:{tag}``: the set of keys stored with a tag (a resource id),
  for :meth:`evict`, with the TTL of its newest entry;
* ``{prefix}c:{digest}``: a node's claim to compute one key at one version
  (:meth:`RedisClaims.claim`), for ``LockTimeout`` at most;
* ``{prefix}g`` and the channel ``{prefix}changes``: the generations the
  nodes share (:mod:`..cluster.bus`);
* ``{prefix}i``, ``{prefix}s``, ``{prefix}b``: the plugin's own count of its
  entries (a sorted set of keys by expiry time), their sizes (a hash) and
  their total (a counter), kept by the same scripts that write and delete
  entries, so that :meth:`count` and :meth:`volume` (read for the metrics
  every 0.25 s) cost one small script a second, never a scan.  They are
  approximate: an entry that the server evicts for room (``maxmemory``) is
  counted until its TTL passes or its key is written again.

The scripts are Lua (``EVALSHA``), each atomic on the server; they name
keys they were not given, which a standalone server or a replicated one
(Sentinel) allows and Redis Cluster does not: the store needs one server.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from .backend import NOTHING, Found
from .redis_connection import RedisConnection, RedisOptions

__all__ = ["RedisClaims", "RedisOptions", "RedisStore"]

#: Writes an entry and its bookkeeping.  KEYS: entry, index, sizes, bytes[, tag set];
#: ARGV: value, TTL in ms ("0": none), expiry score, size, key.
_SET = """
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local old = tonumber(redis.call('HGET', KEYS[3], ARGV[5]) or '0')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[4])
redis.call('INCRBY', KEYS[4], tonumber(ARGV[4]) - old)
if #KEYS == 5 then
  redis.call('SADD', KEYS[5], ARGV[5])
  if ARGV[2] == '0' then
    redis.call('PERSIST', KEYS[5])
  else
    redis.call('PEXPIRE', KEYS[5], ARGV[2])
  end
end
return 1
"""

#: Forgets entries and their bookkeeping; returns how many entries went.
#: KEYS: index, sizes, bytes; ARGV: the entries' key prefix, then the keys.
_DELETE = """
local removed = 0
local freed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('DEL', ARGV[1] .. ARGV[i])
  freed = freed + tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
redis.call('DECRBY', KEYS[3], freed)
return removed
"""

#: Forgets the entries of a tag.  KEYS: tag set, index, sizes, bytes; ARGV: entries' prefix.
_EVICT = """
local members = redis.call('SMEMBERS', KEYS[1])
local removed = 0
local freed = 0
for _, key in ipairs(members) do
  removed = removed + redis.call('DEL', ARGV[1] .. key)
  freed = freed + tonumber(redis.call('HGET', KEYS[3], key) or '0')
  redis.call('ZREM', KEYS[2], key)
  redis.call('HDEL', KEYS[3], key)
end
redis.call('DECRBY', KEYS[4], freed)
redis.call('DEL', KEYS[1])
return removed
"""

#: Drops expired keys from the bookkeeping (a batch at a time); returns {count, bytes}.
#: KEYS: index, sizes, bytes; ARGV: now in ms, batch size.
_FIGURES = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
                           tonumber(ARGV[2]))
if #expired > 0 then
  local sizes = redis.call('HMGET', KEYS[2], unpack(expired))
  local freed = 0
  for _, size in ipairs(sizes) do
    if size then freed = freed + tonumber(size) end
  end
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[2], unpack(expired))
  redis.call('DECRBY', KEYS[3], freed)
end
return {redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""


#: Takes a claim for a holder unless another holds it.  KEYS: claim; ARGV: holder, ms.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: Gives a claim up if the holder still holds it.  KEYS: claim; ARGV: holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _glob_escaped(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\^" else char for char in text)


def _encode(value: bytes, expires_at: Optional[float], tag: Optional[str]) -> bytes:
    tag_bytes = (tag or "").encode("utf-8")
    milliseconds = 0 if expires_at is None else int(expires_at * 1000)
    # -1: no tag (an empty tag is a tag).
    header = b"%d %d\n" % (milliseconds, -1 if tag is None else len(tag_bytes))
    return header + tag_bytes + value


def _decode(stored: bytes) -> Found:
    """(value, expiry time, tag) of a stored entry; nothing if it is not one."""
    header, newline, rest = stored.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 2:
        return NOTHING
    try:
        milliseconds, tag_length = int(fields[0]), int(fields[1])
    except ValueError:
        return NOTHING
    if tag_length > len(rest):
        return NOTHING
    tag = None if tag_length < 0 else rest[:tag_length].decode("utf-8", "replace")
    expires = None if milliseconds == 0 else milliseconds / 1000
    return rest[max(tag_length, 0):], expires, tag


class _Scripts(NamedTuple):
    """The store's scripts, registered on each new client (``EVALSHA``, loaded on first use)."""

    write: Any
    delete: Any
    evict: Any
    figures: Any


class RedisStore:
    """Failure-tolerant store of raw values in a Redis or Valkey server, under one prefix
    (:class:`.backend.Backend`).

    Safe to call from several threads: the client's connection pool hands
    each call a connection of its own.
    """

    #: Seconds :meth:`count` and :meth:`volume` keep the figures they read.
    FIGURES_PERIOD = 1.0
    #: Expired keys dropped from the bookkeeping per reading of the figures.
    SWEEP_BATCH = 1000
    #: Keys per TOUCH of :meth:`touch`.
    TOUCH_BATCH = 1000
    #: Other nodes may share the server: see :attr:`.backend.Backend.shared_by_nodes`.
    shared_by_nodes = True

    def __init__(self, options: RedisOptions, warn: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[], None] = lambda: None,
                 retry_delay: Optional[float] = None):
        self.options = options
        self._clock = clock
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._scripts: Optional[_Scripts] = None
        self._figures: Optional[Tuple[float, int, int]] = None  # (read at, count, bytes)
        prefix = options.prefix
        self._entry_prefix = prefix + "e:"
        self._tag_prefix = prefix + "t:"
        self._bookkeeping = [prefix + "i", prefix + "s", prefix + "b"]
        #: The server's client, shared with :attr:`claims` and the cluster's bus.
        self.connection = RedisConnection(options, warn, clock, self._failed, retry_delay,
                                          self._prepare)
        self.claims = RedisClaims(self.connection, prefix + "c:")

    @property
    def location(self) -> str:
        """The server (its URL without the password) and the key prefix."""
        return self.connection.location

    @property
    def available(self) -> bool:
        """False while the server is failing (or the client is missing, or closed)."""
        return self.connection.available

    @property
    def failures(self) -> int:
        """Failures so far (each failed operation or attempt to reconnect)."""
        return self.connection.failures

    # -- operations: each returns its "nothing" when the server fails --------------------------

    def get(self, key: str) -> Found:
        """(value, expiry time, tag) under ``key``; (None, None, None) if absent or failing.

        The read also gives the key its access time for the server's LRU eviction."""
        stored = self.connection.call(lambda client: client.get(self._entry_prefix + key))
        return _decode(stored) if isinstance(stored, bytes) else NOTHING

    def set(self, key: str, value: bytes, expire: Optional[float], tag: Optional[str]) -> bool:
        """Write ``value`` under ``key`` for ``expire`` seconds (its TTL); False on failure."""
        expires_at = None if expire is None else time.time() + expire
        ttl = "0" if expire is None else str(max(1, int(expire * 1000)))
        score = "+inf" if expires_at is None else str(int(expires_at * 1000))
        keys = [self._entry_prefix + key] + self._bookkeeping
        if tag is not None:
            keys.append(self._tag_prefix + tag)
        arguments = [_encode(value, expires_at, tag), ttl, score, str(len(value)), key]
        return bool(self.connection.call(
            lambda client: self._script().write(keys, arguments, client), False))

    def evict(self, tag: str) -> int:
        """Drop every value stored with ``tag``; how many went (one script on the server)."""
        keys = [self._tag_prefix + tag] + self._bookkeeping
        return int(self.connection.call(
            lambda client: self._script().evict(keys, [self._entry_prefix], client), 0))

    def delete(self, key: str) -> None:
        self.connection.call(lambda client: self._script().delete(
            self._bookkeeping, [self._entry_prefix, key], client))

    def clear(self) -> int:
        """Remove every key of the prefix (entries, tags, bookkeeping); how many entries went.

        A scan of the server's keys (SCAN, a batch per call, each with the timeout)."""
        return int(self.connection.call(self._clear_all, 0))

    def count(self) -> int:
        """Number of entries the plugin wrote that have not expired (approximate: see the
        module's documentation); read at most once a :attr:`FIGURES_PERIOD`."""
        return self._read_figures()[0]

    def volume(self) -> int:
        """Bytes of the values of those entries (without Redis' own overhead)."""
        return self._read_figures()[1]

    def touch(self, keys: List[str]) -> None:
        """Give ``keys`` a new access time in the server's LRU (``TOUCH``), so that the
        entries read from the memory front are not the first it evicts for room."""
        def touch(client: Any) -> int:
            touched = 0
            for start in range(0, len(keys), self.TOUCH_BATCH):
                touched += client.touch(*[self._entry_prefix + key
                                          for key in keys[start:start + self.TOUCH_BATCH]])
            return touched

        if keys:
            self.connection.call(touch)

    def close_thread_connection(self) -> None:
        """Nothing to do: connections belong to the client's pool, not to threads, and are
        handed back after each call."""

    def close(self) -> None:
        """Disconnect; later calls reconnect nothing."""
        self.connection.close()

    # -- the connection's hooks, the scripts, the figures ----------------------------------------

    def _prepare(self, client: Any) -> None:
        """Register the scripts on a new client and try a write: the delete script with no
        key (DECRBY 0 of the byte count), so that a server that answers reads but refuses
        writes (full with noeviction: OOM; an ACL user without the scripts' commands:
        NOPERM) stays failing, one episode, rather than reconnecting and failing again at
        the next write (a "works again" and "failed" pair of warnings at every retry)."""
        scripts = _Scripts(*(client.register_script(source)
                             for source in (_SET, _DELETE, _EVICT, _FIGURES)))
        scripts.delete(self._bookkeeping, [self._entry_prefix], client)
        self._scripts = scripts

    def _script(self) -> _Scripts:
        """The scripts; registered before the first client is used, so always there in a
        call."""
        scripts = self._scripts
        assert scripts is not None
        return scripts

    def _failed(self) -> None:
        """The connection failed: figures read before say nothing of the server now."""
        with self._lock:
            self._figures = None
        self._on_failure()

    def _clear_all(self, client: Any) -> int:
        removed = 0
        pattern = _glob_escaped(self.options.prefix) + "*"
        entry_prefix = self._entry_prefix.encode("utf-8")
        cursor = 0
        while True:
            cursor, found = client.scan(cursor, match=pattern, count=1000)
            if found:
                client.unlink(*found)
                removed += sum(1 for key in found if key.startswith(entry_prefix))
            if int(cursor) == 0:
                break
        # Writes that came during the scan may have rebuilt the bookkeeping: start it afresh.
        client.unlink(*self._bookkeeping)
        with self._lock:
            self._figures = None
        return removed

    def _read_figures(self) -> Tuple[int, int]:
        figures = self._figures
        now = self._clock()
        if figures is not None and now - figures[0] < self.FIGURES_PERIOD:
            return figures[1], figures[2]
        read = self.connection.call(lambda client: self._script().figures(
            self._bookkeeping, [str(int(time.time() * 1000)), str(self.SWEEP_BATCH)], client))
        if not isinstance(read, list) or len(read) != 2:
            return 0, 0
        count, volume = int(read[0]), max(0, int(read[1] or 0))
        with self._lock:
            # Checked under the lock that _failed takes after the connection dropped its
            # client: figures read just before a failure are never kept after it.
            if self.connection.available:
                self._figures = (now, count, volume)
        return count, volume


class RedisClaims:
    """Claims on the server (:class:`.backend.Claims`): keys ``{prefix}c:{name}`` holding the
    process that took them, for at most the time asked."""

    def __init__(self, connection: RedisConnection, prefix: str):
        self._connection = connection
        self._prefix = prefix
        #: This process, as the holder of its claims.
        self.holder = os.urandom(8).hex()

    def claim(self, name: str, seconds: float) -> Optional[bool]:
        """Take the claim ``name`` for ``seconds`` unless another process holds it: True
        when taken, False when held by another, None when the server fails.

        A claim this process holds already is taken again: the caller leads the only
        local computation of that key (flights.py), so such a claim is one whose
        release failed (the server paused meanwhile); waiting for it to expire made a
        request wait until LockTimeout."""
        key = self._prefix + name
        milliseconds = str(max(1, int(seconds * 1000)))
        taken: Optional[bool] = self._connection.call(lambda client: bool(
            client.eval(_CLAIM, 1, key, self.holder, milliseconds)))
        return taken

    def claimed(self, name: str) -> Optional[bool]:
        """Whether the claim ``name`` is held; None when the server fails."""
        key = self._prefix + name
        held: Optional[bool] = self._connection.call(lambda client: bool(client.exists(key)))
        return held

    def release(self, name: str) -> None:
        """Give the claim ``name`` up, if this process still holds it."""
        key = self._prefix + name
        self._connection.call(lambda client: client.eval(_RELEASE, 1, key, self.holder))
