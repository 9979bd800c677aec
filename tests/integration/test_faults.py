"""Faults, size and crashes: whatever happens to the store, Orthanc answers as without it.

Each test runs a real Orthanc with the plugin beside a plain Orthanc holding
the same files (the module's ``plain`` server) and compares their answers:
status, content type and body (see :mod:`support.oracle`).

* The cache directory is deleted, made read-only, filled to the last byte,
  or its database overwritten while Orthanc runs: every answer stays plain
  Orthanc's, ONE warning is logged, every answer says ``BYPASS`` (header and
  metric), and the store works again by itself within ``RETRY_DELAY`` of the
  fault's end.
* A small ``MaximumSize`` under a workload many times larger: the
  directory's disk use stays within the limit plus a stated slack, and
  recent keys are hits.
* Orthanc killed (SIGKILL) while the store is being written: it starts
  again and serves no outdated or damaged entry.

Tests marked ``xfail(strict=True)`` pin plugin bugs found here (see
docs/reliability.md): once a bug is fixed, its test passes and must lose
the mark.  Mounting needs root: those tests are skipped where it is not
allowed.  Figures are printed (``pytest -s``) and reported in
docs/reliability.md.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import requests

from orthanc_cache_plugin.store.facade import Store
from support import faults
from support.dicom_factory import make_instance
from support.oracle import exchange
from support.orthanc_server import OrthancServer

NO_GZIP = {"Accept-Encoding": "identity"}
STATUS = "X-Cache-Status"
#: Seconds after an upload before the plugin stores answers (freshness.SETTLE is 3 s).
SETTLE = 3.2
#: Seconds after a write that LastUpdate does not show (GRACE 2 s + SETTLE 3 s).
GENERATION_SETTLE = 5.2
#: Seconds between two attempts to reopen a failed store.
RETRY_DELAY = Store.RETRY_DELAY
#: Metrics are published every 0.25 s.
METRICS_PERIOD = 0.6
MIB = 1024 * 1024
#: MaximumSize of the size tests, in MB as the setting counts them (MiB).
MAXIMUM_SIZE = 2
#: SQLite's write-ahead log between two automatic checkpoints: 1000 pages of 4 KiB
#: with 24-byte frame headers, plus the transaction that crosses the threshold.
WAL_SLACK = int(4.5 * MIB)
#: Allocation rounding and diskcache's two-level directories of value files.
DIRECTORY_SLACK = 256 * 1024
#: Image side of most test instances: 160 x 160 16-bit pixels make a 52 KB file,
#: which diskcache keeps in a value file of its own (32 KiB and more), not in SQLite.
SIDE = 160

Uploaded = List[Dict[str, Any]]


# -- servers, data, comparisons --------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One plain Orthanc (no plugin) for the module; each test uploads its own files."""
    server = OrthancServer(tmp_path_factory.mktemp("plain-faults") / "orthanc")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mounts() -> Iterator[None]:
    """Skip unless this process may mount; unmount whatever a failing test left behind."""
    if not faults.mounts_supported():
        pytest.skip("needs root allowed to mount (CAP_SYS_ADMIN)")
    try:
        yield
    finally:
        faults.unmount_all()


def images(seed: str, count: int, side: int = SIDE, first: int = 1) -> List[bytes]:
    """``count`` images of one series of one study (the same study for the same ``seed``)."""
    return [make_instance("PAT-" + seed, seed=seed, instance_number=number, rows=side,
                          columns=side) for number in range(first, first + count)]


#: Per server URL, each instance's attachment UUID (random per server, named by the
#: file's Content-Disposition) and the name that replaces it in comparisons.
_ATTACHMENTS: Dict[str, Dict[str, str]] = {}


