"""Disk faults for integration tests: mounts, a full disk, damaged files, disk use.

Everything here acts on a directory the test owns (the cache directory of an
Orthanc it started).  Mounts need root (``CAP_SYS_ADMIN``): :func:`mounts_supported`
tells whether this process may mount, so that tests can skip elsewhere.

Every mount made here is recorded, and the context managers always unmount in
their ``finally``, lazily (``umount -l``) when a process still holds files
open inside; :func:`unmount_all` is a last resort for fixtures' teardown.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Set, Tuple, Union

from support import stacks

PathLike = Union[str, Path]

#: Mount points created by this module and not yet unmounted.
_mounted: List[Path] = []


def seen_by_orthanc(path: PathLike) -> Path:
    """Where Orthanc sees ``path`` (a path of the tests), from the host.

    Orthanc in a stack (support/stacks.py) sees the host's /tmp through a bind
    mount inside its root: a fault mounted on the host's path would stay
    invisible to it, so faults are mounted, and their files read and written,
    at the root's path.
    """
    resolved = Path(path).resolve()
    if stacks.current() == "host" or stacks.root() in resolved.parents:
        return resolved
    return stacks.host_path(str(resolved))


class MountError(RuntimeError):
    """A mount or unmount command failed."""


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MountError("%s failed (%d): %s" % (" ".join(command), result.returncode,
                                                 result.stderr.strip()))


def _unescape(field: str) -> str:
    """A path from /proc/self/mountinfo, where space, tab, newline and backslash are octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_points() -> List[Path]:
    """Every mount point of this process's namespace, stacked mounts repeated."""
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return [Path(_unescape(line.split()[4])) for line in table]


def is_mount_point(directory: PathLike) -> bool:
    """True when something is mounted on ``directory``.

    Unlike :func:`os.path.ismount`, also true for a directory bind-mounted
    onto itself (same device and inode as before).
    """
    directory = seen_by_orthanc(directory)
    return Path(directory).resolve() in mount_points()


