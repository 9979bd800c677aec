"""The store's Redis part: entries in a Redis or Valkey server, every failure as "nothing".

:class:`RedisStore` has the public surface of :class:`.disk.DiskStore`, so
that :class:`.store.Store` (the memory front and the state files) uses
either.  Like the disk store it turns every error into an operation's
"nothing" (no value, not written, 0): the caller asks Orthanc instead, so a
server that is stopped, unreachable, paused, full (``OOM``), refusing the
password or answering errors slows the API down by at most a few timeouts
but never breaks it.  Every call has the ``RedisTimeout`` (connect, send,
each wait for an answer) and the client never retries by itself.  A warning
is logged once per failure episode; while failing, nothing is sent to the
server; after :attr:`~RedisStore.RETRY_DELAY` seconds one attempt
reconnects (a ``PING``), and each attempt that fails doubles the delay up
to :attr:`~RedisStore.LONGEST_RETRY_DELAY`.  The first call that works again
logs so.  The owner hears of every failure (``on_failure``): the memory
front is emptied, so that it never outlives a failing server.

The ``redis`` client is imported when the store opens, not before: the
plugin runs without it when ``Backend`` is ``disk``.  With ``Backend``
``redis`` and no client installed, the store stays unavailable (requests go
to Orthanc, as with any failure) and says so once, with the fix.

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
  (:meth:`claim`), for ``LockTimeout`` at most;
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

**Calls run on threads of this module** (:attr:`RedisStore.WORKERS`), never on
the Orthanc thread that serves the request.  Python 3.14 leaves code that
runs on Orthanc's HTTP threads a C stack of a few hundred levels (measured in
Orthanc 1.13.0 with plugin 7.1: 264 levels of C recursion, against some
58,000 on a thread that Python started), and the client goes deeper: every
call failed with ``RecursionError`` (docs/reliability.md).  The hop costs
tens of microseconds against a round trip of about 250.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

from ..core.settings import mask_url
from .disk import Found
from .episodes import FailureEpisode

_NOTHING: Found = (None, None, None)

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


@dataclass(frozen=True)
class RedisOptions:
    """Where and how to reach the server: the settings RedisUrl, KeyPrefix, RedisTimeout."""

    url: str = field(repr=False)  # may hold a password
    prefix: str
    #: Seconds any call may take (connecting, sending, each wait for an answer).
    timeout: float


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
        return _NOTHING
    try:
        milliseconds, tag_length = int(fields[0]), int(fields[1])
    except ValueError:
        return _NOTHING
    if tag_length > len(rest):
        return _NOTHING
    tag = None if tag_length < 0 else rest[:tag_length].decode("utf-8", "replace")
    expires = None if milliseconds == 0 else milliseconds / 1000
    return rest[max(tag_length, 0):], expires, tag


class RedisStore:
    """Failure-tolerant store of raw values in a Redis or Valkey server, under one prefix.

    Safe to call from several threads: the client's connection pool hands
    each call a connection of its own.
    """

    #: Seconds before the first attempt to reconnect to a server that failed.
    RETRY_DELAY = 5.0
    #: Longest delay between attempts (each failed attempt doubles the delay).
    LONGEST_RETRY_DELAY = 60.0
    #: Seconds :meth:`count` and :meth:`volume` keep the figures they read.
    FIGURES_PERIOD = 1.0
    #: Expired keys dropped from the bookkeeping per reading of the figures.
    SWEEP_BATCH = 1000
    #: Keys per TOUCH of :meth:`update_access_times`.
    TOUCH_BATCH = 1000
    #: Threads that make the calls (see the module's documentation): as many calls at a
    #: time; more wait their turn (each call is bounded by the timeout).
    WORKERS = 8

    def __init__(self, options: RedisOptions, warn: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[], None] = lambda: None,
                 retry_delay: Optional[float] = None):
        self.options = options
        #: What logs and statistics name the store by (the URL without its password).
        self.directory = "%s (keys %s*)" % (mask_url(options.url), options.prefix)
        self._warn = warn
        self._clock = clock
        self._on_failure = on_failure
        self._episode = FailureEpisode(
            "cache store %s" % self.directory, warn, clock,
            self.RETRY_DELAY if retry_delay is None else retry_delay, self.LONGEST_RETRY_DELAY)
        self._lock = threading.Lock()
        self._client: Any = None
        self._scripts: Any = None
        self._closed = False
        self._figures: Optional[Tuple[float, int, int]] = None  # (read at, count, bytes)
        prefix = options.prefix
        self._entry_prefix = prefix + "e:"
        self._tag_prefix = prefix + "t:"
        self._claim_prefix = prefix + "c:"
        #: This process, as the holder of its claims.
        self.holder = os.urandom(8).hex()
        self._bookkeeping = [prefix + "i", prefix + "s", prefix + "b"]
        self._workers = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="cache-redis")
        self._open(retrying=False)

    @property
    def available(self) -> bool:
        """False while the server is failing (or the client is missing, or closed)."""
        return self._client is not None

    @property
    def failures(self) -> int:
        """Failures so far (each failed operation or attempt to reconnect)."""
        return self._episode.failures

    # -- operations: each returns its "nothing" when the server fails --------------------------

    def get(self, key: str) -> Found:
        """(value, expiry time, tag) under ``key``; (None, None, None) if absent or failing.

        The read also gives the key its access time for the server's LRU eviction."""
        stored = self._call(lambda client: client.get(self._entry_prefix + key))
        return _decode(stored) if isinstance(stored, bytes) else _NOTHING

    def set(self, key: str, value: bytes, expire: Optional[float], tag: Optional[str]) -> bool:
        """Write ``value`` under ``key`` for ``expire`` seconds (its TTL); False on failure."""
        expires_at = None if expire is None else time.time() + expire
        ttl = "0" if expire is None else str(max(1, int(expire * 1000)))
        score = "+inf" if expires_at is None else str(int(expires_at * 1000))
        keys = [self._entry_prefix + key] + self._bookkeeping
        if tag is not None:
            keys.append(self._tag_prefix + tag)
        arguments = [_encode(value, expires_at, tag), ttl, score, str(len(value)), key]
        return bool(self._call(lambda client: self._scripts[0](keys, arguments, client), False))

    def evict(self, tag: str) -> int:
        """Drop every value stored with ``tag``; how many went (one script on the server)."""
        keys = [self._tag_prefix + tag] + self._bookkeeping
        return int(self._call(
            lambda client: self._scripts[2](keys, [self._entry_prefix], client), 0))

    def delete(self, key: str) -> None:
        self._call(lambda client: self._scripts[1](self._bookkeeping, [self._entry_prefix, key],
                                                   client))

    def clear(self) -> int:
        """Remove every key of the prefix (entries, tags, bookkeeping); how many entries went.

        A scan of the server's keys (SCAN, a batch per call, each with the timeout)."""
        return int(self._call(self._clear_all, 0))

    def count(self) -> int:
        """Number of entries the plugin wrote that have not expired (approximate: see the
        module's documentation); read at most once a :attr:`FIGURES_PERIOD`."""
        return self._read_figures()[0]

    def volume(self) -> int:
        """Bytes of the values of those entries (without Redis' own overhead)."""
        return self._read_figures()[1]

    def update_access_times(self, keys: List[str], when: float) -> None:
        """Give ``keys`` a new access time in the server's LRU (``TOUCH``), so that the
        entries read from the memory front are not the first it evicts for room.

        ``when`` is ignored: the server dates the touch itself."""
        def touch(client: Any) -> int:
            touched = 0
            for start in range(0, len(keys), self.TOUCH_BATCH):
                touched += client.touch(*[self._entry_prefix + key
                                          for key in keys[start:start + self.TOUCH_BATCH]])
            return touched

        if keys:
            self._call(touch)

    def claim(self, name: str, seconds: float) -> Optional[bool]:
        """Take the claim ``name`` for ``seconds`` unless another process holds it: True
        when taken, False when held by another, None when the server fails.

        A claim this process holds already is taken again: the caller leads the only
        local computation of that key (flights.py), so such a claim is one whose
        release failed (the server paused meanwhile); waiting for it to expire made a
        request wait until LockTimeout."""
        key = self._claim_prefix + name
        milliseconds = str(max(1, int(seconds * 1000)))
        taken: Optional[bool] = self._call(lambda client: bool(
            client.eval(_CLAIM, 1, key, self.holder, milliseconds)))
        return taken

    def claimed(self, name: str) -> Optional[bool]:
        """Whether the claim ``name`` is held; None when the server fails."""
        key = self._claim_prefix + name
        held: Optional[bool] = self._call(lambda client: bool(client.exists(key)))
        return held

    def release(self, name: str) -> None:
        """Give the claim ``name`` up, if this process still holds it."""
        key = self._claim_prefix + name
        self._call(lambda client: client.eval(_RELEASE, 1, key, self.holder))

    def close_thread_connection(self) -> None:
        """Nothing to do: connections belong to the client's pool, not to threads, and are
        handed back after each call."""

    def close(self) -> None:
        """Disconnect; later calls reconnect nothing."""
        with self._lock:
            client, self._client, self._closed = self._client, None, True
            self._episode.stop()
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        self._workers.shutdown(wait=False)

    # -- failures and reconnecting ---------------------------------------------------------------

    def _open(self, retrying: bool) -> None:
        try:
            self._workers.submit(self._connect, retrying).result()
        except RuntimeError:  # closed meanwhile: the workers take nothing more
            pass

    def _connect(self, retrying: bool) -> None:
        try:
            import redis  # noqa: F401  (new_client imports it again: here to say it is missing)
        except ImportError as error:
            self._episode.counted()
            self._warn("cache store %s unavailable: the redis client is not installed "
                       "(%s); install orthanc-cache-plugin[redis] in the Python that Orthanc "
                       "embeds. Requests go to Orthanc" % (self.directory, error))
            return  # not retried: the client does not appear while Orthanc runs
        client = None
        try:
            client = self.new_client(self.options.timeout)
            client.ping()
            scripts = tuple(client.register_script(source)
                            for source in (_SET, _DELETE, _EVICT, _FIGURES))
            # A write too (the delete script with no key: DECRBY 0 of the byte count), so
            # that a server that answers reads but refuses writes (full with noeviction:
            # OOM; an ACL user without the scripts' commands: NOPERM) stays failing, one
            # episode, rather than reconnecting and failing again at the next write (a
            # "works again" and "failed" pair of warnings at every retry).
            scripts[1](self._bookkeeping, [self._entry_prefix], client)
        except Exception as error:  # ConnectionError, TimeoutError, AuthenticationError...
            if client is not None:
                _quietly_close(client)
            self._fail(error)
            if retrying:
                self._episode.backoff()
            return
        with self._lock:
            if self._closed:
                _quietly_close(client)
                return
            self._scripts, self._client = scripts, client

    def new_client(self, timeout: float) -> Any:
        """A client of the server with ``timeout`` on every call and no retries (from
        redis-py 6 the client retries 3 times with backoff): a failure is the caller's to
        handle, at once.  Raises ImportError without the client."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            self.options.url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
            client_name="orthanc-cache-plugin")

    def call(self, action: Callable[[Any], Any], default: Any = None) -> Any:
        """``action(client)`` on one of the store's threads, with its failure handling:
        ``default`` when the server fails or is known to be failing."""
        return self._call(action, default)

    def call_soon(self, action: Callable[[Any], Any]) -> bool:
        """``action(client)`` on one of the store's threads, without waiting for it; its
        failure is handled as :meth:`call`'s.  False when it was not sent (the server
        is failing, or the store closed)."""
        client = self._usable()
        if client is None:
            return False

        def done(future: Any) -> None:
            error = future.exception()
            if error is not None:
                self._fail(error, client)

        try:
            self._workers.submit(action, client).add_done_callback(done)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    def _fail(self, error: BaseException, client: Any = None) -> None:
        with self._lock:
            if client is not None and self._client is not None and client is not self._client:
                # A call on a client already replaced by a reconnection: it says nothing of
                # the new one, which must not be dropped (nor a new episode begun).
                self._episode.counted()
                return
            broken, self._client = self._client, None
            self._figures = None
        self._on_failure()
        if broken is not None:
            _quietly_close(broken)
        self._episode.failed("%s: %s" % (type(error).__name__, error))

    def _usable(self) -> Any:
        if self._client is None and self._episode.failing:
            with self._lock:
                # One attempt at a time: the others find the store still failing.
                retry = self._client is None and self._episode.retry_due()
            if retry:
                self._open(retrying=True)
        return self._client

    def _call(self, action: Callable[[Any], Any], default: Any = None) -> Any:
        client = self._usable()
        if client is None:
            return default
        try:
            result = self._workers.submit(action, client).result()
        except Exception as error:
            self._fail(error, client)
            return default
        if self._episode.failing:
            # Only a call on the current client ends an episode: one that began before
            # a concurrent call failed (the client is gone) says nothing, and ending the
            # episode then left the store without client and without retries for good.
            self._episode.works(lambda: self._client is client)
        return result

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
        read = self._call(lambda client: self._scripts[3](
            self._bookkeeping, [str(int(time.time() * 1000)), str(self.SWEEP_BATCH)], client))
        if not isinstance(read, list) or len(read) != 2:
            return 0, 0
        count, volume = int(read[0]), max(0, int(read[1] or 0))
        with self._lock:
            if self._client is not None:
                self._figures = (now, count, volume)
        return count, volume


def _quietly_close(client: Any) -> None:
    try:
        client.close()
    except Exception:
        pass
