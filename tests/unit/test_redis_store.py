"""Unit tests of orthanc_cache_plugin.store.redis_backend, against a real redis-server.

Debian's ``redis-server`` (tests/support/redis_server.py) runs on loopback;
starting one takes a few milliseconds, so each failure test has its own.
The storage contract (store_contract.py: values with expiry and tag, byte
for byte, evict, claims, a stopped server as a failure episode) runs here as
:class:`TestRedisBackend`.  Covered besides: TTLs, prefixes that never see
each other's keys, the counts and their bytes; and each other failure
(server paused, full, wrong password, client missing): "nothing" within a
few timeouts, one warning per episode, recovery after the retry delay; and
the Store facade with its memory front emptied on failure.
"""

from __future__ import annotations

import builtins
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest
from store_contract import BackendContract, Fault, Opener

from orthanc_cache_plugin.core.data import Entry
from orthanc_cache_plugin.store.facade import Store
from orthanc_cache_plugin.store.redis_backend import RedisOptions, RedisStore
from orthanc_cache_plugin.store.redis_connection import RedisConnection
from support.clock import Clock
from support.redis_server import RedisServer

pytest.importorskip("redis")

#: RedisTimeout of the tests: 100 ms, the default.
TIMEOUT = 0.1
MB = 1024 * 1024


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own, to stop, pause or fill."""
    with RedisServer() as own:
        yield own


def open_store(server: RedisServer, warnings: List[str], clock: Clock, prefix: str = "test:",
               **kwargs: Any) -> RedisStore:
    return RedisStore(RedisOptions(server.url, prefix, TIMEOUT), warnings.append, clock, **kwargs)


@pytest.fixture
def redis(shared_server, warnings, clock, request) -> Iterator[RedisStore]:
    """A store on the shared server, under a prefix of the test's own."""
    opened = open_store(shared_server, warnings, clock, prefix=request.node.name + ":")
    yield opened
    opened.clear()
    opened.close()


def fresh_figures(store: RedisStore) -> RedisStore:
    store._figures = None  # read the counts now, not a second later
    return store


class ServerStopped(Fault):
    def __init__(self, server: RedisServer) -> None:
        self._server = server

    def cause(self) -> None:
        self._server.stop()

    def repair(self) -> None:
        self._server.start()  # empty, as after a restart without persistence


class TestRedisBackend(BackendContract):
    RETRY_DELAY = RedisConnection.RETRY_DELAY
    #: A few timeouts at most (a stopped server refuses at once).
    FAILING_CALL_SECONDS = 5 * TIMEOUT
    SHARED = True

    @pytest.fixture
    def open_backend(self, server, warnings, clock) -> Iterator[Opener]:
        opened: List[RedisStore] = []

        def open_redis(on_failure: Callable[[], None]) -> RedisStore:
            opened.append(open_store(server, warnings, clock, prefix="contract:",
                                     on_failure=on_failure))
            return opened[-1]

        yield open_redis
        for store in opened:
            store.close()

    @pytest.fixture
    def fault(self, server) -> ServerStopped:
        return ServerStopped(server)

    def count(self, backend: RedisStore) -> int:  # type: ignore[override]
        return fresh_figures(backend).count()


def test_the_expiration_is_the_keys_ttl(redis, shared_server):
    assert redis.set("short", b"x", 0.3, "t")
    ttl = int(shared_server.call("PTTL", redis.options.prefix + "e:short")[1:])
    assert 0 < ttl <= 300
    time.sleep(0.4)
    assert redis.get("short") == (None, None, None)
    assert fresh_figures(redis).count() == 0 and redis.volume() == 0


def test_counts_follow_replacements_and_deletions(redis):
    assert redis.set("k", b"1234", 60, None) and redis.set("k", b"12", 60, None)
    assert fresh_figures(redis).count() == 1 and redis.volume() == 2
    redis.delete("k")
    redis.delete("never stored")
    assert fresh_figures(redis).count() == 0 and redis.volume() == 0


def test_counts_are_read_at_most_once_a_period(redis, clock):
    assert redis.count() == 0
    redis.set("k", b"1", 60, None)
    assert redis.count() == 0  # within FIGURES_PERIOD: the figures read before
    clock.advance(RedisStore.FIGURES_PERIOD)
    assert redis.count() == 1