def upload(servers: Sequence[OrthancServer], dicoms: Sequence[bytes]) -> Uploaded:
    """Upload the same files to every server; Orthanc's answers (same ids everywhere)."""
    uploaded = []
    for dicom in dicoms:
        answers = [server.upload(dicom) for server in servers]
        assert len({answer["ID"] for answer in answers}) == 1, answers
        uploaded.append(answers[0])
        for server in servers:
            info = server.get("/instances/%s/attachments/dicom/info" % answers[0]["ID"]).json()
            _ATTACHMENTS.setdefault(server.url, {})[info["Uuid"]] = "<%s>" % answers[0]["ID"]
    return uploaded


def get(server: OrthancServer, path: str) -> requests.Response:
    return server.get(path, headers=NO_GZIP)


def as_plain(server: OrthancServer, plain: OrthancServer, path: str) -> str:
    """GET ``path`` from both servers, assert the same answer; returns the cache's status."""
    answer = get(server, path)
    cached = exchange(answer, _ATTACHMENTS.get(server.url, {}))
    expected = exchange(get(plain, path), _ATTACHMENTS.get(plain.url, {}))
    assert cached == expected, "%s\n  cache: %s\n  plain: %s" % (path, cached, expected)
    return answer.headers.get(STATUS, "")


def metrics(server: OrthancServer) -> Dict[str, float]:
    """The plugin's Prometheus metrics, once the last requests are published."""
    time.sleep(METRICS_PERIOD)
    text = server.get("/tools/metrics-prometheus").text
    return {name: float(value)
            for name, value in re.findall(r"^(orthanc_cache_\w+) (\S+)", text, re.MULTILINE)}


def store_warnings(server: OrthancServer, directory: Path) -> Tuple[int, int]:
    """How many times the log said the store failed, and that it works again."""
    log = server.log_text()
    return (log.count("cache store in %s failed" % directory),
            log.count("cache store in %s works again" % directory))


def failure_message(server: OrthancServer, directory: Path) -> str:
    """The reason the first "failed" warning gave (exception and message)."""
    found = re.search(r"cache store in %s failed \((.*)\); requests go" % re.escape(str(directory)),
                      server.log_text())
    return found.group(1) if found else ""


# -- faults while serving --------------------------------------------------


@dataclass
class Workload:
    """Paths of one test study: ``warm`` ones are stored before the fault; ``fresh`` ones
    are first asked during it (a value file first, so that its write is attempted);
    ``probe`` is asked only to see when the store works again."""

    warm: List[str]
    fresh: List[str]
    probe: str


@dataclass
class FaultFigures:
    """What one fault did, for docs/reliability.md."""

    fault: str
    warning: str = ""
    requests: int = 0  # answered during the fault, all compared with plain Orthanc
    bypasses: int = 0  # the metric's increase
    recovery: float = 0.0  # seconds from the fault's end to the first answer from the store
    after: List[str] = field(default_factory=list)  # statuses of the warm paths, then

    def __str__(self) -> str:
        return ("%s: %d answers during the fault, all plain Orthanc's and BYPASS; %d bypasses "
                "counted; one warning (%s); store back %.1f s after the fault ended, then %s"
                % (self.fault, self.requests, self.bypasses, self.warning, self.recovery,
                   "/".join(sorted(set(self.after)))))


def prepare(server: OrthancServer, plain: OrthancServer, seed: str) -> Workload:
    """Upload a study of four 52 KB images to both servers and wait until it settles."""
    uploaded = upload([server, plain], images(seed, 4))
    time.sleep(SETTLE)
    study, series = uploaded[0]["ParentStudy"], uploaded[0]["ParentSeries"]
    first, second, other = (answer["ID"] for answer in uploaded[:3])
    return Workload(
        warm=["/studies/%s/instances-tags" % study, "/studies/%s/shared-tags" % study,
              "/series/%s/instances-tags?short" % series, "/instances/%s/tags" % first,
              "/instances/%s/file" % first, "/instances/%s/preview" % first,
              "/instances/%s/file" % second],
        fresh=["/instances/%s/file" % other, "/instances/%s/preview" % other,
               "/instances/%s/simplified-tags" % other],
        probe="/instances/%s/tags" % second)


