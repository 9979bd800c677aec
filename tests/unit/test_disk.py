"""Unit tests of orthanc_cache_plugin.store.disk (the store's diskcache.Cache and its failures).

The storage contract (store_contract.py: values, evict, counts, a failure
episode) runs on the disk as :class:`TestDiskBackend`; more of the failure
handling is tested through Store (test_store.py).  These tests cover what
only the disk does: a failure to open, the access-time update written into
diskcache's own table, values that are not bytes, and a damaged database
started afresh.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import diskcache
import pytest
from store_contract import BackendContract, Fault, Opener

from orthanc_cache_plugin.store.disk import DiskStore

MB = 1024 * 1024


class DiskFault(Fault):
    """Every call into diskcache fails as a broken disk makes it fail, opening included."""

    #: What a broken disk makes SQLite raise.
    ERROR = sqlite3.OperationalError("disk I/O error")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch

    def cause(self) -> None:
        def broken(*args: object, **kwargs: object) -> None:
            raise self.ERROR

        for name in ("__init__", "get", "set", "evict", "delete", "clear", "__len__",
                     "volume", "transact"):
            self._monkeypatch.setattr(diskcache.Cache, name, broken)

    def repair(self) -> None:
        self._monkeypatch.undo()


class TestDiskBackend(BackendContract):
    RETRY_DELAY = DiskStore.RETRY_DELAY
    FAILING_CALL_SECONDS = 1.0
    SHARED = False

    @pytest.fixture
    def open_backend(self, tmp_path, warnings, clock) -> Iterator[Opener]:
        opened: List[DiskStore] = []

        def open_disk(on_failure: Callable[[], None]) -> DiskStore:
            opened.append(DiskStore(str(tmp_path / "store"), 64 * MB, warnings.append, clock,
                                    on_failure=on_failure))
            return opened[-1]

        yield open_disk
        for disk in opened:
            disk.close()

    @pytest.fixture
    def fault(self, monkeypatch) -> DiskFault:
        return DiskFault(monkeypatch)


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


def test_a_value_that_is_not_bytes_comes_back_as_empty_bytes(disk):
    """Backend.get gives bytes: what something else wrote (an older plugin's pickled
    object) comes back as b"", which the owner cannot decode and deletes."""
    with diskcache.Cache(disk.directory) as raw_cache:
        raw_cache.set("k", {"pickled": 1}, tag="t")
    assert disk.get("k") == (b"", None, "t")