def test_two_prefixes_on_one_server_never_see_each_others_keys(shared_server, warnings, clock):
    first = open_store(shared_server, warnings, clock, prefix="cluster-a:")
    second = open_store(shared_server, warnings, clock, prefix="cluster-a:b:")  # a longer one
    third = open_store(shared_server, warnings, clock, prefix="[c]*:")  # glob characters
    try:
        for index, store in enumerate((first, second, third)):
            assert store.set("k", b"%d" % index, 60, "t")
            assert store.set("only-%d" % index, b"x", 60, None)
        assert [store.get("k")[0] for store in (first, second, third)] == [b"0", b"1", b"2"]
        assert first.get("only-1") == (None, None, None)
        assert first.evict("t") == 1 and second.get("k")[0] == b"1"
        assert third.clear() == 2
        assert [fresh_figures(store).count() for store in (first, second, third)] == [1, 2, 0]
        assert second.clear() == 2
        assert first.get("only-0")[0] == b"x"
        remaining = shared_server.keys("*")
        assert remaining and all(key.startswith(b"cluster-a:") for key in remaining)
        assert not any(key.startswith(b"cluster-a:b:") for key in remaining)
    finally:
        for store in (first, second, third):
            store.clear()
            store.close()


def test_reads_from_the_memory_front_touch_the_keys(redis, shared_server):
    redis.set("k", b"1", 60, None)
    key = redis.options.prefix + "e:k"
    shared_server.call("DEBUG", "SLEEP", "0")  # nothing; keeps the server warm
    time.sleep(1.1)
    assert int(shared_server.call("OBJECT", "IDLETIME", key)[1:]) >= 1
    redis.touch(["k", "absent"])
    assert int(shared_server.call("OBJECT", "IDLETIME", key)[1:]) == 0


def test_the_password_is_never_shown():
    options = RedisOptions("redis://user:secret@127.0.0.1:1/0", "p:", TIMEOUT)
    assert "secret" not in repr(options)
    store = RedisStore(options, lambda message: None)
    assert store.location == "redis://user:***@127.0.0.1:1/0 (keys p:*)"
    store.close()


# -- failures ----------------------------------------------------------------------------------


def check_failing(store: RedisStore) -> float:
    """Every operation gives its "nothing"; the longest one's duration."""
    longest = 0.0
    for operation, nothing in [(lambda: store.get("k"), (None, None, None)),
                               (lambda: store.set("k", b"v", 60, "t"), False),
                               (lambda: store.evict("t"), 0),
                               (lambda: store.delete("k"), None),
                               (lambda: store.clear(), 0),
                               (lambda: fresh_figures(store).count(), 0),
                               (lambda: store.volume(), 0),
                               (lambda: store.touch(["k"]), None)]:
        started = time.monotonic()
        assert operation() == nothing
        longest = max(longest, time.monotonic() - started)
    return longest


def failure_episode(server: RedisServer, warnings: List[str], clock: Clock, fault: Any,
                    repair: Any, first_failing: Any = None) -> None:
    """A working store, ``fault``, then every call gives nothing quickly with one warning;
    after ``repair`` and the retry delay, the store works again and says so."""
    forgotten: List[str] = []
    store = open_store(server, warnings, clock, on_failure=lambda: forgotten.append("x"))
    try:
        assert store.set("k", b"v", 60, "t") and store.get("k")[0] == b"v"
        fault()
        if first_failing is not None:
            assert first_failing(store)
        assert check_failing(store) < 5 * TIMEOUT
        assert not store.available and forgotten
        assert len(warnings) == 1 and "failed" in warnings[0], warnings
        clock.advance(RedisConnection.RETRY_DELAY - 0.1)
        assert store.get("k") == (None, None, None) and len(warnings) == 1
        repair()
        clock.advance(0.1)
        assert store.set("k", b"again", 60, None) is True
        assert store.available and store.get("k")[0] == b"again"
        assert warnings[1:] == ["cache store %s works again" % store.location]
    finally:
        store.close()


def test_a_paused_server_costs_a_timeout_not_a_hang(server, warnings, clock):
    failure_episode(server, warnings, clock, server.pause, server.resume)


def test_a_full_server(server, warnings, clock):
    server.config_set("maxmemory-policy", "noeviction")

    def fill() -> None:
        server.config_set("maxmemory", "1")  # below what it uses: every write is refused

    # Reads still work on a full server: the episode begins with the first refused write.
    failure_episode(server, warnings, clock, fill, lambda: server.config_set("maxmemory", "0"),
                    first_failing=lambda store: store.get("k")[0] == b"v"
                    and store.set("k2", b"v", 60, None) is False)
    assert "OutOfMemoryError" in warnings[0]


def test_a_full_server_is_one_episode_however_many_retries(server, warnings, clock):
    """Reads work on a full server: an attempt to reconnect that only PINGed succeeded, the
    next read said "works again" and the next write "failed" again, at every retry."""
    store = open_store(server, warnings, clock)
    server.config_set("maxmemory-policy", "noeviction")
    assert store.set("k", b"v", 60, None)
    server.config_set("maxmemory", "1")
    assert store.set("k2", b"v", 60, None) is False
    for delay in (5, 10, 20):
        clock.advance(delay)
        assert store.get("k") == (None, None, None)  # the attempt's write was refused
        assert store.set("k2", b"v", 60, None) is False and not store.available
    assert len(warnings) == 1 and "OutOfMemoryError" in warnings[0], warnings
    server.config_set("maxmemory", "0")
    clock.advance(40)
    assert store.set("k2", b"v", 60, None) is True
    assert warnings[1:] == ["cache store %s works again" % store.location]
    store.close()


