"""The storage contract: what :class:`.facade.Store` asks of the place where entries live.

Two backends implement it: the disk (:class:`.disk.DiskStore`, diskcache)
and a Redis or Valkey server (:class:`.redis_backend.RedisStore`).  Both
store raw values (bytes) with an expiry and a tag; what the values mean is
the facade's business.  Both turn every failure into the operation's
"nothing" (:data:`NOTHING`, False, 0) with one warning per failure episode
(:mod:`.episodes`), so that a failing store slows the API down but never
breaks it.  tests/unit/store_contract.py is the suite every backend passes.

What only some backends can do is a capability, not a type to switch on:
:attr:`Backend.claims` (cross-node coalescing, None for the disk) and
:attr:`Backend.shared_by_nodes`.
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Tuple

#: What :meth:`Backend.get` finds: the value, its expiry time (wall clock, None if it
#: never expires) and its tag.  A plain tuple: it is built on every read of the store.
Found = Tuple[Optional[bytes], Optional[float], Optional[str]]
#: Found when there is nothing (absent, expired, or the backend failing).
NOTHING: Found = (None, None, None)


class Claims(Protocol):
    """Claims that nodes sharing a store take, so that one computes a missed answer while
    the others wait for its entry (cache/controller.py).  Each answer None when the store
    fails: the caller then computes, as every request does while the store fails."""

    def claim(self, name: str, seconds: float) -> Optional[bool]:
        """Take the claim ``name`` for ``seconds`` unless another process holds it: True
        when taken, False when held by another."""

    def claimed(self, name: str) -> Optional[bool]:
        """Whether the claim ``name`` is held."""

    def release(self, name: str) -> None:
        """Give the claim ``name`` up, if this process still holds it."""


class Backend(Protocol):
    """Failure-tolerant store of raw values under string keys; safe to call from several
    threads.  Every operation gives its "nothing" while the backend fails."""

    @property
    def location(self) -> str:
        """Where the values are, for logs and statistics (never a password)."""

    @property
    def available(self) -> bool:
        """False while the backend is failing (or closed)."""

    @property
    def failures(self) -> int:
        """Failures so far (each failed operation or attempt to reopen)."""

    @property
    def claims(self) -> Optional[Claims]:
        """Cross-node claims, when other nodes share the values; None otherwise."""

    @property
    def shared_by_nodes(self) -> bool:
        """Whether other nodes read and write the same values: what this node keeps in
        memory may be older than what another stored, and the values are not this node's
        to remove for its own reasons (an Orthanc upgrade)."""

    def get(self, key: str) -> Found:
        """(value, expiry time, tag) under ``key``; :data:`NOTHING` if absent or failing.
        A value that is not bytes (written by something else) comes back as ``b""``."""

    def set(self, key: str, value: bytes, expire: Optional[float], tag: Optional[str]) -> bool:
        """Write ``value`` under ``key`` for ``expire`` seconds (None: no expiry), with
        ``tag`` for :meth:`evict`; False on failure."""

    def evict(self, tag: str) -> int:
        """Drop every value stored with ``tag``; how many went."""

    def delete(self, key: str) -> None:
        """Forget ``key``."""

    def clear(self) -> int:
        """Remove every value; how many went."""

    def count(self) -> int:
        """Number of values."""

    def volume(self) -> int:
        """Bytes used."""

    def touch(self, keys: List[str]) -> None:
        """Mark ``keys`` as used now, in the backend's least-recently-used order: they
        were read from the memory front, and should not be the first evicted for room."""

    def close_thread_connection(self) -> None:
        """Close the connection the calling thread holds, if any (its request ended);
        a backend whose connections are pooled holds none."""

    def close(self) -> None:
        """Release everything; later calls reopen nothing."""
