"""Unit tests of orthanc_cache_plugin.store.disk (the store's diskcache.Cache and its failures).

Most of DiskStore's failure handling is tested through Store (test_store.py);
these tests cover what the facade does not show: the raw values with their
expiry and tag, the owner's failure callback, the access-time update written
into diskcache's own table, and a damaged database started afresh.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Dict, Iterator, List

import diskcache
import pytest

from orthanc_cache_plugin.store.disk import DiskStore
from support.clock import Clock

MB = 1024 * 1024


@pytest.fixture
def failures() -> List[str]:
    """One "failed" per call of the owner's on_failure callback."""
    return []


@pytest.fixture
def disk(tmp_path, warnings, clock, failures) -> Iterator[DiskStore]:
    opened = DiskStore(str(tmp_path / "store"), 64 * MB, warnings.append, clock,
                       on_failure=lambda: failures.append("failed"))
    yield opened
    opened.close()


def _access_times(directory: str) -> Dict[str, float]:
    """access_time of every row of diskcache's table, read with SQLite alone."""
    with closing(sqlite3.connect(str(Path(directory) / "cache.db"))) as connection:
        return dict(connection.execute("SELECT key, access_time FROM Cache").fetchall())


def _set_access_times(directory: str, when: float) -> None:
    with closing(sqlite3.connect(str(Path(directory) / "cache.db"))) as connection:
        with connection:
            connection.execute("UPDATE Cache SET access_time = ?", (when,))


def test_raw_values_come_back_with_their_expiry_and_tag(disk, warnings):
    before = time.time()
    assert disk.set("k", b"value", 60, "study") is True
    assert disk.set("forever", b"other", None, None) is True
    value, expires, tag = disk.get("k")
    assert (value, tag) == (b"value", "study")
    assert before + 60 <= expires <= time.time() + 60
    assert disk.get("forever") == (b"other", None, None)
    assert disk.get("absent") == (None, None, None)
    assert disk.count() == 2 and disk.volume() > 0
    assert disk.evict("study") == 1
    disk.delete("forever")
    assert disk.count() == 0
    assert disk.set("a", b"1", None, None) and disk.clear() == 1
    assert warnings == []


def test_the_owner_hears_of_every_failure(disk, warnings, clock, failures, monkeypatch):
    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(diskcache.Cache, "get", broken)
    assert disk.get("k") == (None, None, None)
    assert failures == ["failed"] and disk.failures == 1 and not disk.available
    assert disk.get("k") == (None, None, None)  # within RETRY_DELAY: nothing is tried
    assert failures == ["failed"]
    clock.advance(DiskStore.RETRY_DELAY)
    assert disk.get("k") == (None, None, None)  # reopened, fails again
    assert failures == ["failed"] * 2 and disk.failures == 2
    assert len(warnings) == 1
    monkeypatch.undo()
    clock.advance(DiskStore.RETRY_DELAY)
    assert disk.set("k", b"x", None, None) is True
    assert failures == ["failed"] * 2
    assert "works again" in warnings[-1]


def test_a_failure_to_open_is_heard_too(tmp_path, warnings, clock, failures):
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"a regular file")
    disk = DiskStore(str(blocker / "store"), 64 * MB, warnings.append, clock,
                     on_failure=lambda: failures.append("failed"))
    assert not disk.available and failures == ["failed"] and len(warnings) == 1


def test_retry_delay_is_the_owners_when_given(tmp_path, warnings, clock):
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"a regular file")
    disk = DiskStore(str(blocker / "store"), 64 * MB, warnings.append, clock, retry_delay=1.0)
    blocker.unlink()
    clock.advance(1.0)
    assert disk.set("k", b"x", None, None) is True
    disk.close()


def test_access_times_reach_diskcaches_table(disk, warnings):
    """The one use of diskcache's private API (disk._write_access_times): if the UPDATE
    no longer reaches diskcache's table, this fails (pyproject pins diskcache)."""
    for key in ("read", "also-read", "not-read"):
        disk.set(key, b"x", None, None)
    _set_access_times(disk.directory, 0.0)
    disk.update_access_times(["read", "also-read", "never-stored"], 12345.5)
    assert _access_times(disk.directory) == {"read": 12345.5, "also-read": 12345.5,
                                             "not-read": 0.0}
    disk.update_access_times([], 99.0)  # nothing to write: nothing changes
    assert _access_times(disk.directory)["not-read"] == 0.0
    assert disk.available and warnings == []


def test_diskcache_keeps_str_keys_raw():
    """The access-time UPDATE matches ``raw = 1``: diskcache's schema for str keys."""
    assert diskcache.Disk(".").put("some/key") == ("some/key", True)


def test_a_damaged_database_is_started_afresh_and_other_files_stay(tmp_path, warnings, clock):
    directory = tmp_path / "store"
    first = DiskStore(str(directory), 64 * MB, warnings.append, clock)
    first.set("k", b"x" * 100_000, None, None)  # a value file in a two-hex-digit folder
    first.close()
    folders = [path for path in directory.iterdir() if path.is_dir()]
    assert folders
    (directory / "state-name").write_text("kept", encoding="utf-8")
    (directory / "cache.db").write_bytes(b"this is not an SQLite database" * 100)
    for name in ("cache.db-wal", "cache.db-shm"):
        (directory / name).unlink(missing_ok=True)

    disk = DiskStore(str(directory), 64 * MB, warnings.append, clock)
    assert not disk.available
    assert len(warnings) == 1 and "DatabaseError" in warnings[0]
    clock.advance(DiskStore.RETRY_DELAY)
    assert disk.get("k") == (None, None, None)
    assert disk.available
    assert "damaged: starting it afresh" in warnings[1]
    assert (directory / "state-name").read_text(encoding="utf-8") == "kept"
    assert not any(folder.exists() for folder in folders)
    assert disk.set("k", b"y", None, None) and disk.get("k")[0] == b"y"
    disk.close()


def test_close_then_calls_are_harmless(tmp_path, warnings):
    disk = DiskStore(str(tmp_path / "store"), 64 * MB, warnings.append, Clock())
    disk.close()
    assert not disk.available
    assert disk.set("k", b"x", None, None) is False
    assert disk.get("k") == (None, None, None)
    disk.update_access_times(["k"], 1.0)
    disk.close_thread_connection()
    disk.close()
    assert warnings == []


def test_a_value_that_is_not_bytes_comes_back_as_empty_bytes(disk):
    """Backend.get gives bytes: what something else wrote (an older plugin's pickled
    object) comes back as b"", which the owner cannot decode and deletes."""
    with diskcache.Cache(disk.directory) as raw_cache:
        raw_cache.set("k", {"pickled": 1}, tag="t")
    assert disk.get("k") == (b"", None, "t")