def mounts_supported() -> bool:
    """True when this process may mount (root with CAP_SYS_ADMIN, not a locked-down container)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory(prefix="mount-probe-") as probe:
        try:
            _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe)
        except (MountError, OSError):
            return False
        unmount(probe)
    return True


def _mount(directory: Path, *arguments: str) -> None:
    _run("mount", *arguments)
    _mounted.append(directory)


def unmount(directory: PathLike) -> bool:
    """Unmount everything stacked on ``directory``; True if it had to be done lazily.

    A mount whose files a running process still holds open (an Orthanc's
    SQLite connections) cannot be unmounted at once: it is then detached
    (``umount -l``), so new opens of the path reach what lies beneath while the
    old descriptors keep working.  Raises :class:`MountError` if a mount stays.
    """
    directory = Path(directory).resolve()  # as mounted: not translated again
    lazy = False
    while directory in mount_points():
        try:
            _run("umount", str(directory))
        except MountError:
            _run("umount", "-l", str(directory))
            lazy = True
    while directory in _mounted:
        _mounted.remove(directory)
    return lazy


def unmount_all() -> None:
    """Unmount whatever this module mounted and is still mounted (teardown safety net)."""
    for directory in reversed(list(dict.fromkeys(_mounted))):
        unmount(directory)


@contextmanager
def tmpfs(directory: PathLike, size: str = "2m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (mount's syntax: ``2m``) on ``directory``, unmounted on exit."""
    directory = seen_by_orthanc(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _mount(directory, "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", str(directory))
    try:
        yield directory
    finally:
        unmount(directory)


@contextmanager
def read_only(directory: PathLike) -> Iterator[Path]:
    """``directory`` made read-only in place by a read-only bind mount onto itself.

    Files already open for writing stay writable (the kernel checks the mount
    when a file is opened); everything opened or created later fails with EROFS.
    """
    directory = seen_by_orthanc(directory)
    _mount(directory, "--bind", str(directory), str(directory))
    try:
        _run("mount", "-o", "remount,bind,ro", str(directory), str(directory))
        yield directory
    finally:
        unmount(directory)


class Filler(NamedTuple):
    """The file that :func:`fill` wrote, and how many bytes it holds."""

    path: Path
    size: int


def fill(directory: PathLike, name: str = "filler") -> Filler:
    """Write zeros to ``directory/name`` until the file system has not one byte left.

    Chunks shrink from 1 MiB down to 1 byte on ENOSPC, so the last partial
    block is used too.  Remove the returned file to end the fault.
    """
    directory = seen_by_orthanc(directory)
    path = Path(directory) / name
    written = 0
    chunk = 1 << 20
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        while chunk:
            try:
                written += os.write(descriptor, b"\0" * chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(descriptor)
    return Filler(path, written)


def free_bytes(directory: PathLike) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``directory``."""
    directory = seen_by_orthanc(directory)
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def overwrite(path: PathLike, pattern: bytes = b"corrupt!") -> int:
    """Overwrite every byte of ``path`` in place with ``pattern`` repeated; the size stays.

    The file is not replaced (same inode), as disk corruption would leave it.
    Returns the file's size.
    """
    path = seen_by_orthanc(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.write((pattern * (size // len(pattern) + 1))[:size])
    return size


def patch(path: PathLike, old: bytes, new: bytes) -> int:
    """Replace the one occurrence of ``old`` in ``path`` by ``new`` (same length), in place.

    Returns its offset; raises ValueError unless ``old`` occurs exactly once.
    """
    path = seen_by_orthanc(path)
    if len(old) != len(new):
        raise ValueError("patch must keep the file's length")
    data = Path(path).read_bytes()
    offset = data.find(old)
    if offset < 0 or data.find(old, offset + 1) >= 0:
        raise ValueError("%r occurs %d times in %s" % (old, data.count(old), path))
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(new)
    return offset


def usage_by_kind(directory: PathLike) -> Dict[str, int]:
    """Bytes allocated to ``directory`` and everything below it, as ``du -s -B1`` counts
    them, split into ``database`` (cache.db), ``wal`` (cache.db-wal), ``shm``
    (cache.db-shm), ``values`` (diskcache's ``.val`` files), ``directories`` and
    ``other`` files; their sum is the directory's disk use.

    Hard-linked files count once; files vanishing during the walk (the store
    evicting while we count) are skipped.
    """
    directory = seen_by_orthanc(directory)
    usage = dict.fromkeys(("database", "wal", "shm", "values", "directories", "other"), 0)
    seen: Set[Tuple[int, int]] = set()

    def add(path: str, kind: str) -> None:
        try:
            stats = os.lstat(path)
        except FileNotFoundError:
            return
        if (stats.st_dev, stats.st_ino) not in seen:
            seen.add((stats.st_dev, stats.st_ino))
            usage[kind] += stats.st_blocks * 512

    add(str(directory), "directories")
    for root, directories, files in os.walk(directory):
        for name in directories:
            add(os.path.join(root, name), "directories")
        for name in files:
            add(os.path.join(root, name), _kind(name))
    return usage


def _kind(name: str) -> str:
    return {"cache.db": "database", "cache.db-wal": "wal", "cache.db-shm": "shm"}.get(
        name, "values" if name.endswith(".val") else "other")


def value_files(directory: PathLike) -> Set[str]:
    """diskcache's value files under ``directory``, relative to it (``ab/cd/xyz.val``)."""
    directory = seen_by_orthanc(directory)
    root = Path(directory)
    return {str(path.relative_to(root)) for path in root.glob("*/*/*.val")}


def checkpoint(database: PathLike) -> None:
    """Move every page of ``database``'s write-ahead log into the database file, and
    empty the log (``PRAGMA wal_checkpoint(TRUNCATE)``), from this process.

    SQLite allows it while another process (Orthanc) has the database open;
    afterwards the current content of every page is in the file itself, where
    :func:`patch` can damage it.  Raises RuntimeError if a reader blocked it.
    """
    database = seen_by_orthanc(database)
    connection = sqlite3.connect(str(database), timeout=10)
    try:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()
    if busy:
        raise RuntimeError("the checkpoint of %s was blocked" % database)


class StoreFiles(NamedTuple):
    """How a stopped store's rows and value files match up."""

    rows: int  # entries in the Cache table
    value_files: int  # .val files on disk
    orphans: int  # .val files no row names (space diskcache never reclaims)
    orphan_bytes: int  # their total size
    missing: int  # rows naming a .val file that does not exist
    integrity: str  # PRAGMA integrity_check's first line ("ok")


def store_files(directory: PathLike) -> StoreFiles:
    """Compare the rows of ``directory/cache.db`` with the value files beside it.

    Open the database only once Orthanc has stopped (read-only, no write).
    """
    directory = seen_by_orthanc(directory)
    connection = sqlite3.connect("file:%s?mode=ro" % (Path(directory) / "cache.db"), uri=True)
    try:
        rows = connection.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]
        named = {name for (name,) in connection.execute(
            "SELECT filename FROM Cache WHERE filename IS NOT NULL")}
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()
    on_disk = value_files(directory)
    orphans = on_disk - named
    orphan_bytes = sum((Path(directory) / name).stat().st_size for name in orphans)
    return StoreFiles(rows, len(on_disk), len(orphans), orphan_bytes, len(named - on_disk),
                      integrity)
