"""Unit tests of orthanc_cache_plugin.store.facade (diskcache-backed, failure tolerant)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Dict

import diskcache
import pytest

from orthanc_cache_plugin.core.data import FORMAT, Entry
from orthanc_cache_plugin.store.facade import Store
from support.clock import Clock

MB = 1024 * 1024

def _unwritable(tmp_path: Path) -> Path:
    """A directory path below a regular file: it can be neither created nor opened."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"a regular file")
    return blocker / "store"


# --- Entry -----------------------------------------------------------------------------------

def test_entry_round_trip_with_body():
    entry = Entry("20230220T140000", "application/json; charset=utf-8", b'{\n   "a" : 1\n}',
                  {"Content-Disposition": 'filename="x.zip"'})
    assert Entry.decode(entry.encode()) == entry


def test_entry_round_trip_keeps_the_content_coding_of_its_body():
    packed = Entry("v1", "application/json", b"\x1f\x8b-gzip-bytes", encoding="gzip")
    assert Entry.decode(packed.encode()) == packed
    assert Entry.decode(Entry("v1", "application/json", b"{}").encode()).encoding == ""


def test_entry_round_trip_without_body_is_not_an_empty_body():
    marker = Entry("v1", "image/png", None)
    empty = Entry("v1", "image/png", b"")
    assert Entry.decode(marker.encode()) == marker
    assert Entry.decode(marker.encode()).body is None
    assert Entry.decode(empty.encode()).body == b""
    assert marker.encode() != empty.encode()


def test_entry_body_may_hold_newlines_and_any_byte():
    body = bytes(range(256)) + b"\n\n\r\n" + b"\x00" * 10
    entry = Entry("v", "application/octet-stream", body, {"A": "b\nc"})
    assert Entry.decode(entry.encode()) == entry


def test_entry_encoding_is_json_then_body():
    raw = Entry("v", "t", b"BODY").encode()
    meta, _, body = raw.partition(b"\n")
    assert body == b"BODY"
    assert b'"format": %d' % FORMAT in meta
    assert not raw.startswith(b"\x80")  # not a pickle


@pytest.mark.parametrize("raw", [
    b"",
    b"no newline at all",
    b"{not json\nbody",
    b'{"format": 999, "version": "v", "type": "t", "headers": {}, "has_body": true}\nbody',
    b'{"version": "v", "type": "t", "headers": {}, "has_body": true}\nbody',          # no format
    b'{"format": 1, "type": "t", "headers": {}, "has_body": true}\nbody',             # no version
    b'{"format": 1, "version": "v", "type": "t", "headers": 5, "has_body": true}\n',  # bad headers
    b'{"format": 1, "version": "v", "type": "t", "headers": "ab", "has_body": true}\n',
    b"\xff\xfe\n",
])
def test_entry_decode_refuses_damaged_values(raw):
    assert Entry.decode(raw) is None


@pytest.mark.parametrize("raw", [b"[1]\nbody", b"1\nbody", b'"text"\n', b"null\n"])
def test_entry_decode_refuses_json_that_is_not_an_object(raw):
    assert Entry.decode(raw) is None


# --- Store basics ----------------------------------------------------------------------------

def test_set_get_delete_count_clear(store, warnings):
    assert store.available
    assert store.count() == 0
    assert store.get("a") is None
    first = Entry("v1", "application/json; charset=utf-8", b"[1]")
    assert store.set("a", first) is True
    assert store.set("b", Entry("v1", "image/png", None)) is True
    assert store.get("a") == first
    assert store.get("b") == Entry("v1", "image/png", None)
    assert store.count() == 2
    store.delete("a")
    assert store.get("a") is None
    assert store.count() == 1
    store.delete("never-stored")  # no error
    assert store.set("c", first) and store.set("d", first)
    assert store.clear() == 3
    assert store.count() == 0
    assert store.get("c") is None
    assert warnings == []


def test_set_replaces_the_previous_version(store):
    store.set("key", Entry("v1", "t", b"old"))
    store.set("key", Entry("v2", "t", b"new"))
    assert store.get("key") == Entry("v2", "t", b"new")
    assert store.count() == 1


def test_entries_survive_a_reopen(tmp_path, warnings):
    directory = str(tmp_path / "store")
    first = Store(directory, 64 * MB, 3600, warn=warnings.append)
    first.set("k", Entry("v", "t", b"body"))
    first.close()
    second = Store(directory, 64 * MB, 3600, warn=warnings.append)
    assert second.get("k") == Entry("v", "t", b"body")
    second.close()


