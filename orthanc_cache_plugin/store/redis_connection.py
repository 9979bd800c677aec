"""The connection to a Redis or Valkey server: one client, its worker threads, its failures.

:class:`RedisConnection` is what every user of the server shares: the
entries (:class:`.redis_backend.RedisStore`), the claims
(:class:`.redis_backend.RedisClaims`) and the bus of the cluster
(:mod:`..cluster.bus`, through :attr:`.facade.Store.shared_connection`).
It turns every error into the caller's "nothing": a server that is stopped,
unreachable, paused, full (``OOM``), refusing the password or answering
errors slows the API down by at most a few timeouts but never breaks it.
Every call has the ``RedisTimeout`` (connect, send, each wait for an answer)
and the client never retries by itself.  A warning is logged once per
failure episode (:mod:`.episodes`); while failing, nothing is sent to the
server; after :attr:`~RedisConnection.RETRY_DELAY` seconds one attempt
reconnects (a ``PING`` and the owner's ``prepare``), and each attempt that
fails doubles the delay up to :attr:`~RedisConnection.LONGEST_RETRY_DELAY`.
The first call that works again logs so.  The owner hears of every failure
(``on_failure``).

The ``redis`` client is imported when the connection opens, not before:
the plugin runs without it when ``Backend`` is ``disk``.  With ``Backend``
``redis`` and no client installed, the connection stays unavailable
(requests go to Orthanc, as with any failure) and says so once, with the fix.

**Calls run on threads of this module** (:attr:`RedisConnection.WORKERS`),
never on the Orthanc thread that serves the request.  Python 3.14 leaves
code that runs on Orthanc's HTTP threads a C stack of a few hundred levels
(measured in Orthanc 1.13.0 with plugin 7.1: 264 levels of C recursion,
against some 58,000 on a thread that Python started), and the client goes
deeper: every call failed with ``RecursionError`` (docs/reliability.md).
The hop costs tens of microseconds against a round trip of about 250.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..core.settings import mask_url
from .episodes import FailureEpisode


@dataclass(frozen=True)
class RedisOptions:
    """Where and how to reach the server: the settings RedisUrl, KeyPrefix, RedisTimeout."""

    url: str = field(repr=False)  # may hold a password
    prefix: str
    #: Seconds any call may take (connecting, sending, each wait for an answer).
    timeout: float


class RedisConnection:
    """A failure-tolerant client of one server, shared by the store, the claims and the bus.

    Safe to call from several threads: the client's connection pool hands
    each call a connection of its own.  ``prepare(client)`` runs on every new
    client before it is used (the store registers its scripts and tries a
    write there); when it raises, the client is not used and the attempt failed.
    """

    #: Seconds before the first attempt to reconnect to a server that failed.
    RETRY_DELAY = 5.0
    #: Longest delay between attempts (each failed attempt doubles the delay).
    LONGEST_RETRY_DELAY = 60.0
    #: Threads that make the calls (see the module's documentation): as many calls at a
    #: time; more wait their turn (each call is bounded by the timeout).
    WORKERS = 8

    def __init__(self, options: RedisOptions, warn: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[], None] = lambda: None,
                 retry_delay: Optional[float] = None,
                 prepare: Callable[[Any], None] = lambda client: None):
        self.options = options
        #: What logs and statistics name the server by (the URL without its password).
        self.location = "%s (keys %s*)" % (mask_url(options.url), options.prefix)
        self._warn = warn
        self._on_failure = on_failure
        self._prepare = prepare
        self._episode = FailureEpisode(
            "cache store %s" % self.location, warn, clock,
            self.RETRY_DELAY if retry_delay is None else retry_delay, self.LONGEST_RETRY_DELAY)
        self._lock = threading.Lock()
        self._client: Any = None
        self._closed = False
        self._workers = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="cache-redis")
        self._open(retrying=False)

    @property
    def available(self) -> bool:
        """False while the server is failing (or the client is missing, or closed)."""
        return self._client is not None

    @property
    def failures(self) -> int:
        """Failures so far (each failed call or attempt to reconnect)."""
        return self._episode.failures

    def call(self, action: Callable[[Any], Any], default: Any = None) -> Any:
        """``action(client)`` on one of the connection's threads: its result, or ``default``
        when the server fails or is known to be failing."""
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

    def call_soon(self, action: Callable[[Any], Any]) -> bool:
        """``action(client)`` on one of the connection's threads, without waiting for it;
        its failure is handled as :meth:`call`'s.  False when it was not sent (the server
        is failing, or the connection closed)."""
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

    def close(self) -> None:
        """Disconnect; later calls reconnect nothing."""
        with self._lock:
            client, self._client, self._closed = self._client, None, True
            self._episode.stop()
        if client is not None:
            _quietly_close(client)
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
                       "(%s); install redis (pip install 'redis>=4.5', or the plugin with its "
                       "[redis] extra) in the Python that Orthanc embeds. Requests go to "
                       "Orthanc" % (self.location, error))
            return  # not retried: the client does not appear while Orthanc runs
        client = None
        try:
            client = self.new_client(self.options.timeout)
            client.ping()
            self._prepare(client)
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
            self._client = client

    def _fail(self, error: BaseException, client: Any = None) -> None:
        with self._lock:
            if client is not None and self._client is not None and client is not self._client:
                # A call on a client already replaced by a reconnection: it says nothing of
                # the new one, which must not be dropped (nor a new episode begun).
                self._episode.counted()
                return
            broken, self._client = self._client, None
        self._on_failure()
        if broken is not None:
            _quietly_close(broken)
        self._episode.failed("%s: %s" % (type(error).__name__, error))

    def _usable(self) -> Any:
        if self._client is None and self._episode.failing:
            with self._lock:
                # One attempt at a time: the others find the server still failing.
                retry = self._client is None and self._episode.retry_due()
            if retry:
                self._open(retrying=True)
        return self._client


def _quietly_close(client: Any) -> None:
    try:
        client.close()
    except Exception:
        pass
