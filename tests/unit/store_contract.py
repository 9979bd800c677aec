"""The storage contract's tests (store/backend.py), which every backend must pass.

:class:`BackendContract` holds the behaviour the facade relies on, whatever
the backend: values with their expiry and tag, byte for byte; evict by tag;
counts; touch; claims exactly when shared by nodes; and failures as
"nothing" within a bounded time, one warning per episode, the owner told,
no attempt before the retry delay, works again (and says so) once repaired.
Each backend's test file subclasses it (``TestDiskBackend`` in
test_disk.py, ``TestRedisBackend`` in test_redis_store.py, as requests-cache
does with its base_storage_test.py) and provides the fixtures below; its
own file keeps what only it does (a damaged database, a paused server...).
The base class is not collected itself (its name does not start with Test).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, List

import pytest

from orthanc_cache_plugin.store.backend import NOTHING, Backend
from support.clock import Clock

#: Opens a backend of the subclass's kind, telling ``on_failure``; closed after the test.
Opener = Callable[[Callable[[], None]], Backend]


class Fault:
    """A fault a subclass can cause in its backend's resource, and its repair."""

    def cause(self) -> None:
        raise NotImplementedError

    def repair(self) -> None:
        raise NotImplementedError


class BackendContract:
    """What every :class:`~orthanc_cache_plugin.store.backend.Backend` does.

    Subclasses provide the fixtures ``open_backend`` (an :data:`Opener` on the
    ``warnings`` and ``clock`` fixtures) and ``fault`` (a :class:`Fault`), and set
    the class attributes below.
    """

    #: The backend's delay before its first attempt to reopen.
    RETRY_DELAY: float
    #: Seconds an operation may take while the backend fails.
    FAILING_CALL_SECONDS: float
    #: Whether other nodes share the values (and so there are claims).
    SHARED: bool

    @pytest.fixture
    def open_backend(self) -> Iterator[Opener]:
        raise NotImplementedError

    @pytest.fixture
    def fault(self) -> Iterator[Fault]:
        raise NotImplementedError

    @pytest.fixture
    def backend(self, open_backend: Opener) -> Backend:
        return open_backend(lambda: None)

    def count(self, backend: Backend) -> int:
        """The backend's count as it is now (a subclass whose count is kept for a while
        reads it afresh)."""
        return backend.count()

    # -- values ------------------------------------------------------------------------------

    def test_values_come_back_with_their_expiry_and_tag(self, backend: Backend,
                                                         warnings: List[str]) -> None:
        before = time.time()
        assert backend.set("k", b"value", 60, "study") is True
        assert backend.set("forever", b"other", None, None) is True
        assert backend.set("empty", b"", 60, "") is True
        value, expires, tag = backend.get("k")
        assert (value, tag) == (b"value", "study")
        assert expires is not None and before + 60 - 0.01 <= expires <= time.time() + 60
        assert backend.get("forever") == (b"other", None, None)
        assert backend.get("empty")[0::2] == (b"", "")
        assert backend.get("absent") == NOTHING
        assert backend.available and warnings == []

    def test_binary_values_and_odd_keys_are_kept_byte_for_byte(self, backend: Backend) -> None:
        body = bytes(range(256)) * 1000 + b"\n1 2\n"
        key = "/instances/x/frames/0/raw?a=b c&d=\u00e9\n*"
        assert backend.set(key, body, 60, "tag\nwith newline") is True
        assert backend.get(key) == (body, pytest.approx(time.time() + 60, abs=1),
                                    "tag\nwith newline")

    def test_a_value_is_replaced(self, backend: Backend) -> None:
        assert backend.set("k", b"first", 60, "t") and backend.set("k", b"second", None, "t")
        assert backend.get("k") == (b"second", None, "t")
        assert self.count(backend) == 1

    def test_evict_drops_the_tags_values_only(self, backend: Backend) -> None:
        for key in ("a", "b", "c"):
            assert backend.set(key, b"12345", 60, "study")
        assert backend.set("other", b"1", 60, "series")
        assert backend.set("untagged", b"2", 60, None)
        assert self.count(backend) == 5 and backend.volume() > 0
        assert backend.evict("study") == 3
        assert [backend.get(key)[0] for key in ("a", "b", "c", "other", "untagged")] == \
            [None, None, None, b"1", b"2"]
        assert self.count(backend) == 2
        assert backend.evict("study") == 0 and backend.evict("never used") == 0

    def test_delete_and_clear(self, backend: Backend) -> None:
        for key in ("a", "b", "c"):
            assert backend.set(key, b"x", 60, None)
        backend.delete("a")
        backend.delete("never stored")
        assert backend.get("a") == NOTHING and self.count(backend) == 2
        assert backend.clear() == 2
        assert backend.get("b") == NOTHING and self.count(backend) == 0
        assert backend.clear() == 0

    def test_touch_keeps_the_values(self, backend: Backend, warnings: List[str]) -> None:
        assert backend.set("k", b"x", 60, "t")
        backend.touch(["k", "never stored"])
        backend.touch([])
        assert backend.get("k")[0::2] == (b"x", "t") and self.count(backend) == 1
        assert warnings == []

    def test_claims_exactly_when_shared_by_nodes(self, open_backend: Opener) -> None:
        """A claim is exclusive between processes.  One its holder left (its release was lost
        while the server paused) is taken again by the holder, which leads the only local
        computation of that key, instead of waiting for it to expire; others still wait."""
        first, second = open_backend(lambda: None), open_backend(lambda: None)
        assert first.shared_by_nodes is self.SHARED
        if not self.SHARED:
            assert first.claims is None
            return
        mine, theirs = first.claims, second.claims
        assert mine is not None and theirs is not None
        assert mine.claimed("k") is False
        assert mine.claim("k", 30) is True and mine.claim("k", 30) is True  # taken again
        assert theirs.claim("k", 30) is False and theirs.claimed("k") is True
        theirs.release("k")  # not its claim: nothing happens
        assert mine.claimed("k") is True
        mine.release("k")
        assert mine.claimed("k") is False and theirs.claim("k", 30) is True

    # -- failures ----------------------------------------------------------------------------

    def check_failing(self, backend: Backend) -> None:
        """Every operation gives its "nothing", each within FAILING_CALL_SECONDS."""
        claims = backend.claims
        operations = [(lambda: backend.get("k"), NOTHING),
                      (lambda: backend.set("k", b"v", 60, "t"), False),
                      (lambda: backend.evict("t"), 0),
                      (lambda: backend.delete("k"), None),
                      (lambda: backend.clear(), 0),
                      (lambda: self.count(backend), 0),
                      (lambda: backend.volume(), 0),
                      (lambda: backend.touch(["k"]), None)]
        if claims is not None:
            operations += [(lambda: claims.claim("c", 30), None),
                           (lambda: claims.claimed("c"), None)]
        for operation, nothing in operations:
            started = time.monotonic()
            assert operation() == nothing
            assert time.monotonic() - started < self.FAILING_CALL_SECONDS

    def test_a_failure_episode(self, open_backend: Opener, fault: Fault, warnings: List[str],
                               clock: Clock) -> None:
        """Fail once, warn once, retry after the delay, works again (and says so)."""
        told: List[str] = []
        backend = open_backend(lambda: told.append("failed"))
        assert backend.set("k", b"v", 60, "t") and backend.get("k")[0] == b"v"
        fault.cause()
        self.check_failing(backend)
        assert not backend.available and told and backend.failures >= 1
        assert len(warnings) == 1 and backend.location in warnings[0], warnings
        assert "failed (" in warnings[0] and "requests go to Orthanc" in warnings[0]
        failures, heard = backend.failures, len(told)
        clock.advance(self.RETRY_DELAY - 0.1)
        assert backend.get("k") == NOTHING  # nothing is tried before the delay
        assert (backend.failures, len(told)) == (failures, heard)
        clock.advance(0.1)
        assert backend.get("k") == NOTHING  # one attempt, which fails: told, not logged
        assert backend.failures > failures and len(told) > heard and len(warnings) == 1
        fault.repair()
        clock.advance(self.RETRY_DELAY * 2)  # past any backoff of the failed attempt
        assert backend.set("k", b"again", 60, None) is True
        assert backend.available and backend.get("k")[0] == b"again"
        assert warnings[1:] == [warnings[0].split(" failed (")[0] + " works again"]

    def test_close_then_calls_are_harmless(self, backend: Backend, warnings: List[str],
                                           clock: Clock) -> None:
        assert backend.set("k", b"x", None, None)
        backend.close()
        assert not backend.available
        assert backend.set("k", b"x", None, None) is False
        assert backend.get("k") == NOTHING
        backend.touch(["k"])
        backend.close_thread_connection()
        clock.advance(3600)
        assert backend.get("k") == NOTHING and not backend.available  # nothing reopened
        backend.close()
        assert warnings == []