def test_large_bodies(store):
    body = bytes(range(256)) * 4096  # 1 MB, kept in a file by diskcache
    store.set("big", Entry("v", "application/zip", body))
    assert store.get("big").body == body


@pytest.mark.parametrize("raw", [b"garbage", b"{broken\nbody", "a str", 12345,
                                 b'{"format": 0, "version": "v", "type": "t", "headers": {}, '
                                 b'"has_body": false}\n'])
def test_damaged_value_is_none_and_deleted(store, raw, warnings):
    with diskcache.Cache(store.directory) as raw_cache:
        raw_cache.set("k", raw)
    assert store.count() == 1
    assert store.get("k") is None
    assert store.count() == 0
    assert store.available
    assert warnings == []


def test_damaged_value_with_json_array_is_none_and_deleted(store):
    with diskcache.Cache(store.directory) as raw_cache:
        raw_cache.set("k", b"[1]\nbody")
    assert store.get("k") is None
    assert store.count() == 0


@pytest.mark.parametrize("memory", [0, MB], ids=["disk only", "memory in front"])
def test_entries_expire(tmp_path, warnings, memory):
    store = Store(str(tmp_path / "store"), 64 * MB, 1, warn=warnings.append, memory=memory)
    store.set("k", Entry("v", "t", b"x"))
    assert store.get("k") is not None
    time.sleep(1.2)
    assert store.get("k") is None
    store.close()


def test_size_limit_is_honoured(tmp_path, warnings):
    limit = 256 * 1024
    entry_size = 8 * 1024
    store = Store(str(tmp_path / "store"), limit, 3600, warn=warnings.append)
    total = 200  # 1.6 MB written into a 256 kB store
    volumes = []
    for index in range(total):
        assert store.set("key-%d" % index, Entry("v", "t", bytes([index % 256]) * entry_size))
        volumes.append(store.volume())
    assert max(volumes) <= limit + 4 * entry_size
    assert 0 < store.count() < total
    assert store.get("key-%d" % (total - 1)) is not None   # the newest entry is kept
    assert store.get("key-0") is None                      # the oldest one was evicted
    assert warnings == []
    store.close()


def test_least_recently_used_entries_are_evicted_first(tmp_path, warnings):
    limit = 256 * 1024
    store = Store(str(tmp_path / "store"), limit, 3600, warn=warnings.append)
    store.set("hot", Entry("v", "t", b"h" * 8192))
    for index in range(100):
        assert store.get("hot") is not None  # keeps "hot" recently used
        store.set("cold-%d" % index, Entry("v", "t", b"c" * 8192))
    assert store.get("hot") is not None
    assert store.get("cold-0") is None
    store.close()


def test_close_then_calls_are_harmless(tmp_path, warnings):
    store = Store(str(tmp_path / "store"), 64 * MB, 3600, warn=warnings.append)
    store.set("k", Entry("v", "t", b"x"))
    store.close()
    assert not store.available
    assert store.get("k") is None
    assert store.set("k", Entry("v", "t", b"x")) is False
    assert store.count() == 0
    assert warnings == []


# --- Failures --------------------------------------------------------------------------------

def test_unwritable_directory_makes_the_store_unavailable(tmp_path, warnings, clock):
    store = Store(str(_unwritable(tmp_path)), 64 * MB, 3600, warn=warnings.append, clock=clock)
    assert not store.available
    assert len(warnings) == 1
    assert str(_unwritable(tmp_path)) in warnings[0]
    # every call degrades to "no entry", nothing raises
    assert store.get("k") is None
    assert store.set("k", Entry("v", "t", b"x")) is False
    store.delete("k")
    assert store.count() == 0
    assert store.clear() == 0
    assert store.volume() == 0
    assert len(warnings) == 1


