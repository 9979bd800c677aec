#!/usr/bin/env python3
"""Benchmark of the cache plugin against plain Orthanc and "the floor".

One command (Debian 12, as root, from the repository's root)::

    python3 bench/run.py --stack bookworm  # full run, Orthanc 1.10.1: about 8 minutes on 2 cores
    python3 bench/run.py --big 300  # Orthanc 1.13.0 (sid, the default): about 15 minutes
    python3 bench/run.py --quick    # tiny data, 1 s per load test: a smoke test

On Orthanc 1.13.0, plain Orthanc takes as long for N concurrent shared-tags
or instances-tags requests as for N in a row, about 0.8 s each for 300
instances: with the default big study of 1,000, the requests wrk leaves
queued keep it busy for minutes after each run (the wait for idle servers
gives up after ``--idle-timeout``), hence ``--big 300`` there.

It re-runs itself with ``.venv/bin/python`` (creating the virtual environment
as ``scripts/test.sh`` does when it is missing), installs ``wrk`` with
apt-get and ``matplotlib`` (and ``py-spy`` with ``--profile``) into the
virtual environment when they are missing.

On the same synthetic data it starts, side by side:

* **plain**: Orthanc without any plugin;
* **plugin**: Orthanc with the cache plugin of this working tree, through
  ``example.py``, in a fresh cache directory;
* **floor**: Orthanc with ``bench/floor.py``, which answers the same routes
  with bytes kept in a dict: what any Python plugin costs at the least;
* **plugin-100k**: the plugin again, its store filled beforehand with
  100,000 entries in the plugin's own format (the scale scenario).

The data is uploaded once, into plain Orthanc, whose storage is then copied
for the others, so all of them hold the very same database.  Then it
measures hits, revalidations (304), the specification's scenario, hits
beside misses, hits with a large store, cold misses, ingest and memory, and
writes to ``--out``
(default ``bench/results``): ``results.md`` (also printed), ``results.json``,
``chart.png``, ``wrk.log`` (every wrk output) and, with ``--profile``,
``profile-*.txt`` (py-spy's collapsed stacks) and ``profile.md`` (top
functions).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV = REPO / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
WRK_LUA = BENCH_DIR / "wrk.lua"
FLOOR_SCRIPT = BENCH_DIR / "floor.py"
EXAMPLE_SCRIPT = REPO / "example.py"
SERVERS = ("plain", "plugin", "floor")
MB = 1024 * 1024


# -- environment ------------------------------------------------------------

def _log(message: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_environment(profile: bool) -> None:
    """Re-run under the project's virtual environment, install wrk, matplotlib (py-spy)."""
    if not _in_venv():
        if not VENV_PYTHON.exists():
            _log("creating %s (as scripts/test.sh does)" % VENV)
            subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", "-e", ".[test]"], cwd=REPO, check=True)
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    if shutil.which("wrk") is None:
        _log("installing wrk with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"]
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                           check=True)
            subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    missing = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("matplotlib")
    if profile and not (VENV / "bin" / "py-spy").exists():
        missing.append("py-spy")
    if missing:
        _log("installing %s into %s" % (" ".join(missing), VENV))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *missing], check=True)


# -- plan -----------------------------------------------------------------------

@dataclass
class Plan:
    """Sizes and durations of one run."""

    quick: bool = False
    duration: int = 5                   # seconds per wrk run
    connections: Tuple[int, ...] = (8, 64)
    small: int = 100                    # instances of the small studies
    big: int = 1000                     # instances of the big study
    spec_studies: int = 20              # studies of `small` instances (spec scenario)
    spec_connections: int = 100
    hit_studies: Tuple[str, ...] = ("small", "big")
    cold_repeats: int = 20
    ingest: int = 1000                  # instances of each study uploaded in the ingest scenario
    ingest_rounds: int = 3              # studies uploaded to each server
    upload_threads: int = 4
    fill_small: int = 100               # entries in the plugin's store before start
    fill_large: int = 100_000           # entries in plugin-100k's store before start
    scale_rounds: int = 2               # plugin / plugin-100k alternations
    settle_wait: float = 6.0            # the plugin stores nothing changed < 3 s ago
    idle_timeout: float = 180.0         # longest wait for idle servers before a wrk run
    profile_duration: int = 20
    coding_rounds: int = 4              # alternating wrk / browser rounds (codings())

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(quick=True, duration=1, connections=(4,), small=5, big=20, spec_studies=3,
                   spec_connections=8, hit_studies=("small",), cold_repeats=2, ingest=30,
                   ingest_rounds=1,
                   fill_small=10, fill_large=1000, scale_rounds=1, settle_wait=4.0,
                   profile_duration=3, coding_rounds=1)


#: The clients of the hit and 304 scenarios: wrk alone, and as every browser, viewer and
#: HTTP library asks (their Accept-Encoding).
CLIENTS = (("wrk", ""), ("browser", "gzip, deflate, br"))


# -- HTTP -----------------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection to a server (reopened when closed)."""

    def __init__(self, port: int):
        self.port = port
        self._connection: Optional[http.client.HTTPConnection] = None

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None,
                ) -> Tuple[int, Dict[str, str], bytes, float]:
        """(status, headers, body, seconds from sending to the last byte)."""
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            try:
                began = time.perf_counter()
                self._connection.request(method, path, body=body, headers=headers or {})
                response = self._connection.getresponse()
                data = response.read()
                seconds = time.perf_counter() - began
                return response.status, dict(response.getheaders()), data, seconds
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, **headers: str) -> Tuple[int, Dict[str, str], bytes, float]:
        return self.request("GET", path,
                            headers={k.replace("_", "-"): v for k, v in headers.items()})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def upload_all(port: int, files: Sequence[bytes], threads: int) -> Tuple[float, List[str]]:
    """POST every file to /instances with ``threads`` connections; (seconds, parent studies).

    A 503 is sent again (up to 5 times): with a PostgreSQL index, concurrent uploads
    of one study may fail to serialize, and Orthanc says the transaction should be
    retried."""
    local = threading.local()
    clients: List[Client] = []

    def upload(dicom: bytes) -> str:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(port)
            clients.append(client)
        for attempt in range(6):
            status, _, body, _ = client.request("POST", "/instances", dicom,
                                                {"Content-Type": "application/dicom"})
            if status != 503:
                break
            time.sleep(0.05 * (attempt + 1))
        if status != 200:
            raise RuntimeError("upload answered %d: %r" % (status, body[:200]))
        return json.loads(body)["ParentStudy"]

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        studies = list(pool.map(upload, files))
    seconds = time.perf_counter() - began
    for client in clients:
        client.close()
    return seconds, studies


# -- servers and data -------------------------------------------------------------

def _import_support() -> None:
    for path in (str(REPO / "tests"), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)


COMMON_CONFIG: Dict[str, Any] = {
    # Civetweb gives each keep-alive connection a thread: enough for 100 clients.
    "HttpThreadsCount": 128,
}


#: Where the plugin servers import orthanc_cache_plugin from (--plugin-path).
PLUGIN_PATH = REPO


def make_server(workdir: Path, kind: str, cache_dir: Optional[Path] = None,
                plugin_path: Optional[Path] = None):
    """An OrthancServer (not started) of one kind: plain, plugin or floor.

    The plugin is imported from ``plugin_path`` (default: ``--plugin-path``).
    """
    _import_support()
    from support.orthanc_server import OrthancServer

    config = dict(COMMON_CONFIG)
    # No --verbose: the plugin logs every request at info.
    kwargs: Dict[str, Any] = {"log_flags": ()}
    if kind == "plugin":
        config["CachePlugin"] = {"Directory": str(cache_dir)}
        # As docs/deployment.md recommends (1.10.1 compresses by default, and would then
        # compress every hit for a browser); plain Orthanc keeps its version's default.
        config["HttpCompressionEnabled"] = False
        plugin_path = (plugin_path or PLUGIN_PATH).resolve()
        # Orthanc's Python plugin puts the script's folder first in sys.path:
        # example.py in this repository imports this working tree's package
        # (not a copy installed in the system Python).  For another package,
        # run a copy of example.py from the server's folder, and PYTHONPATH decides.
        script = EXAMPLE_SCRIPT
        if plugin_path != REPO:
            workdir.mkdir(parents=True, exist_ok=True)
            script = workdir / "example.py"
            script.write_text(EXAMPLE_SCRIPT.read_text() + "\n# Added by bench/run.py:\n"
                              "import orthanc, orthanc_cache_plugin  # noqa: E402\n"
                              "orthanc.LogWarning('benchmark: orthanc_cache_plugin from %s'\n"
                              "                   % orthanc_cache_plugin.__file__)\n")
        kwargs["python_script"] = script
        kwargs["env"] = {"PYTHONPATH": str(plugin_path)}
    elif kind == "floor":
        kwargs["python_script"] = FLOOR_SCRIPT
    return OrthancServer(workdir, config=config, **kwargs)