def wait_for_store(server: OrthancServer, plain: OrthancServer, path: str,
                   statuses: List[str], timeout: float = RETRY_DELAY + 3) -> float:
    """Ask ``path`` every 0.2 s until an answer does not bypass the store; seconds waited.

    Every answer is compared with plain Orthanc's and its status appended to ``statuses``.
    """
    began = time.monotonic()
    while True:
        statuses.append(as_plain(server, plain, path))
        if statuses[-1] != "BYPASS":
            return time.monotonic() - began
        assert time.monotonic() - began < timeout, "the store did not come back"
        time.sleep(0.2)


def exercise(server: OrthancServer, plain: OrthancServer, directory: Path, paths: Workload,
             inject: Callable[[], None], remove: Callable[[], None], fault: str, *,
             outlasts_retry: bool, entries_survive: bool) -> FaultFigures:
    """Store ``paths.warm``, inject the fault, check the answers, remove it, check recovery.

    ``outlasts_retry``: the fault stays until the store has tried to reopen once (and
    failed again, silently); ``entries_survive``: the entries stored before the fault
    are hits again afterwards (else the store starts empty).
    """
    figures = FaultFigures(fault)
    assert [as_plain(server, plain, path) for path in paths.warm] == ["MISS"] * len(paths.warm)
    assert [as_plain(server, plain, path) for path in paths.warm] == ["HIT"] * len(paths.warm)
    bypasses_before = metrics(server)["orthanc_cache_bypasses"]

    inject()
    during = [as_plain(server, plain, path) for path in paths.fresh + paths.warm * 2]
    if outlasts_retry:
        time.sleep(RETRY_DELAY + 0.3)  # the next request reopens the store, which fails again
        during += [as_plain(server, plain, path) for path in paths.fresh + paths.warm]
    assert during == ["BYPASS"] * len(during)
    assert store_warnings(server, directory) == (1, 0)
    figures.warning = failure_message(server, directory)

    remove()
    figures.recovery = wait_for_store(server, plain, paths.probe, during)
    assert figures.recovery <= RETRY_DELAY + 1
    figures.after = [as_plain(server, plain, path) for path in paths.warm]
    assert figures.after == ["HIT" if entries_survive else "MISS"] * len(paths.warm)
    again = [as_plain(server, plain, path) for path in paths.warm + paths.fresh]
    assert again == ["HIT"] * len(paths.warm) + ["MISS"] * len(paths.fresh)
    assert [as_plain(server, plain, path) for path in paths.fresh] == ["HIT"] * len(paths.fresh)
    assert store_warnings(server, directory) == (1, 1)

    figures.requests = len(during) - 1  # the last one found the store back
    figures.bypasses = int(metrics(server)["orthanc_cache_bypasses"] - bypasses_before)
    assert figures.bypasses == during.count("BYPASS")
    print("\n" + str(figures))
    return figures


def binary_store(cached_orthanc: Callable[..., OrthancServer], directory: Path,
                 **settings: Any) -> OrthancServer:
    """An Orthanc with the plugin, its store in ``directory``, keeping binaries too."""
    return cached_orthanc(dict({"Directory": str(directory), "StoreBinary": True}, **settings))


def test_cache_directory_deleted_while_serving(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
        tmp_path: Path) -> None:
    """Detected at the next request, which opens a new SQLite connection (the plugin's
    connections do not outlive a REST callback); reopening recreates the directory."""
    directory = tmp_path / "store"
    server = binary_store(cached_orthanc, directory)
    paths = prepare(server, plain, "deleted")
    exercise(server, plain, directory, paths, lambda: shutil.rmtree(directory), lambda: None,
             "directory deleted", outlasts_retry=False, entries_survive=False)
    assert (directory / "cache.db").is_file()