def test_failed_store_warns_once_and_recovers_after_retry_delay(tmp_path, warnings, clock):
    directory = _unwritable(tmp_path)
    store = Store(str(directory), 64 * MB, 3600, warn=warnings.append, clock=clock)
    assert not store.available and len(warnings) == 1
    assert store.failures == 1

    # Before RETRY_DELAY nothing is retried.
    clock.advance(Store.RETRY_DELAY / 2)
    assert store.get("k") is None
    assert store.failures == 1

    # After RETRY_DELAY it is retried, fails again, and stays quiet.
    clock.advance(Store.RETRY_DELAY)
    assert store.get("k") is None
    assert store.failures == 2
    for _ in range(5):
        clock.advance(Store.RETRY_DELAY)
        assert store.set("k", Entry("v", "t", b"x")) is False
    assert len(warnings) == 1
    assert not store.available

    # The disk is repaired, but the store waits for RETRY_DELAY since the last attempt.
    directory.parent.unlink()
    assert store.set("k", Entry("v", "t", b"x")) is False
    assert not store.available

    clock.advance(Store.RETRY_DELAY)
    assert store.set("k", Entry("v", "t", b"x")) is True
    assert store.available
    assert store.get("k") == Entry("v", "t", b"x")
    assert len(warnings) == 2
    assert "works again" in warnings[1]
    store.close()


def test_failure_during_an_operation(store, warnings, clock, monkeypatch):
    store.set("k", Entry("v", "t", b"x"))

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(diskcache.Cache, "get", broken)
    assert store.get("k") is None
    assert not store.available
    assert len(warnings) == 1 and "OperationalError" in warnings[0]
    assert store.get("k") is None
    assert len(warnings) == 1

    monkeypatch.undo()
    assert store.get("k") is None          # still within RETRY_DELAY
    clock.advance(Store.RETRY_DELAY)
    assert store.get("k") == Entry("v", "t", b"x")
    assert store.available
    assert len(warnings) == 2