def _stack_description() -> str:
    _import_support()
    from support import stacks
    found = stacks.versions()
    return "%s: orthanc %s, orthanc-python %s" % (stacks.current(), found.get("orthanc"),
                                                  found.get("orthanc-python"))


def fill_store(directory: Path, count: int, body_size: int = 1500) -> None:
    """Write ``count`` entries in the plugin's format straight into a diskcache directory.

    Same diskcache settings as the plugin's Store; keys are the plugin's
    (``keys.cache_key``) for shared-tags of studies that do not exist.
    """
    import diskcache

    from orthanc_cache_plugin.core.data import Entry
    from orthanc_cache_plugin.core.keys import cache_key
    from orthanc_cache_plugin.store.facade import COMPUTED_BY, Store, computed_by
    from support import stacks

    cache = diskcache.Cache(str(directory), size_limit=1024 * MB,
                            eviction_policy="least-recently-used", statistics=False)
    body = json.dumps({"0010,0010": {"Name": "PatientName", "Type": "String",
                                     "Value": "x" * (body_size - 80)}}).encode()
    raw = Entry("20240101T000000|", "application/json", body).encode()
    batch = 2000
    for start in range(0, count, batch):
        with cache.transact():
            for number in range(start, min(count, start + batch)):
                digest = "%040x" % number
                fake_id = "-".join(digest[i:i + 8] for i in range(0, 40, 8))
                cache.set(cache_key("/studies/%s/shared-tags" % fake_id, "", ""), raw,
                          expire=604800)
    cache.close()
    # Computed by this Orthanc: the plugin would empty a store of another version.
    store = Store(str(directory), 1024 * MB, 604800, warn=_log)
    store.set_value(COMPUTED_BY, computed_by(stacks.orthanc_version() or ""))
    store.close()


def store_entries(directory: Path) -> int:
    """Entries in a plugin's store, its named values (generation...) left out."""
    with sqlite3.connect("file:%s?mode=ro" % (directory / "cache.db"), uri=True) as db:
        return db.execute("SELECT count(*) FROM Cache WHERE key NOT LIKE '#%'").fetchone()[0]


def stored(directory: Path, key: str) -> bool:
    with sqlite3.connect("file:%s?mode=ro" % (directory / "cache.db"), uri=True) as db:
        return db.execute("SELECT count(*) FROM Cache WHERE key = ?", (key,)).fetchone()[0] > 0


def memory_of(pid: int) -> Dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    found = {}
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


# -- CPU accounting -------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all CPUs)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    # user, nice, system: what processes are charged (irq and softirq time, which the
    # loopback traffic of the benchmark itself causes, is charged to no process).
    return (fields[0] + fields[1] + fields[2]) / _HZ


def _process_seconds(pid: int) -> float:
    try:
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _HZ  # utime + stime


def _own_seconds() -> float:
    import resource
    return sum(getattr(resource.getrusage(who), field)
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


class CpuWatch:
    """Estimated share of the machine's CPUs used by processes outside a measurement.

    The machine's user and system time, minus that of the measured Orthanc,
    this script and its finished children (wrk): other processes (tests
    someone else runs...) competing for the CPUs skew the results.  The
    kernel's tick-based totals come out lower than the processes' own
    figures, so the estimate errs low (never below 0).
    """

    def __init__(self, *pids: int):
        self.pids = pids
        self._start = (time.monotonic(), _busy_seconds(), self._servers(), _own_seconds())

    def _servers(self) -> float:
        return sum(_process_seconds(pid) for pid in self.pids)

    def foreign(self) -> float:
        wall, busy, server, own = self._start
        elapsed = time.monotonic() - wall
        other = (_busy_seconds() - busy) - (self._servers() - server) - (_own_seconds() - own)
        return max(0.0, other / (elapsed * (os.cpu_count() or 1)))


# -- wrk --------------------------------------------------------------------------

@dataclass
class Load:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    statuses: str = ""  # status of a check request made before the run
    bytes_per_response: float = 0.0  # headers and body, as received by wrk
    foreign_cpu: float = 0.0  # share of the CPUs used by other processes meanwhile
    idle_wait_s: float = 0.0  # seconds waited for idle servers before the run
    #: Servers still busy when the wait for idle servers gave up (the run began anyway).
    busy_at_start: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Idle:
    """The outcome of a wait for idle servers."""

    seconds: float                                 # waited
    busy: List[int] = field(default_factory=list)  # pids still busy when the wait gave up


def wait_until_idle(pids: Sequence[int], limit: float = 180.0) -> Idle:
    """Wait until the processes ``pids`` use under 5 % of a CPU (over 0.5 s), at most ``limit`` s.

    A server that wrk left with queued requests (plain Orthanc computing
    5.6 MB answers for 64 connections) keeps computing them after the run:
    the next run, on another server, would share the CPUs with it.  wrk
    leaves at most one request per connection, but on Orthanc 1.13 plain
    Orthanc takes as long for them as for as many in a row (seconds each for
    a large study):
    the wait gives up after ``limit`` seconds and says which processes were
    still busy then.
    """
    began = time.monotonic()
    while True:
        before = {pid: _process_seconds(pid) for pid in pids}
        time.sleep(0.5)
        used = {pid: _process_seconds(pid) - seconds for pid, seconds in before.items()}
        waited = time.monotonic() - began
        if sum(used.values()) < 0.025:
            return Idle(waited)
        if waited >= limit:
            busy = sorted(used, key=lambda pid: -used[pid])
            return Idle(waited, [pid for pid in busy if used[pid] >= 0.0125] or busy[:1])


class Wrk:
    def __init__(self, out: Path, log_name: str = "wrk.log"):
        self.out = out
        self.log = out / log_name
        self.log.write_text("")
        self._count = 0
        #: Processes (the servers) that must be idle before a run starts, and their names.
        self.quiet_pids: List[int] = []
        self.names: Dict[int, str] = {}
        #: Longest wait for them (seconds), and the total waited so far.
        self.idle_timeout = Plan.idle_timeout
        self.idle_waited = 0.0

    def wait_idle(self, label: str) -> Idle:
        """Wait for the servers to be idle (at most ``idle_timeout``); say so when it took long."""
        idle = wait_until_idle(self.quiet_pids, self.idle_timeout)
        self.idle_waited += idle.seconds
        if idle.busy:
            _log("%s: %s still busy after %.0f s (work left by an earlier run): "
                 "measuring anyway, row marked ‡ (--idle-timeout)" % (
                     label, ", ".join(self.names.get(pid, str(pid)) for pid in idle.busy),
                     idle.seconds))
        elif idle.seconds >= 10:
            _log("%s: waited %.0f s for idle servers" % (label, idle.seconds))
        return idle

    def run(self, server: Any, targets: Sequence[Tuple[str, ...]], connections: int, duration: int,
            label: str, idle: Optional[Idle] = None, measured: Sequence[int] = ()) -> Load:
        """One wrk run; first waits for idle servers unless ``idle`` tells it was done.

        ``server`` gives the port (and the pid) wrk loads; ``measured``, the processes
        whose CPU time is not foreign (default: the server's), e.g. the nodes behind a
        proxy."""
        port = server.port
        self._count += 1
        target_file = self.out / "targets" / ("%03d.txt" % self._count)
        target_file.parent.mkdir(exist_ok=True)
        target_file.write_text("".join("\t".join(target) + "\n" for target in targets))
        command = ["wrk", "-t%d" % min(2, connections), "-c%d" % connections, "-d%ds" % duration,
                   "--timeout", "60s", "--latency", "-s", str(WRK_LUA),
                   "http://127.0.0.1:%d/" % port]
        if idle is None:
            idle = self.wait_idle(label)
        watch = CpuWatch(*(measured or (server.pid,)))
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120,
                                env=dict(os.environ, BENCH_TARGETS=str(target_file)))
        foreign = watch.foreign()
        with self.log.open("a") as log:
            log.write("### %s (servers %s after %.1f s)\n$ BENCH_TARGETS=%s %s\n%s%s\n" % (
                label, "idle" if not idle.busy else "still busy (%s)" % ", ".join(
                    self.names.get(pid, str(pid)) for pid in idle.busy),
                idle.seconds, target_file, " ".join(command), result.stdout, result.stderr))
        line = next((line for line in result.stdout.splitlines() if line.startswith("BENCH_JSON ")),
                    None)
        if result.returncode != 0 or line is None:
            raise RuntimeError("wrk failed (%s):\n%s%s" % (label, result.stdout, result.stderr))
        data = json.loads(line[len("BENCH_JSON "):])
        errors = sum(data["errors"].values())
        seconds = data["duration_us"] / 1e6
        return Load(data["requests"] / seconds, data["latency_us"]["p50"] / 1000,
                    data["latency_us"]["p99"] / 1000, data["requests"], errors,
                    bytes_per_response=data["bytes"] / max(data["requests"], 1),
                    foreign_cpu=foreign,
                    idle_wait_s=round(idle.seconds, 1),
                    busy_at_start=[self.names.get(pid, str(pid)) for pid in idle.busy])