def test_cache_directory_made_read_only_while_serving(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer, tmp_path: Path,
        mounts: None) -> None:
    """A read-only bind mount onto the directory; the entries stored before survive."""
    directory = tmp_path / "store"
    server = binary_store(cached_orthanc, directory)
    paths = prepare(server, plain, "read-only")
    with ExitStack() as fault:
        # Orthanc keeps the database open: the read-only mount is detached lazily.
        exercise(server, plain, directory, paths,
                 lambda: fault.enter_context(faults.read_only(directory)), fault.close,
                 "read-only bind mount", outlasts_retry=True, entries_survive=True)
    assert not faults.is_mount_point(directory)


def test_cache_file_system_full_while_serving(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer, tmp_path: Path,
        mounts: None) -> None:
    """The directory is a 2 MiB tmpfs, filled with zeros to the last byte; removing the
    filler ends the fault, and the entries stored before survive."""
    directory = tmp_path / "store"
    with ExitStack() as stack:
        stack.enter_context(faults.tmpfs(directory, "2m"))
        server = binary_store(cached_orthanc, directory)
        stack.callback(server.stop)  # before the unmount
        paths = prepare(server, plain, "full")
        fillers: List[faults.Filler] = []

        def fill() -> None:
            fillers.append(faults.fill(directory))
            assert faults.free_bytes(directory) == 0

        exercise(server, plain, directory, paths, fill, lambda: fillers[0].path.unlink(),
                 "file system full", outlasts_retry=True, entries_survive=True)
        server.stop()
        files = faults.store_files(directory)
        print("filler: %d bytes; value files left behind by failed writes: %d (%d bytes)"
              % (fillers[0].size, files.orphans, files.orphan_bytes))
        assert files.integrity == "ok" and files.missing == 0
    assert not faults.is_mount_point(directory)


def test_cache_database_overwritten_while_serving(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
        tmp_path: Path) -> None:
    """Every byte of cache.db overwritten: the store is off (one warning) until it tries
    to reopen, finds the database damaged, removes it with its value files and starts
    empty: it repairs itself."""
    directory = tmp_path / "store"
    server = binary_store(cached_orthanc, directory)
    paths = prepare(server, plain, "corrupt")
    sizes: List[int] = []
    exercise(server, plain, directory, paths,
             lambda: sizes.append(faults.overwrite(directory / "cache.db")), lambda: None,
             "database overwritten", outlasts_retry=False, entries_survive=False)
    assert server.log_text().count("is damaged: starting it afresh") == 1
    # The value files of the entries written before are never reclaimed.
    server.stop()
    files = faults.store_files(directory)
    print("cache.db: %d bytes overwritten; orphaned value files afterwards: %d (%d bytes)"
          % (sizes[0], files.orphans, files.orphan_bytes))
    assert files.integrity == "ok" and files.missing == 0