def test_separate_failure_episodes_each_warn(store, warnings, clock, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no space left on device")

    for _ in range(3):
        monkeypatch.setattr(diskcache.Cache, "set", broken)
        assert store.set("k", Entry("v", "t", b"x")) is False
        monkeypatch.undo()
        clock.advance(Store.RETRY_DELAY)
        assert store.set("k", Entry("v", "t", b"x")) is True
    kinds = ["failed" if " failed (" in message else "recovered" for message in warnings]
    assert kinds == ["failed", "recovered"] * 3


def test_persistent_operation_failure_warns_once(store, warnings, clock, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(diskcache.Cache, "set", broken)
    for _ in range(10):
        assert store.set("k", Entry("v", "t", b"x")) is False
        clock.advance(Store.RETRY_DELAY)
    assert len(warnings) == 1, warnings


# --- Hot entries kept in memory ---------------------------------------------------------------

def _hot_store(tmp_path: Path, warnings, clock=time.monotonic, size_limit: int = 64 * MB,
               memory: int = MB) -> Store:
    return Store(str(tmp_path / "store"), size_limit, 3600, warn=warnings.append, clock=clock,
                 memory=memory)


def _on_disk(store: Store, key: str):
    """What a separate diskcache handle reads under ``key`` (touches no access time)."""
    with diskcache.Cache(store.directory, eviction_policy="none") as raw_cache:
        return raw_cache.get(key)


def test_hits_are_read_from_memory_once_written(tmp_path, warnings):
    store = _hot_store(tmp_path, warnings)
    entry = Entry("v", "t", b"body")
    assert store.set("k", entry)
    with diskcache.Cache(store.directory) as raw_cache:
        raw_cache.set("k", b"what another writer left")
    assert store.get("k") is entry  # the decoded object itself: no file read, no copy
    store.close()


def test_an_entry_read_from_disk_is_kept_in_memory(tmp_path, warnings):
    first = _hot_store(tmp_path, warnings)
    first.set("k", Entry("v", "t", b"body"))
    first.close()
    store = _hot_store(tmp_path, warnings)
    found = store.get("k")
    assert found == Entry("v", "t", b"body")
    assert store.get("k") is found
    store.close()


def test_memory_follows_delete_evict_clear_and_replacement(tmp_path, warnings):
    store = _hot_store(tmp_path, warnings)
    for key, tag in (("a", "study"), ("b", "study"), ("c", "other"), ("d", None)):
        store.set(key, Entry("v", "t", key.encode()), tag=tag)
    store.delete("d")
    assert store.get("d") is None
    assert store.evict("study") == 2
    assert store.get("a") is None and store.get("b") is None
    store.set("c", Entry("v2", "t", b"new"), tag="other")
    assert store.get("c") == Entry("v2", "t", b"new")
    store.clear()
    assert store.get("c") is None
    store.close()


def test_a_failing_disk_empties_memory(tmp_path, warnings, monkeypatch):
    clock = Clock()
    store = _hot_store(tmp_path, warnings, clock=clock)
    store.set("k", Entry("v", "t", b"x"))

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(diskcache.Cache, "get", broken)
    assert store.get("k") is not None  # from memory: the disk is not asked
    assert store.get("other") is None  # the disk fails here
    assert not store.available
    assert store.get("k") is None  # memory went with the disk
    monkeypatch.undo()
    clock.advance(Store.RETRY_DELAY)
    assert store.get("k") == Entry("v", "t", b"x")
    store.close()


def test_memory_reads_keep_the_disk_least_recently_used_order(tmp_path, warnings):
    """Hits served from memory reach the disk's access times through record_accesses,
    so the disk's eviction spares them (as test_least_recently_used_entries_are_evicted_first
    shows for hits read from disk)."""
    store = _hot_store(tmp_path, warnings, size_limit=256 * 1024, memory=MB)
    store.set("hot", Entry("v", "t", b"h" * 8192))
    for index in range(100):
        assert store.get("hot") is not None
        store.record_accesses()
        store.set("cold-%d" % index, Entry("v", "t", b"c" * 8192))
    assert _on_disk(store, "hot") is not None
    assert _on_disk(store, "cold-0") is None
    assert warnings == []
    store.close()


def _access_times(store: Store) -> Dict[str, float]:
    """access_time of every row of diskcache's table, read with SQLite alone."""
    with closing(sqlite3.connect(str(Path(store.directory) / "cache.db"))) as connection:
        return dict(connection.execute("SELECT key, access_time FROM Cache").fetchall())


def test_record_accesses_writes_the_access_times_of_memory_hits_into_diskcaches_table(
        tmp_path, warnings):
    """The access-time UPDATE (through diskcache's private connection, see disk.py) reaches
    diskcache's own table, for the keys read from memory and no other."""
    store = _hot_store(tmp_path, warnings)
    for key in ("read", "not-read"):
        store.set(key, Entry("v", "t", key.encode()))
    with closing(sqlite3.connect(str(Path(store.directory) / "cache.db"))) as connection:
        with connection:
            connection.execute("UPDATE Cache SET access_time = 0")
    assert store.get("read") is not None  # from memory: the disk is not asked
    assert _access_times(store) == {"read": 0.0, "not-read": 0.0}
    before = time.time()
    store.record_accesses()
    times = _access_times(store)
    assert before <= times["read"] <= time.time()
    assert times["not-read"] == 0.0
    store.record_accesses()  # nothing read since: nothing written
    assert _access_times(store) == times
    assert store.available and warnings == []
    store.close()


def test_without_record_accesses_a_memory_hit_leaves_disk_order_alone(tmp_path, warnings):
    """The counterpart of the test above: it fails if memory reads never reach the disk."""
    store = _hot_store(tmp_path, warnings, size_limit=256 * 1024, memory=MB)
    store.set("hot", Entry("v", "t", b"h" * 8192))
    for index in range(100):
        assert store.get("hot") is not None
        store.set("cold-%d" % index, Entry("v", "t", b"c" * 8192))
    assert _on_disk(store, "hot") is None
    store.close()


def test_close_thread_connection_closes_only_this_threads_connection(store):
    """The next call opens a new connection, which is how a store deleted or damaged on
    disk gets noticed (see Store.close_thread_connection)."""
    store.set("k", Entry("v", "t", b"x"))
    cache = store._backend._cache  # pylint: disable=protected-access
    assert getattr(cache._local, "con", None) is not None  # pylint: disable=protected-access
    store.close_thread_connection()
    assert getattr(cache._local, "con", None) is None  # pylint: disable=protected-access
    assert store.get("k") == Entry("v", "t", b"x")
    store.close_thread_connection()
    store.close_thread_connection()  # nothing open: nothing happens
    assert store.available


# --- Small named values ----------------------------------------------------------------------

def test_named_values_are_files_beside_the_entries_and_outlive_clear(store):
    assert store.get_value("computed-by") is None
    store.set_value("computed-by", "orthanc 1.13.0")
    store.set("k", Entry("v", "t", b"x"))
    assert store.clear() == 1
    assert store.get_value("computed-by") == "orthanc 1.13.0"
    assert (Path(store.directory) / "state-computed-by").read_text(encoding="utf-8") == \
        "orthanc 1.13.0"