def test_a_call_that_ends_after_a_concurrent_failure_does_not_end_the_episode(
        server, warnings, clock):
    """A call that began on the client a concurrent failure dropped used to log "works
    again" and close the episode with no client left: the store never retried."""
    store = open_store(server, warnings, clock)
    began, release = threading.Event(), threading.Event()

    def slow(client: Any) -> bytes:
        began.set()
        release.wait(5)
        return b"answered before the failure"

    caller = threading.Thread(target=store.connection.call, args=(slow,))
    caller.start()
    assert began.wait(5)
    server.stop()
    assert store.get("k") == (None, None, None) and not store.available
    release.set()
    caller.join(5)
    assert len(warnings) == 1 and "failed" in warnings[0], warnings
    server.start()
    clock.advance(RedisConnection.RETRY_DELAY)
    assert store.set("k", b"v", 60, None) is True and store.available
    assert warnings[1:] == ["cache store %s works again" % store.location]
    store.close()


def test_a_wrong_password(warnings, clock):
    with RedisServer(password="right") as server:
        wrong = RedisStore(RedisOptions(server.url.replace("right", "wrong"), "p:", TIMEOUT),
                           warnings.append, clock)
        assert check_failing(wrong) < 5 * TIMEOUT
        assert len(warnings) == 1 and "wrong" not in warnings[0] and "***" in warnings[0]
        right = RedisStore(RedisOptions(server.url, "p:", TIMEOUT), warnings.append, clock)
        assert right.set("k", b"v", 60, None) and right.get("k")[0] == b"v"
        wrong.close()
        right.close()


def test_an_unreachable_server_waits_longer_after_each_failed_attempt(server, warnings, clock):
    store = open_store(server, warnings, clock)
    server.stop()
    assert store.get("k") == (None, None, None)
    failures = store.failures
    for delay in (5, 10, 20, 40, 60, 60):
        clock.advance(delay - 0.01)
        store.get("k")
        assert store.failures == failures  # not yet
        clock.advance(0.01)
        store.get("k")
        assert store.failures == failures + 1  # one attempt, which failed
        failures += 1
    assert len(warnings) == 1
    server.start()
    clock.advance(60)
    assert store.set("k", b"v", 60, None) is True
    clock_after = clock.now
    server.stop()
    assert store.get("k") == (None, None, None)
    server.start()
    clock.now = clock_after + RedisConnection.RETRY_DELAY  # the delay starts afresh
    assert store.get("k")[0] is None and store.available
    store.close()


def test_without_the_client_the_store_is_unavailable_and_says_how_to_fix_it(
        shared_server, warnings, clock, monkeypatch):
    real_import = builtins.__import__

    def no_redis(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "redis" or name.startswith("redis."):
            raise ImportError("No module named 'redis'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_redis)
    store = open_store(shared_server, warnings, clock)
    assert check_failing(store) < TIMEOUT
    clock.advance(3600)
    assert store.get("k") == (None, None, None)
    assert len(warnings) == 1 and "pip install 'redis>=4.5'" in warnings[0]
    store.close()


# -- through the Store facade ------------------------------------------------------------------


def test_the_store_facade_with_its_memory_front(server, warnings, clock, tmp_path):
    store = Store(str(tmp_path / "state"), 64 * MB, 3600, warn=warnings.append, clock=clock,
                  memory=8 * MB, redis=RedisOptions(server.url, "facade:", TIMEOUT))
    try:
        assert store.location == "%s (keys facade:*)" % server.url
        entry = Entry("v1", "application/json", b"[1]")
        assert store.set("k", entry, tag="study") and store.get("k") == entry
        server.stop()
        # The memory front answers without Redis until a call fails...
        assert store.get("k") == entry
        assert store.set("other", entry) is False
        # ...which empties it: nothing is served that the server may no longer hold.
        assert store.get("k") is None and not store.available
        assert len(warnings) == 1
        store.set_value("generations", "kept")  # state files stay in the directory
        assert store.get_value("generations") == "kept"
        server.start()  # empty, as after a restart without persistence
        clock.advance(Store.RETRY_DELAY)
        assert store.get("k") is None and store.available
        assert store.set("k", entry, tag="study") and store.get("k") == entry
        store.record_accesses()
        assert store.evict("study") == 1 and store.get("k") is None
        assert store.clear() == 0 and store.count() == 0
        assert warnings[1:] == ["cache store %s works again" % store.location]
    finally:
        store.close()