@pytest.mark.parametrize("damage", ["value file", "truncated value file", "database page"])
def test_a_body_damaged_on_disk_is_never_served(
        damage: str, cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
        tmp_path: Path) -> None:
    """SQLite has no page checksums and diskcache none on value files: only the
    plugin could notice a damaged body."""
    directory = tmp_path / "store"
    # Hits read from memory never see the disk: this test is about reads from disk.
    server = binary_store(cached_orthanc, directory, MemorySize=0)
    instance = upload([server, plain], images("damage-" + damage.replace(" ", "-"), 1))[0]["ID"]
    time.sleep(SETTLE)
    path = "/instances/%s/%s" % (instance, "tags" if damage == "database page" else "file")
    assert [as_plain(server, plain, path) for _ in range(2)] == ["MISS", "HIT"]
    if damage == "database page":
        # The bytes as stored: JSON is kept gzip-compressed, which a gzip client gets as is.
        body = server.get(path, headers={"Accept-Encoding": "gzip"},
                          stream=True).raw.read(decode_content=False)
        assert body[:2] == b"\x1f\x8b", "not the stored gzip bytes"
        faults.checkpoint(directory / "cache.db")  # the entry's page is now in cache.db
        needle = body[len(body) // 2:len(body) // 2 + 48]
        faults.patch(directory / "cache.db", needle, bytes(byte ^ 1 for byte in needle))
    else:
        (value_file,) = faults.value_files(directory)
        target = directory / value_file
        data = target.read_bytes()
        target.write_bytes(data[:-1000] + (b"X" * 1000 if damage == "value file" else b""))
    as_plain(server, plain, path)


# -- size ------------------------------------------------------------------


@dataclass
class SizeFigures:
    """Disk use of a store under a workload larger than MaximumSize."""

    limit: int
    requested: int = 0  # bytes of all answers
    keys: int = 0
    largest: int = 0  # largest answer
    peak: int = 0  # largest disk use seen
    at_peak: Dict[str, int] = field(default_factory=dict)
    wal: int = 0  # largest write-ahead log seen
    volume: float = 0.0  # diskcache's own estimate at the end (metric)
    entries: float = 0.0

    def __str__(self) -> str:
        return ("limit %d B, %d keys, %.1f MiB requested (largest answer %d B); peak disk use "
                "%d B = limit + %d B (%s); largest WAL %d B; at the end %d entries, volume %d B"
                % (self.limit, self.keys, self.requested / MIB, self.largest, self.peak,
                   self.peak - self.limit, ", ".join("%s %d" % item for item in
                                                     self.at_peak.items()),
                   self.wal, self.entries, self.volume))

    def sample(self, directory: Path) -> None:
        usage = faults.usage_by_kind(directory)
        self.wal = max(self.wal, usage["wal"])
        if sum(usage.values()) > self.peak:
            self.peak, self.at_peak = sum(usage.values()), usage


def size_workload(uploaded: Uploaded, rounds: int) -> List[str]:
    """``3 * rounds`` distinct keys: a file, instances-tags and a preview, each with ``?x=N``."""
    study = uploaded[0]["ParentStudy"]
    paths = []
    for number in range(rounds):
        instance = uploaded[number % len(uploaded)]["ID"]
        paths += ["/instances/%s/file?x=%d" % (instance, number),
                  "/studies/%s/instances-tags?short&x=%d" % (study, number),
                  "/instances/%s/preview?x=%d" % (instance, number)]
    return paths


def small_store(cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
                directory: Path, seed: str) -> Tuple[OrthancServer, Uploaded]:
    """A store of MAXIMUM_SIZE MB with StoreBinary, and four settled 130 KB images."""
    server = binary_store(cached_orthanc, directory, MaximumSize=MAXIMUM_SIZE)
    uploaded = upload([server, plain], images(seed, 4, side=256))
    time.sleep(SETTLE)
    return server, uploaded


def test_disk_use_stays_within_maximum_size(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
        tmp_path: Path) -> None:
    """One client: disk use <= MaximumSize + largest entry + WAL_SLACK + DIRECTORY_SLACK.

    diskcache's volume counts its database pages and value files, not SQLite's
    write-ahead log, which a checkpoint empties but does not shrink.
    """
    directory = tmp_path / "store"
    server, uploaded = small_store(cached_orthanc, plain, directory, "size")
    paths = size_workload(uploaded, 120)
    figures = SizeFigures(MAXIMUM_SIZE * MIB, keys=len(paths))
    for number, path in enumerate(paths):
        answer = get(server, path)
        assert answer.status_code == 200 and answer.headers[STATUS] == "MISS", path
        figures.requested += len(answer.content)
        figures.largest = max(figures.largest, len(answer.content))
        if number % 5 == 4:
            figures.sample(directory)
    figures.sample(directory)
    current = metrics(server)
    figures.volume, figures.entries = current["orthanc_cache_size_bytes"], current[
        "orthanc_cache_entries"]
    print("\n" + str(figures))
    assert figures.requested > 5 * figures.limit
    assert figures.volume <= figures.limit + figures.largest
    assert figures.peak <= figures.limit + figures.largest + WAL_SLACK + DIRECTORY_SLACK
    assert figures.entries < len(paths) / 4  # most were evicted
    # The most recent keys are hits, with plain Orthanc's answers.
    assert [as_plain(server, plain, path) for path in paths[-9:]] == ["HIT"] * 9


@pytest.mark.xfail(strict=True, reason="BUG: SQLite's write-ahead log is outside MaximumSize and "
                   "grows under concurrent load, never truncated (see docs/reliability.md)")
def test_disk_use_stays_within_maximum_size_under_concurrent_load(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
        tmp_path: Path) -> None:
    """Eight clients: disk use should stay within MaximumSize + the largest entry + 1 MiB."""
    directory = tmp_path / "store"
    server, uploaded = small_store(cached_orthanc, plain, directory, "size-concurrent")
    paths = size_workload(uploaded, 400)
    figures = SizeFigures(MAXIMUM_SIZE * MIB, keys=len(paths))
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            figures.sample(directory)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sessions = threading.local()

    def fetch(path: str) -> int:
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
            sessions.session.trust_env = False
        answer = sessions.session.get(server.url + path, headers=NO_GZIP, timeout=30)
        assert answer.status_code == 200
        return len(answer.content)

    try:
        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(fetch, paths))
    finally:
        stop.set()
        sampler.join()
    figures.requested, figures.largest = sum(sizes), max(sizes)
    current = metrics(server)
    figures.volume, figures.entries = current["orthanc_cache_size_bytes"], current[
        "orthanc_cache_entries"]
    print("\n8 clients: " + str(figures))
    assert figures.peak <= figures.limit + figures.largest + MIB