# -- the benchmark ------------------------------------------------------------------

@dataclass
class Results:
    plan: Dict[str, Any]
    environment: Dict[str, Any] = field(default_factory=dict)
    loads: List[Dict[str, Any]] = field(default_factory=list)      # wrk scenarios
    scale: List[Dict[str, Any]] = field(default_factory=list)
    cold: List[Dict[str, Any]] = field(default_factory=list)
    ingest: Dict[str, Any] = field(default_factory=dict)
    memory: Dict[str, Any] = field(default_factory=dict)
    memory_idle: Dict[str, Any] = field(default_factory=dict)  # after start-up and priming
    profile: Dict[str, Any] = field(default_factory=dict)
    targets: List[Dict[str, Any]] = field(default_factory=list)
    density: Dict[str, Any] = field(default_factory=dict)  # answers a fixed store size holds
    codings: List[Dict[str, Any]] = field(default_factory=list)  # browser / wrk, alternating


class Bench:
    def __init__(self, plan: Plan, out: Path, workdir: Path, profile: bool,
                 wrk_log: str = "wrk.log"):
        self.plan = plan
        self.out = out
        self.workdir = workdir
        self.do_profile = profile
        self.results = Results(plan=dict(plan.__dict__))
        self.wrk = Wrk(out, wrk_log)
        self.wrk.idle_timeout = plan.idle_timeout
        self.servers: Dict[str, Any] = {}
        self.clients: Dict[str, Client] = {}
        self.cache_dirs: Dict[str, Path] = {}
        self.studies: Dict[str, str] = {}  # "small", "big" -> Orthanc id
        self.spec_studies: List[str] = []

    # -- set-up ----------------------------------------------------------------------

    def generate(self) -> Tuple[List[bytes], List[bytes], List[List[bytes]]]:
        _import_support()
        from support.dicom_factory import make_study

        plan = self.plan
        began = time.perf_counter()
        base: List[bytes] = []
        for number in range(plan.spec_studies):
            base += make_study("BENCH-%03d" % number, 1, plan.small, seed="bench-small-%d" % number)
        big = make_study("BENCH-BIG", 1, plan.big, seed="bench-big")
        ingest = [make_study("BENCH-INGEST-%d" % round_, 1, plan.ingest,
                             seed="bench-ingest-%d" % round_)
                  for round_ in range(plan.ingest_rounds)]
        _log("generated %d + %d + %d x %d instances of 32x32 pixels in %.1f s"
             % (len(base), len(big), len(ingest), plan.ingest, time.perf_counter() - began))
        return base, big, ingest

    def set_up(self, base: List[bytes], big: List[bytes]) -> None:
        plan = self.plan
        plain = make_server(self.workdir / "plain", "plain")
        plain.start()
        seconds, studies = upload_all(plain.port, base + big, plan.upload_threads)
        _log("uploaded %d instances into plain Orthanc in %.1f s" % (len(base) + len(big), seconds))
        self.spec_studies = list(dict.fromkeys(studies[:len(base)]))
        self.studies = {"small": self.spec_studies[0], "big": studies[-1]}
        plain.stop()

        # Same database for everyone: copy plain's storage (Orthanc is stopped).
        kinds = {"plugin": "plugin", "floor": "floor", "plugin-100k": "plugin"}
        for name, kind in kinds.items():
            shutil.copytree(plain.storage_dir, self.workdir / name / "storage")
            if kind == "plugin":
                self.cache_dirs[name] = self.workdir / name / "cache"
        began = time.perf_counter()
        fill_store(self.cache_dirs["plugin"], plan.fill_small)
        fill_store(self.cache_dirs["plugin-100k"], plan.fill_large)
        _log("filled the stores with %d and %d entries in %.1f s"
             % (plan.fill_small, plan.fill_large, time.perf_counter() - began))

        self.servers = {"plain": plain}
        for name, kind in kinds.items():
            self.servers[name] = make_server(self.workdir / name, kind, self.cache_dirs.get(name))
        for server in self.servers.values():
            # From this thread: the harness has Linux kill Orthanc when the thread that
            # started it ends (PR_SET_PDEATHSIG), so never from a pool's thread.
            server.start(60)
        for name in ("plugin", "plugin-100k"):
            self.servers[name].wait_for_log(r"cache plugin: version \S+ active, store in .* "
                                            r"\(available\)")
        self.servers["floor"].wait_for_log("benchmark floor:")
        self.clients = {name: Client(server.port) for name, server in self.servers.items()}
        self.wrk.quiet_pids = [server.pid for server in self.servers.values()]
        self.wrk.names = {server.pid: name for name, server in self.servers.items()}
        system = json.loads(self.clients["plain"].get("/system")[2])
        self.results.environment = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "orthanc": system.get("Version"),
            "stack": _stack_description(),
            "allow_threads": bool(COMMON_CONFIG.get("Python", {}).get("AllowThreads")),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "wrk": " ".join(subprocess.run(["wrk", "-v"], capture_output=True,
                                          text=True).stdout.split()[:2]),
            "plugin_commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short",
                                             "HEAD"],
                                            capture_output=True, text=True).stdout.strip(),
            "plugin_path": str(PLUGIN_PATH),
            "plugin_digest": _package_digest(),
            "plugin_tree_modified": bool(subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--", "orthanc_cache_plugin"],
                capture_output=True, text=True).stdout.strip()),
        }
        _log("servers up: " + ", ".join("%s :%d pid %d" % (name, server.port, server.pid)
                                         for name, server in self.servers.items()))

        # The plugin stores nothing that changed less than 3 s ago (its
        # generation is dated at start-up): wait, then prime every URL twice.
        time.sleep(plan.settle_wait)
        urls = self.hit_urls() + ["/studies/%s/shared-tags" % study for study in self.spec_studies]
        for name, client in self.clients.items():
            for url in urls:
                for _ in range(2 if name.startswith("plugin") else 1):
                    status = client.get(url)[0]
                    if status != 200:
                        raise RuntimeError("%s answered %d to %s" % (name, status, url))
        for name in ("plugin", "plugin-100k"):
            missing = [url for url in urls if not stored(self.cache_dirs[name], url + "?#")]
            if missing:
                raise RuntimeError("%s did not store %s" % (name, missing))
        self.results.memory_idle = {name: memory_of(server.pid)
                                    for name, server in self.servers.items()}
        _log("primed %d URLs; stores hold %d and %d entries" % (
            len(urls), store_entries(self.cache_dirs["plugin"]),
            store_entries(self.cache_dirs["plugin-100k"])))

    def hit_urls(self) -> List[str]:
        return ["/studies/%s/%s" % (self.studies[study], route)
                for route in ("shared-tags", "instances-tags") for study in self.plan.hit_studies]

    def size_of(self, study: str) -> int:
        return self.plan.small if study == "small" else self.plan.big

    # -- scenarios ----------------------------------------------------------------------

    def throughput(self) -> None:
        """Hits and revalidations: the same URL again and again, per server, by wrk alone
        (no Accept-Encoding) and as a browser asks (``gzip, deflate, br``)."""
        plan = self.plan
        for revalidate in (False, True):
            for route in ("shared-tags", "instances-tags"):
                for study in plan.hit_studies:
                    url = "/studies/%s/%s" % (self.studies[study], route)
                    identity = self.clients["plain"].get(url)[2]
                    for client, encoding in CLIENTS:
                        asked = {"Accept_Encoding": encoding} if encoding else {}
                        # Each coding has its own entity-tag (http.encoding).
                        etags = {name: self.clients[name].get(url, **asked)[1].get("ETag", "")
                                 for name in ("plugin", "floor")}
                        etags["plain"] = etags["plugin"]  # plain sends none: the same requests
                        for connections in plan.connections:
                            row = {"group": "304" if revalidate else "hit",
                                   "scenario": "%s %s, %d instances%s" % (
                                       "revalidate" if revalidate else "hit", route,
                                       self.size_of(study),
                                       ", as a browser" if encoding else ""),
                                   "connections": connections, "client": client,
                                   "identity_bytes": len(identity),
                                   "gzip6_bytes": len(gzip.compress(identity, 6))}
                            for name in SERVERS:
                                etag = etags[name] if revalidate else ""
                                status = self.clients[name].get(
                                    url, **dict(asked, **({"If_None_Match": etag} if etag
                                                          else {})))[0]
                                load = self.wrk.run(self.servers[name], [(url, etag, encoding)],
                                                    connections, plan.duration,
                                                    "%s: %s" % (row["scenario"], name))
                                load.statuses = str(status)
                                row[name] = load.as_dict()
                            self._record(row)

    def codings(self) -> None:
        """A browser's hits against hits without Accept-Encoding on the plugin alone, in
        alternating rounds (``plan.coding_rounds`` of each, ``plan.duration`` long).

        The one-off rows of :meth:`throughput` run minutes apart, and on small answers
        their ratio moves by a tenth from run to run on this machine; alternating the
        two clients takes that drift out of the comparison the target is about.
        """
        plan = self.plan
        server = self.servers["plugin"]
        for route in ("shared-tags", "instances-tags"):
            url = "/studies/%s/%s" % (self.studies["small"], route)
            for connections in plan.connections:
                ratios = []
                for round_ in range(plan.coding_rounds):
                    rps = {client: self.wrk.run(server, [(url, "", encoding)], connections,
                                                plan.duration, "alternating %s, round %d, %s"
                                                % (route, round_ + 1, client)).rps
                           for client, encoding in CLIENTS}
                    ratios.append(rps["browser"] / max(rps["wrk"], 1e-9))
                row = {"scenario": "hit %s, %d instances" % (route, self.size_of("small")),
                       "connections": connections, "ratios": ratios,
                       "mean": statistics.mean(ratios)}
                self.results.codings.append(row)
                _log("browser / wrk, %s, c=%d: %s (mean %.2f)" % (
                    row["scenario"], connections, " ".join("%.2f" % r for r in ratios),
                    row["mean"]))

    def density(self) -> None:
        """How many of these studies' answers a fixed MaximumSize and MemorySize hold,
        stored as Orthanc sends them and gzip-compressed (as the plugin stores JSON now).

        The real answers (shared-tags and instances-tags of the studies of the spec
        scenario, from plain Orthanc) are written again and again under new keys into
        a Store of each size until it evicts; the entries it holds then are counted.
        """
        from orthanc_cache_plugin.core.data import GZIP, Entry
        from orthanc_cache_plugin.http.encoding import compress
        from orthanc_cache_plugin.store.facade import Store

        bodies = [self.clients["plain"].get("/studies/%s/%s" % (study, route))[2]
                  for study in self.spec_studies for route in ("shared-tags", "instances-tags")]
        size, memory = 16 * MB, 4 * MB
        row: Dict[str, Any] = {"maximum_size": size, "memory_size": memory,
                               "answers": len(bodies),
                               "identity_bytes": sum(map(len, bodies)) // len(bodies)}
        for label, encoded in (("identity", [(body, "") for body in bodies]),
                               ("gzip", [(compress(body), GZIP) for body in bodies])):
            directory = self.workdir / ("density-" + label)
            store = Store(str(directory), size, 3600, warn=_log, memory=memory)
            written = 0
            while written < 400 * len(bodies) and (store.count() >= written or written < 10):
                body, encoding = encoded[written % len(encoded)]
                store.set("density-%d" % written, Entry("v", "application/json", body, {},
                                                        encoding))
                written += 1
            row[label] = {"stored": store.count(), "in_memory": len(store._hot or ()),
                          "bytes": sum(len(body) for body, _ in encoded) // len(encoded)}
            store.close()
            shutil.rmtree(directory, ignore_errors=True)
        self.results.density = row
        _log("density: %d answers of %d bytes: %s" % (len(bodies), row["identity_bytes"],
                                                       row))

    def mixed(self) -> None:
        """Hits while one more client asks never-seen keys of the large study (misses).

        Plugin 4.0 holds the GIL through ``RestApiGet``: a miss that makes
        Orthanc read the large study stalls every other Python callback,
        hits included, for that time.  The floor's misses (a query string it
        has not seen) go through ``RestApiGet`` too.
        """
        plan = self.plan
        hit_url = "/studies/%s/shared-tags" % self.studies["small"]
        miss_study = plan.hit_studies[-1]
        miss_url = "/studies/%s/shared-tags?mixed=" % self.studies[miss_study]
        connections = plan.connections[0]
        row = {"group": "mixed", "connections": connections,
               "scenario": "hit shared-tags, %d instances, beside misses on %d"
                           % (self.size_of("small"), self.size_of(miss_study))}
        for name in SERVERS:
            label = "%s: %s" % (row["scenario"], name)
            idle = self.wrk.wait_idle(label)  # before the misses begin
            stop = threading.Event()
            misses = [0]

            def ask_misses(port: int, name: str, stop: threading.Event, misses: List[int]) -> None:
                client = Client(port)
                while not stop.is_set():
                    misses[0] += 1
                    client.get(miss_url + "%s-%d" % (name, misses[0]))
                client.close()

            asking = threading.Thread(target=ask_misses, daemon=True,
                                      args=(self.servers[name].port, name, stop, misses))
            asking.start()
            load = self.wrk.run(self.servers[name], [(hit_url, "")], connections, plan.duration,
                                label, idle=idle)
            stop.set()
            asking.join(120)
            if asking.is_alive():
                _log("%s: a miss still running 120 s after the hits ended" % label)
            row[name] = dict(load.as_dict(), misses=misses[0])
        self._record(row)

    def spec_and_scale(self) -> None:
        """Spec: 100 connections reading shared-tags of 20 studies; then a store of 100k entries."""
        plan = self.plan
        targets = [("/studies/%s/shared-tags" % study, "") for study in self.spec_studies]
        row = {"group": "spec", "connections": plan.spec_connections,
               "scenario": "spec: shared-tags of %d studies of %d, random" % (
                   len(self.spec_studies), plan.small)}
        for name in SERVERS:
            row[name] = self.wrk.run(self.servers[name], targets, plan.spec_connections,
                                     plan.duration, "%s: %s" % (row["scenario"], name)).as_dict()
        self._record(row)

        runs: Dict[str, List[Load]] = {"plugin": [], "plugin-100k": []}
        for _ in range(plan.scale_rounds):
            for name in runs:
                runs[name].append(self.wrk.run(self.servers[name], targets, plan.spec_connections,
                                               plan.duration, "scale: %s" % name))
        for name, loads in runs.items():
            entries = store_entries(self.cache_dirs[name])
            self.results.scale.append({
                "server": name, "entries": entries,
                "rps": statistics.mean(load.rps for load in loads),
                "p50_ms": statistics.mean(load.p50_ms for load in loads),
                "p99_ms": statistics.mean(load.p99_ms for load in loads),
                "runs": [load.as_dict() for load in loads]})
            _log("scale %s (%d entries): %.0f req/s" % (name, entries,
                                                        self.results.scale[-1]["rps"]))

    #: The cold-miss kinds: what is asked and how (the browser's misses are
    #: of large answers, where the plugin's compression before storing costs most).
    COLD_KINDS = ("new key", "after write", "browser, new key")

    def cold(self, kinds: Sequence[str] = COLD_KINDS) -> None:
        """First GET of a new key (stored), and first GET after a write (unsettled), vs plain.

        *browser, new key*: a browser's first GET of ``instances-tags``
        (``Accept-Encoding: gzip, deflate, br``): the plugin compresses the
        answer once before storing it; plain Orthanc sends it as its settings
        say (gzipped by itself on 1.10.1, identity on 1.13).
        """
        plan = self.plan
        clients = {name: self.clients[name] for name in ("plain", "plugin")}
        counter = 0
        for kind in kinds:
            for study in ("small", "big"):
                route = "instances-tags" if kind.startswith("browser") else "shared-tags"
                url = "/studies/%s/%s" % (self.studies[study], route)
                asked = {"Accept-Encoding": dict(CLIENTS)["browser"]} \
                    if kind.startswith("browser") else {}
                samples: Dict[str, List[float]] = {"plain": [], "plugin": []}
                changed_etags = 0
                for repeat in range(plan.cold_repeats):
                    for name, client in clients.items():
                        if kind.endswith("new key"):
                            counter += 1
                            status, headers, _, seconds = client.request(
                                "GET", "%s?bench=%d" % (url, counter), headers=asked)
                        else:
                            before = client.get(url)[1].get("ETag") if name == "plugin" else None
                            put = client.request("PUT",
                                                 "/studies/%s/metadata/1024" % self.studies[study],
                                                 b"bench %d" % repeat)[0]
                            if put != 200:
                                raise RuntimeError("PUT metadata answered %d" % put)
                            status, headers, _, seconds = client.get(url)
                            if name == "plugin" and headers.get("ETag") != before:
                                changed_etags += 1
                        if status != 200:
                            raise RuntimeError("%s answered %d to %s" % (name, status, url))
                        samples[name].append(seconds * 1000)
                row = {"scenario": "%s: %s, %d instances" % (kind, route, self.size_of(study)),
                       "kind": kind, "repeats": plan.cold_repeats}
                for name, values in samples.items():
                    row[name] = {"p50_ms": statistics.median(values), "max_ms": max(values),
                                 "mean_ms": statistics.mean(values)}
                row["ratio"] = row["plugin"]["p50_ms"] / row["plain"]["p50_ms"]
                if kind == "after write":
                    row["plugin_etag_changed"] = changed_etags
                self.results.cold.append(row)
                _log("cold %s: plain %.1f ms, plugin %.1f ms" % (
                    row["scenario"], row["plain"]["p50_ms"], row["plugin"]["p50_ms"]))

    def ingest(self, studies: List[List[bytes]]) -> None:
        """Each server receives every study; the order of the servers rotates each round."""
        runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in SERVERS}
        for round_, files in enumerate(studies):
            for index in range(len(SERVERS)):
                name = SERVERS[(index + round_) % len(SERVERS)]
                watch = CpuWatch(self.servers[name].pid)
                seconds, _ = upload_all(self.servers[name].port, files, self.plan.upload_threads)
                runs[name].append({"instances": len(files), "seconds": seconds,
                                   "per_second": len(files) / seconds,
                                   "foreign_cpu": watch.foreign()})
                _log("ingest round %d, %s: %.0f instances/s" % (round_ + 1, name,
                                                                len(files) / seconds))
        for name, rounds in runs.items():
            instances = sum(run["instances"] for run in rounds)
            seconds = sum(run["seconds"] for run in rounds)
            self.results.ingest[name] = {"instances": instances, "seconds": seconds,
                                         "per_second": instances / seconds, "rounds": rounds}

    def memory(self) -> None:
        for name, server in self.servers.items():
            self.results.memory[name] = memory_of(server.pid)

    #: py-spy modes: name, flags, sampling rate, stacks counted (None: all).
    PROFILES = (
        ("gil", ["--gil", "--nonblocking"], 250, None),
        ("wall", ["--idle", "--nonblocking"], 250, "on_request"),
        ("native", ["--gil", "--native"], 100, None),
    )

    def profile(self) -> None:
        """py-spy while wrk hits shared-tags of the small study on the plugin (8 connections).

        *gil*: what runs while holding the GIL (Python serializes the plugin's
        work on it); *wall*: where the request threads spend their time,
        waiting included; *native*: the GIL holder's C frames too (py-spy
        pauses the process for each sample then, so throughput drops).
        """
        plan = self.plan
        server = self.servers["plugin"]
        url = "/studies/%s/shared-tags" % self.studies["small"]
        py_spy = str(VENV / "bin" / "py-spy")
        self.results.profile = {"url": url, "duration": plan.profile_duration, "runs": []}
        for mode, flags, rate, within in self.PROFILES:
            output = self.out / ("profile-%s.txt" % mode)
            command = [py_spy, "record", "--pid", str(server.pid), "--rate", str(rate),
                       "--duration", str(plan.profile_duration), "--format", "raw",
                       "--output", str(output), *flags]
            spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            time.sleep(0.5)
            load = self.wrk.run(server, [(url, "")], 8, plan.profile_duration + 1,
                                "profile %s: plugin" % mode)
            spy_output = spy.communicate(timeout=120)[0]
            self.results.profile["runs"].append({
                "mode": mode, "command": "py-spy " + " ".join(command[1:]), "within": within,
                "rps_while_profiled": load.rps, "returncode": spy.returncode,
                "file": output.name, "py_spy_output": spy_output[-2000:]})
            _log("py-spy %s: exit %d, %.0f req/s while profiled" % (mode, spy.returncode, load.rps))

    def _record(self, row: Dict[str, Any]) -> None:
        self.results.loads.append(row)
        _log("%-55s c=%-3d plain %8.1f  plugin %8.1f  floor %8.1f req/s" % (
            row["scenario"], row["connections"], row["plain"]["rps"], row["plugin"]["rps"],
            row["floor"]["rps"]))

    def stop(self) -> None:
        for client in self.clients.values():
            client.close()
        with ThreadPoolExecutor(max(1, len(self.servers))) as pool:
            list(pool.map(lambda server: server.stop(), self.servers.values()))


def _package_digest() -> str:
    """A digest of the measured package's sources, to tell runs of different code apart."""
    import hashlib
    digest = hashlib.sha256()
    for path in sorted((PLUGIN_PATH / "orthanc_cache_plugin").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# -- reporting -------------------------------------------------------------------------

def evaluate_targets(results: Results) -> List[Dict[str, Any]]:
    """The targets of the performance issue, met or not."""
    targets = []

    def ratio_target(name: str, group: str) -> None:
        rows = [row for row in results.loads if row["group"] == group]
        if not rows:
            return
        def ratio(row: Dict[str, Any]) -> float:
            return row["plugin"]["rps"] / max(row["floor"]["rps"], 1e-9)

        worst = min(rows, key=ratio)
        value = ratio(worst)
        status = "met" if value >= 0.8 else "minimum met (>= 0.6)" if value >= 0.6 else "MISSED"
        targets.append({"target": name, "goal": ">= 0.8 x floor (0.6 minimum)",
                        "measured": "worst %s x floor (%s, %d conns); best %s" % (
                            _ratio(value, 1), worst["scenario"], worst["connections"],
                            _ratio(max(ratio(row) for row in rows), 1)),
                        "status": status})

    ratio_target("hits", "hit")
    if results.codings:
        worst = min(results.codings, key=lambda row: row["mean"])
        targets.append({"target": "a browser's hits", "goal": ">= 0.8 x hits without "
                        "Accept-Encoding (mean of alternating rounds)",
                        "measured": "worst %.2f (%s, %d conns)" % (
                            worst["mean"], worst["scenario"], worst["connections"]),
                        "status": "met" if worst["mean"] >= 0.8 else "MISSED"})
    ratio_target("304 revalidations", "304")
    for kind, name in (("after write", "cold miss: first GET after a change"),
                       ("new key", "cold miss: first GET of a new key (stored)"),
                       ("browser, new key", "cold miss: a browser's first GET of a new key "
                                            "(compressed once, stored)")):
        rows = [row for row in results.cold if row["kind"] == kind]
        if rows:
            worst = max(rows, key=lambda row: row["ratio"])
            targets.append({"target": name, "goal": "<= 1.1 x plain (median latency)",
                            "measured": "worst %.3f x plain (%s)" % (worst["ratio"], ", ".join(
                                "%s: %.3f" % (row["scenario"].split(", ")[-1], row["ratio"])
                                for row in rows)),
                            "status": "met" if worst["ratio"] <= 1.1 else "MISSED"})
    if results.ingest:
        value = results.ingest["plugin"]["per_second"] / results.ingest["plain"]["per_second"]
        targets.append({"target": "ingest", "goal": ">= 0.95 x plain",
                        "measured": "%.2f x plain" % value,
                        "status": "met" if value >= 0.95 else "MISSED"})
    if len(results.scale) == 2:
        value = results.scale[1]["rps"] / results.scale[0]["rps"]
        targets.append({"target": "hits with %d entries" % results.scale[1]["entries"],
                        "goal": ">= 0.9 x with %d" % results.scale[0]["entries"],
                        "measured": "%.2f" % value, "status": "met" if value >= 0.9 else "MISSED"})
    if results.memory:
        extra = results.memory["plugin"]["VmRSS"] - results.memory["plain"]["VmRSS"]
        idle = results.memory_idle["plugin"]["VmRSS"] - results.memory_idle["plain"]["VmRSS"] \
            if results.memory_idle else extra
        targets.append({"target": "memory", "goal": "<= plain + 100 MB (resident)",
                        "measured": "plain %+.0f MB after priming, %+.0f MB after the run"
                                    % (idle, extra),
                        "status": "met" if max(idle, extra) <= 100 else "MISSED"})
    return targets


#: Share of the CPUs used by other processes beyond which a row is flagged.
NOISY = 0.10


def _ms(value: float) -> str:
    return "%.1f" % value if value < 100 else "%.0f" % value


def _load_cell(load: Dict[str, Any]) -> str:
    if not load.get("requests", 1):
        return "–"
    return "%s / %s" % (_ms(load["p50_ms"]), _ms(load["p99_ms"]))


def _rps(load: Dict[str, Any]) -> str:
    mark = "" if not load.get("errors") else " (%d err)" % load["errors"]
    if not load.get("requests", 1):
        return "0 (none done)" + mark
    return ("%.0f" % load["rps"] if load["rps"] >= 10 else "%.1f" % load["rps"]) + mark


def _bytes_cell(row: Dict[str, Any]) -> str:
    """Bytes per response of plain and the plugin, and gzip -6 of the body (hit rows)."""
    if "gzip6_bytes" not in row:
        return ""
    return "%s / %s (%s)" % (_size(row["plain"].get("bytes_per_response", 0)),
                             _size(row["plugin"].get("bytes_per_response", 0)),
                             _size(row["gzip6_bytes"]))


def _size(count: float) -> str:
    return "%.0f B" % count if count < 10_000 else "%.1f KB" % (count / 1000)


def _ratio(numerator: float, denominator: float) -> str:
    if not denominator:
        return "∞"
    value = numerator / denominator
    return "%.2f" % value if value >= 0.1 else "%.3f" % value


def markdown(results: Results) -> str:
    env = results.environment
    plan = results.plan
    lines = [
        "# Benchmark results%s" % (" (--quick)" if plan["quick"] else ""),
        "",
        "%s; Orthanc %s (stack %s%s); %s CPUs (%s); plugin at %s%s; %s; wrk runs of %d s." % (
            env.get("date"), env.get("orthanc"), env.get("stack", "bookworm"),
            ", AllowThreads" if env.get("allow_threads") else "", env.get("cpus"),
            env.get("cpu_model"), env.get("plugin_commit"),
            (" + uncommitted changes" if env.get("plugin_tree_modified") else "")
            + ("" if env.get("plugin_path") == str(REPO)
               else " (package from %s)" % env.get("plugin_path"))
            + " (sources digest %s)" % env.get("plugin_digest"),
            env.get("wrk"), plan["duration"]),
        "",
        "Run time %s s%s; other processes used at least %.0f %% of the CPUs meanwhile." % (
            env.get("seconds"),
            " (%.0f s of it waiting for idle servers before wrk runs, at most %g s each)" % (
                env["idle_wait_s"], plan.get("idle_timeout", 180)) if "idle_wait_s" in env
            else "", 100 * env.get("foreign_cpu", 0)),
        "",
        "## Throughput (wrk)",
        "",
        "Requests/s, and latency p50 / p99 in ms. Ratios are of requests/s.",
        "",
        "| Scenario | Conns | plain req/s | plugin req/s | floor req/s | plugin ÷ plain | plugin ÷ "
        "floor "
        "| plain p50 / p99 | plugin p50 / p99 | floor p50 / p99 | bytes/response plain / plugin "
        "(gzip -6 of the body) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    noisy = busy = False
    for row in results.loads:
        mark = ""
        if max(row[name].get("foreign_cpu", 0) for name in SERVERS) > NOISY:
            mark, noisy = " †", True
        if any(row[name].get("busy_at_start") for name in SERVERS):
            mark, busy = mark + " ‡", True
        lines.append("| %s%s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row["scenario"], mark, row["connections"], _rps(row["plain"]), _rps(row["plugin"]),
            _rps(row["floor"]), _ratio(row["plugin"]["rps"], row["plain"]["rps"]),
            _ratio(row["plugin"]["rps"], row["floor"]["rps"]), _load_cell(row["plain"]),
            _load_cell(row["plugin"]), _load_cell(row["floor"]), _bytes_cell(row)))
    density = results.density
    if density:
        lines += ["", "*Store density*: the answers of the spec scenario's studies (%d, %s "
                  "each on average as Orthanc sends them, %s gzip-compressed) written into a "
                  "store of MaximumSize %d MB and MemorySize %d MB until it evicts: it holds "
                  "%d entries (%d in memory) as sent, %d (%d in memory) compressed." % (
                      density["answers"], _size(density["identity_bytes"]),
                      _size(density["gzip"]["bytes"]), density["maximum_size"] // MB,
                      density["memory_size"] // MB, density["identity"]["stored"],
                      density["identity"]["in_memory"], density["gzip"]["stored"],
                      density["gzip"]["in_memory"])]
    if results.codings:
        lines += ["", "*A browser's hits ÷ hits without Accept-Encoding*, the plugin alone, "
                  "%d alternating rounds of each client (requests/s, round by round; mean): "
                  % len(results.codings[0]["ratios"]) + "; ".join(
                      "%s, %d connections: %s (%.2f)" % (
                          row["scenario"], row["connections"],
                          " ".join("%.2f" % ratio for ratio in row["ratios"]), row["mean"])
                      for row in results.codings) + "."]
    mixed = [row for row in results.loads if row["group"] == "mixed"]
    for row in mixed:
        lines += ["", "*%s*: one more client asks, one after the other, never-seen keys "
                  "(`shared-tags?mixed=N`) of the large study meanwhile; misses done: %s." % (
                      row["scenario"], ", ".join("%s %d" % (name, row[name].get("misses", 0))
                                                 for name in SERVERS))]
    if noisy:
        lines += ["", "† other processes used more than %d %% of the CPUs during one of the row's "
                  "runs (see `foreign_cpu` in results.json, an estimate that errs low)."
                  % (100 * NOISY)]
    if busy:
        lines += ["", "‡ one of the row's runs began while a server was still busy with the "
                  "requests an earlier run left queued, the wait for idle servers having given up "
                  "after %g s (`--idle-timeout`; `busy_at_start` and `idle_wait_s` in "
                  "results.json): that run shared the CPUs with it."
                  % plan.get("idle_timeout", 180)]
    lines += ["",
              "Revalidation rows send `If-None-Match` with the ETag of one earlier GET of the same "
              "server (plain Orthanc sends no ETag, so it gets the plugin's, and answers 200).", ""]
    if results.scale:
        lines += ["## Scale: hits with a small and a large store", "",
                  "The spec scenario's requests, on the plugin with a store of each size "
                  "(mean of %d alternating runs)." % plan["scale_rounds"], "",
                  "| Server | Entries in store | req/s | p50 / p99 ms | ratio |",
                  "|---|--:|--:|--:|--:|"]
        for row in results.scale:
            lines.append("| %s | %d | %.0f | %s | %.2f |" % (
                row["server"], row["entries"], row["rps"], _load_cell(row),
                row["rps"] / results.scale[0]["rps"]))
        lines.append("")
    if results.cold:
        lines += ["## Cold misses", "",
                  "Latency of one GET (ms, median / max of %d, one keep-alive connection). "
                  "*new key*: a query string never asked before (`?bench=N`), so the plugin "
                  "computes "
                  "and stores it; *after write*: `PUT /studies/{id}/metadata/1024` then `GET`, "
                  "which "
                  "the plugin answers unsettled (computed by Orthanc, not stored) for 5 s; "
                  "*browser, new key*: a new key of `instances-tags` asked with "
                  "`Accept-Encoding: gzip, deflate, br` (the plugin gzips it once before "
                  "storing). The floor "
                  "has no notion of change: not measured." % plan["cold_repeats"], "",
                  "| Scenario | plain median / max | plugin median / max | plugin ÷ plain (median) "
                  "|",
                  "|---|--:|--:|--:|"]
        for row in results.cold:
            lines.append("| %s | %s / %s | %s / %s | %.2f |" % (
                row["scenario"], _ms(row["plain"]["p50_ms"]), _ms(row["plain"]["max_ms"]),
                _ms(row["plugin"]["p50_ms"]), _ms(row["plugin"]["max_ms"]), row["ratio"]))
        lines.append("")
    if results.ingest:
        plain = results.ingest["plain"]["per_second"]
        lines += ["## Ingest", "",
                  "%d new studies of %d instances each uploaded to every server with %d "
                  "connections "
                  "(`POST /instances`), the servers' order rotating; warm-up on (default "
                  "`StableAge`: "
                  "it runs 60 s after the last upload)." % (
                      plan["ingest_rounds"], plan["ingest"], plan["upload_threads"]), "",
                  "| Server | instances/s (all rounds) | per round | ratio to plain |",
                  "|---|--:|--:|--:|"]
        for name in SERVERS:
            value = results.ingest[name]["per_second"]
            lines.append("| %s | %.0f | %s | %.2f |" % (
                name, value,
                ", ".join("%.0f" % run["per_second"]
                          for run in results.ingest[name].get("rounds", [])),
                value / plain))
        lines.append("")
    if results.memory:
        lines += ["## Memory", "", "Resident memory of each Orthanc process (`VmRSS`, and the peak "
                  "`VmHWM`, from /proc/PID/status), once started and primed, and at the end of the "
                  "run. "
                  "Large answers computed or sent by many threads at once leave freed memory in "
                  "glibc's per-thread arenas: the figures after the run mostly tell how much of "
                  "that each server went through.", "",
                  "| Server | VmRSS after priming MB | VmRSS after the run MB | VmHWM MB |",
                  "|---|--:|--:|--:|"]
        for name, values in results.memory.items():
            idle = results.memory_idle.get(name, {}).get("VmRSS")
            lines.append("| %s | %s | %.0f | %.0f |" % (
                name, "%.0f" % idle if idle is not None else "–", values["VmRSS"], values["VmHWM"]))
        lines.append("")
    if results.targets:
        lines += ["## Targets", "", "| Target | Goal | Measured | Status |", "|---|---|---|---|"]
        for target in results.targets:
            lines.append("| %s | %s | %s | %s |" % (target["target"], target["goal"],
                                                   target["measured"], target["status"]))
        lines.append("")
    return "\n".join(lines)


def chart(results: Results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain_numbers = FuncFormatter(lambda value, _: "%g" % value)
    colors = {"plain": "#8c8c8c", "plugin": "#1f77b4", "floor": "#2ca02c", "plugin-100k": "#17becf"}
    figure = plt.figure(figsize=(15, 10))
    grid = figure.add_gridspec(2, 4, height_ratios=(3, 2))
    main = figure.add_subplot(grid[0, :])
    labels = ["%s, c%d" % (re.sub(r"(\d+) instances", r"\1", row["scenario"])
                           .replace("shared-tags of ", "").replace(", random", " random"),
                           row["connections"])
              for row in results.loads]
    width = 0.27
    for offset, name in enumerate(SERVERS):
        xs = [index + (offset - 1) * width for index in range(len(results.loads))]
        main.bar(xs, [row[name]["rps"] for row in results.loads], width, label=name,
                 color=colors[name])
    main.set_xticks(range(len(results.loads)))
    main.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    main.set_yscale("log")
    main.yaxis.set_major_formatter(plain_numbers)
    main.set_ylabel("requests/s (log)")
    main.set_title("Throughput per scenario (wrk)")
    main.legend()
    main.grid(axis="y", which="both", alpha=0.3)

    scale = figure.add_subplot(grid[1, 0])
    if results.scale:
        names = ["%s\n%d entries" % (row["server"], row["entries"]) for row in results.scale]
        scale.bar(names, [row["rps"] for row in results.scale],
                  color=[colors[row["server"]] for row in results.scale])
    scale.set_title("Hits vs store size (req/s)", fontsize=9)
    scale.tick_params(labelsize=7)

    cold = figure.add_subplot(grid[1, 1])
    if results.cold:
        for offset, name in enumerate(("plain", "plugin")):
            xs = [index + (offset - 0.5) * 0.4 for index in range(len(results.cold))]
            cold.bar(xs, [row[name]["p50_ms"] for row in results.cold], 0.4, label=name,
                     color=colors[name])
        cold.set_xticks(range(len(results.cold)))
        cold.set_xticklabels([row["scenario"].replace(": ", "\n").replace(", ", "\n")
                              for row in results.cold], fontsize=6)
        cold.set_yscale("log")
        cold.yaxis.set_major_formatter(plain_numbers)
        cold.yaxis.set_minor_formatter(plain_numbers)
        cold.tick_params(axis="y", which="both", labelsize=6)
        cold.legend(fontsize=7)
    cold.set_title("Cold miss, median latency (ms, log)", fontsize=9)

    ingest = figure.add_subplot(grid[1, 2])
    if results.ingest:
        ingest.bar(list(SERVERS), [results.ingest[name]["per_second"] for name in SERVERS],
                   color=[colors[name] for name in SERVERS])
    ingest.set_title("Ingest (instances/s)", fontsize=9)

    memory = figure.add_subplot(grid[1, 3])
    if results.memory:
        names = list(results.memory)
        xs = range(len(names))
        if results.memory_idle:
            memory.bar([x - 0.2 for x in xs],
                       [results.memory_idle[name]["VmRSS"] for name in names],
                       0.4, color=[colors[name] for name in names], alpha=0.45,
                       label="after priming")
        memory.bar([x + 0.2 for x in xs], [results.memory[name]["VmRSS"] for name in names], 0.4,
                   color=[colors[name] for name in names], label="after the run")
        memory.set_xticks(list(xs))
        memory.set_xticklabels(names)
        memory.tick_params(labelsize=7)
        memory.legend(fontsize=7)
    memory.set_title("Resident memory, VmRSS (MB)", fontsize=9)

    figure.suptitle("orthanc-cache-plugin: plain Orthanc vs plugin vs floor (%s, %s CPUs)" % (
        results.environment.get("date"), results.environment.get("cpus")))
    figure.tight_layout()
    figure.savefig(str(path), dpi=110)
    plt.close(figure)


# -- profile summary ----------------------------------------------------------------------

_LINE = re.compile(r" \((.*?):\d+\)$")
_ADDRESS = re.compile(r"^0x[0-9a-f]+ \((.*)\)$")


def _frame_name(frame: str, lines: bool) -> str:
    """``func (file:line)`` -> ``func (file)`` unless ``lines``;
    ``0x7f.. (lib.so)`` -> ``[lib.so]``."""
    address = _ADDRESS.match(frame)
    if address:
        return "[%s]" % address.group(1)
    return frame if lines else _LINE.sub(r" (\1)", frame)


def summarize_profile(raw: Path, top: int = 20, within: Optional[str] = None) -> str:
    """Top functions by own and by total samples, from py-spy's collapsed stacks (``--format raw``).

    Functions are merged across their lines (a second table lists the
    busiest lines).  With ``within``, only stacks through a frame containing
    that text count (e.g. the request callback, leaving idle threads out).
    """
    own: Dict[str, int] = {}
    total: Dict[str, int] = {}
    own_lines: Dict[str, int] = {}
    samples = skipped = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";")
                  if not frame.startswith(("process ", "thread "))]
        if not frames or (within and not any(within in frame for frame in frames)):
            skipped += count
            continue
        samples += count
        names = [_frame_name(frame, False) for frame in frames]
        own[names[-1]] = own.get(names[-1], 0) + count
        own = _frame_name(frames[-1], True)
        own_lines[own] = own_lines.get(own, 0) + count
        for name in set(names):
            total[name] = total.get(name, 0) + count
    if not samples:
        return "no samples\n"
    lines = ["%d samples%s." % (samples, "" if not within else
                                " in stacks through `%s` (%d others left out)" % (within, skipped)),
             "", "| own % | function (own: the sample's innermost frame) |", "|--:|---|"]
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append("| %.1f | `%s` |" % (100 * count / samples, name))
    lines += ["", "| total % | function (total: anywhere in the stack) |", "|--:|---|"]
    for name, count in sorted(total.items(), key=lambda item: -item[1])[:top]:
        lines.append("| %.1f | `%s` |" % (100 * count / samples, name))
    lines += ["", "| own % | line |", "|--:|---|"]
    for name, count in sorted(own_lines.items(), key=lambda item: -item[1])[:12]:
        lines.append("| %.1f | `%s` |" % (100 * count / samples, name))
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 s wrk runs (smoke test)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5; quick 1)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="output directory")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the hit path with py-spy (installed into .venv)")
    parser.add_argument("--plugin-path", type=Path, default=REPO,
                        help="folder holding the orthanc_cache_plugin package to measure "
                             "(default: this working tree), e.g. a variant to compare")
    parser.add_argument("--stack", choices=("sid", "bookworm", "trixie", "host"), default="sid",
                        help="the Orthanc to measure: a root of scripts/stack.sh (sid: Orthanc "
                             "1.13.0, plugin 7.1; bookworm: 1.10.1, plugin 4.0; trixie: 1.12.7, "
                             "plugin 5.0) or the host's")
    parser.add_argument("--allow-threads", action="store_true",
                        help='run every Orthanc with "Python": {"AllowThreads": true} '
                             '(plugin 4.3+)')
    parser.add_argument("--only-hits", action="store_true",
                        help="only hits and 304s (wrk alone and as a browser) and the store "
                             "density, and a browser's cold misses")
    parser.add_argument("--only-mixed", action="store_true",
                        help="measure only hits beside misses (2 small studies, a big study "
                             "of --big instances): for comparing settings such as AllowThreads")
    parser.add_argument("--big", type=int, help="instances of the big study (default 1000)")
    parser.add_argument("--idle-timeout", type=float,
                        help="longest wait, in seconds, for idle servers before each wrk run "
                             "(default 180): servers still busy then are named, and the row "
                             "marked")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write the table and chart again from "
                             "--out/results.json")
    parser.add_argument("--keep", action="store_true", help="keep the servers' working directory")
    args = parser.parse_args(argv)
    ensure_environment(args.profile)
    if args.render:
        out = args.out.resolve()
        render(Results(**json.loads((out / "results.json").read_text())), out)
        return 0

    _import_support()
    from support import stacks
    stacks.select(args.stack)
    if args.allow_threads:
        COMMON_CONFIG["Python"] = {"AllowThreads": True}
    global PLUGIN_PATH
    PLUGIN_PATH = args.plugin_path.resolve()
    if not (PLUGIN_PATH / "orthanc_cache_plugin" / "__init__.py").is_file():
        parser.error("no orthanc_cache_plugin package in %s" % PLUGIN_PATH)
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.duration:
        plan.duration = args.duration
    if args.big:
        plan.big = args.big
    if args.idle_timeout is not None:
        plan.idle_timeout = args.idle_timeout
    if args.only_mixed:
        plan.spec_studies, plan.ingest_rounds = 2, 0
    if args.only_hits:
        plan.ingest_rounds = 0
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-bench-"))
    began = time.monotonic()
    bench = Bench(plan, out, workdir, args.profile)
    try:
        base, big, ingest = bench.generate()
        bench.set_up(base, big)
        if args.only_mixed:
            bench.mixed()
            (out / "results.json").write_text(json.dumps(bench.results.__dict__, indent=2))
            for row in bench.results.loads:
                print(json.dumps(row))
            return 0
        watch = CpuWatch(*(server.pid for server in bench.servers.values()))
        bench.throughput()
        bench.density()
        bench.codings()
        if args.only_hits:
            bench.cold(kinds=("browser, new key",))
            bench.results.environment["foreign_cpu"] = watch.foreign()
            bench.results.environment["idle_wait_s"] = round(bench.wrk.idle_waited)
            bench.results.environment["seconds"] = round(time.monotonic() - began)
            (out / "results.json").write_text(json.dumps(bench.results.__dict__, indent=2))
            (out / "results.md").write_text(markdown(bench.results))
            print(markdown(bench.results))
            return 0
        bench.spec_and_scale()
        bench.mixed()
        if args.profile:
            bench.profile()
        bench.cold()        # writes: after every read-only scenario
        bench.ingest(ingest)
        bench.memory()
        bench.results.environment["foreign_cpu"] = watch.foreign()
        bench.results.environment["idle_wait_s"] = round(bench.wrk.idle_waited)
    except BaseException:
        (out / "results-partial.json").write_text(json.dumps(bench.results.__dict__, indent=2))
        raise
    finally:
        bench.stop()
        if args.keep:
            _log("servers' files kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results = bench.results
    results.environment["seconds"] = round(time.monotonic() - began)
    (out / "results.json").write_text(json.dumps(results.__dict__, indent=2))
    render(results, out)
    _log("done in %d s: %s, %s" % (results.environment["seconds"], out / "results.md",
                                   out / "chart.png"))
    return 0


def render(results: Results, out: Path) -> None:
    """Write results.md (printed too), chart.png and, after --profile, profile.md."""
    results.targets = evaluate_targets(results)
    (out / "results.json").write_text(json.dumps(results.__dict__, indent=2))
    report = markdown(results)
    if results.profile:
        sections = ["# Profile of the hit path", "",
                    "wrk with 8 connections on `GET %s` (a hit) while py-spy samples the plugin's "
                    "Orthanc." % results.profile["url"], ""]
        for run in results.profile["runs"]:
            sections += ["## %s" % run["mode"], "", "`%s` (%.0f req/s while profiled)" % (
                run["command"], run["rps_while_profiled"]), ""]
            raw = out / run["file"]
            sections.append(summarize_profile(raw, within=run["within"]) if raw.exists() else
                            "py-spy failed:\n```\n%s\n```\n" % run["py_spy_output"])
        (out / "profile.md").write_text("\n".join(sections))
    (out / "results.md").write_text(report)
    chart(results, out / "chart.png")
    print(report)


if __name__ == "__main__":
    sys.exit(main())
