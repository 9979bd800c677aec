"""Unit tests of orthanc_cache_plugin.store.memory (hot entries in memory)."""

from __future__ import annotations

from orthanc_cache_plugin.core.data import Entry
from orthanc_cache_plugin.store.memory import HotEntries
from support.clock import Clock

KB = 1024


def _entry(size: int) -> Entry:
    return Entry("v", "t", b"x" * size)


def _hot(capacity: int = 64 * KB) -> HotEntries:
    return HotEntries(capacity, Clock())


def test_size_is_bounded_and_least_recently_used_go_first():
    hot = _hot(capacity=10 * (KB + HotEntries.OVERHEAD))
    for index in range(10):
        hot.put("k%d" % index, _entry(KB), None, 60)
    assert hot.get("k0") is not None  # now the most recently used
    hot.put("k10", _entry(KB), None, 60)
    assert hot.get("k1") is None
    assert hot.get("k0") is not None and hot.get("k10") is not None
    assert len(hot) == 10 and hot.size <= hot.capacity


def test_an_entry_over_an_eighth_of_the_capacity_is_not_kept():
    hot = _hot(capacity=8 * KB)
    hot.put("big", _entry(KB), None, 60)
    assert hot.get("big") is None and hot.size == 0


def test_replacing_a_key_counts_its_size_once():
    hot = _hot()
    hot.put("k", _entry(KB), None, 60)
    hot.put("k", _entry(2 * KB), None, 60)
    assert hot.size == 2 * KB + HotEntries.OVERHEAD


def test_entries_expire():
    clock = Clock()
    hot = HotEntries(64 * KB, clock)
    hot.put("k", _entry(1), None, 10)
    clock.now += 9.9
    assert hot.get("k") is not None
    clock.now += 0.2
    assert hot.get("k") is None and hot.size == 0


def test_evict_by_tag():
    hot = _hot()
    hot.put("a", _entry(1), "s1", 60)
    hot.put("b", _entry(1), "s1", 60)
    hot.put("c", _entry(1), "s2", 60)
    hot.evict("s1")
    assert [hot.get(key) is not None for key in "abc"] == [False, False, True]
    hot.evict("unknown")
    assert len(hot) == 1


def test_take_touched_returns_read_keys_once():
    hot = _hot()
    hot.put("a", _entry(1), None, 60)
    hot.put("b", _entry(1), None, 60)
    hot.get("a")
    hot.get("a")
    hot.get("missing")
    assert hot.take_touched() == ["a"]
    assert hot.take_touched() == []
    hot.get("b")
    hot.delete("b")
    assert hot.take_touched() == []


def test_the_identity_form_of_a_gzip_entry_is_decoded_once_and_counted():
    hot = _hot()
    body = b"z" * 100
    hot.put("k", Entry("v", "t", body, encoding="gzip"), None, 60)
    decoded: list = []

    def decode(data: bytes) -> bytes:
        decoded.append(data)
        return b"identity" * 100

    size = hot.size
    assert hot.identity("k", body, decode) == b"identity" * 100
    assert hot.identity("k", body, decode) == b"identity" * 100
    assert len(decoded) == 1 and hot.size == size + 800
    # Another body under the key (a newer entry) is decoded anew, never mixed up.
    assert hot.identity("k", b"other", lambda data: b"new") == b"new"
    # Gone with its entry: the size goes back to nothing.
    hot.delete("k")
    assert hot.size == 0
    assert hot.identity("k", body, decode) == b"identity" * 100 and len(decoded) == 2


def test_an_identity_form_too_large_to_keep_is_decoded_each_time():
    hot = _hot(capacity=8 * KB)
    hot.put("k", Entry("v", "t", b"z" * 10, encoding="gzip"), None, 60)
    calls = []
    for _ in range(2):
        hot.identity("k", hot.get("k").body, lambda data: calls.append(1) or b"y" * 2 * KB)
    assert len(calls) == 2 and hot.size == 10 + HotEntries.OVERHEAD