def test_an_answer_larger_than_maximum_size_evicts_nothing(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
        tmp_path: Path) -> None:
    """MaximumEntrySize (64 MB by default) is not capped by MaximumSize (2 MB here).

    diskcache evicts at most 10 entries per write: an answer larger than the
    whole store, written after 12 entries, evicts 10 of them and stays, the
    store above its limit.
    """
    directory = tmp_path / "store"
    server, uploaded = small_store(cached_orthanc, plain, directory, "oversize")
    big = upload([server, plain], images("oversize", 1, side=1024, first=9))[0]["ID"]
    time.sleep(SETTLE)
    recent = size_workload(uploaded, 12)[::3]  # twelve 130 KB files: 1.5 MiB
    assert [as_plain(server, plain, path) for path in recent] == ["MISS"] * len(recent)
    path = "/instances/%s/file" % big
    statuses = [as_plain(server, plain, path) for _ in range(2)]
    volume = metrics(server)["orthanc_cache_size_bytes"]
    still = [as_plain(server, plain, path) for path in recent]
    print("\nan answer of %d B, MaximumSize %d MB: %s; store volume %d B; then the 12 recent "
          "entries: %d hits" % (len(get(plain, path).content), MAXIMUM_SIZE, "/".join(statuses),
                                volume, still.count("HIT")))
    assert statuses[1] != "HIT" and volume <= MAXIMUM_SIZE * MIB
    assert still == ["HIT"] * len(recent)


# -- crash under load ------------------------------------------------------


class Writer(threading.Thread):
    """Asks many distinct keys of ``paths(n)`` until stopped or the server goes away."""

    def __init__(self, server: OrthancServer, paths: Callable[[int], List[str]]):
        super().__init__(name="store-writer", daemon=True)
        self._server = server
        self._paths = paths
        self.requested: List[str] = []  # in order, the last one possibly unanswered
        self.stored_window: List[str] = []  # asked while ``storing`` was set
        self.storing = threading.Event()
        self.stopped_by: Optional[BaseException] = None

    def run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        number = 0
        try:
            while True:
                for path in self._paths(number):
                    self.requested.append(path)
                    if self.storing.is_set():
                        self.stored_window.append(path)
                    session.get(self._server.url + path, headers=NO_GZIP, timeout=10)
                number += 1
        except requests.RequestException as error:
            self.stopped_by = error
        finally:
            session.close()


def test_a_crash_under_load_serves_nothing_stale_or_damaged(
        cached_orthanc: Callable[..., OrthancServer], plain: OrthancServer,
        tmp_path: Path) -> None:
    """SIGKILL while a client keeps the store busy, right after two kinds of change:

    * a metadata write (seen through the generations, a state file) 6.5 s before;
      the metadata list stored before it must not come back;
    * a new instance in study A 0.3 s before: A's instances-tags stored before
      it must not come back.
    After the restart every answer equals plain Orthanc's, entries of unchanged
    resources are hits, and the database is sound.
    """
    directory = tmp_path / "store"
    server = binary_store(cached_orthanc, directory)
    study_a = upload([server, plain], images("crash-a", 3))
    study_b = upload([server, plain], images("crash-b", 3))
    time.sleep(SETTLE)
    instances = [answer["ID"] for answer in study_a + study_b]
    a_tags = "/studies/%s/instances-tags" % study_a[0]["ParentStudy"]
    b_tags = "/studies/%s/instances-tags" % study_b[0]["ParentStudy"]
    listed = "/instances/%s/metadata" % study_b[0]["ID"]
    assert [as_plain(server, plain, listed) for _ in range(2)] == ["MISS", "HIT"]

    for each in (server, plain):
        assert each.put(listed + "/1024", data="changed").status_code == 200
    changed = time.monotonic()

    def paths(number: int) -> List[str]:
        instance = instances[number % len(instances)]
        return ["/instances/%s/file?x=%d" % (instance, number), "%s?x=%d" % (a_tags, number),
                "%s?x=%d" % (b_tags, number), "/instances/%s/preview?x=%d" % (instance, number)]

    writer = Writer(server, paths)
    time.sleep(GENERATION_SETTLE - 1)
    writer.start()  # its first second is computed only: the base generation is unsettled
    time.sleep(max(0.0, changed + GENERATION_SETTLE - time.monotonic()))
    writer.storing.set()
    time.sleep(1)
    upload([server, plain], images("crash-a", 1, first=9))
    a_changed = time.monotonic()
    time.sleep(0.3)
    server.kill()
    writer.join(10)
    assert isinstance(writer.stopped_by, requests.ConnectionError)

    began = time.monotonic()
    server.start()
    restart = time.monotonic() - began
    server.wait_for_log(r"store in %s \(available\)" % re.escape(str(directory)))
    time.sleep(max(0.0, a_changed + SETTLE - time.monotonic()))  # A's new version settles

    keys = list(dict.fromkeys([listed] + writer.requested))
    statuses = {path: as_plain(server, plain, path) for path in keys}
    assert statuses[listed] == "STALE-REFRESHED"
    # Study A changed: what was stored of it before is replaced, never served.
    window = list(dict.fromkeys(writer.stored_window[:-1]))  # the last one was cut by the kill
    of_a = [path for path in window if path.startswith(a_tags)]
    assert of_a and not any(statuses[path] == "HIT" for path in of_a)
    assert "STALE-REFRESHED" in {statuses[path] for path in of_a}
    # Nothing else changed: everything stored while the generations were settled survived.
    assert all(statuses[path] == "HIT" for path in window if path not in of_a)
    counts = {status: list(statuses.values()).count(status) for status in set(statuses.values())}
    assert store_warnings(server, directory) == (0, 0)

    server.stop()
    files = faults.store_files(directory)
    print("\n%d requests before the kill (%d while answers were stored); restart %.2f s; "
          "after it, first answers: %s; database: %s"
          % (len(writer.requested), len(writer.stored_window), restart, counts, files))
    assert files.integrity == "ok" and files.missing == 0
