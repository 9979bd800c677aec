#!/usr/bin/env python3
"""Three Orthanc nodes behind nginx round-robin: per-node disk stores versus the shared store.

One command (as root, from the repository's root, after ``scripts/test.sh`` made the
virtual environment and the stacks)::

    .venv/bin/python bench/cluster.py [--stack sid|bookworm] [--duration 5]   # ~4 minutes
    .venv/bin/python bench/cluster.py --quick    # tiny data, 1 s wrk runs: a smoke test

It starts PostgreSQL (the orthanc-postgresql index), one redis-server, three
Orthanc nodes with the plugin sharing that index and one StorageDirectory,
and nginx in front of them (one upstream of the three nodes, round-robin, no
nginx cache).  Then, for each configuration of the ``CachePlugin`` section in
turn, on the same data (the same DICOM files, uploaded into a database of
their own for each configuration):

* **disk**: per-node disk stores (``"Backend": "disk"``, each node its own
  ``Directory``);
* **redis**: the shared store (``"Backend": "redis"``, one ``RedisUrl`` and one
  ``KeyPrefix`` for the cluster, each node its own ``Directory`` for its state
  files);

it measures, through nginx:

1. **after warm-up on node 1**: the studies are uploaded to node 1 only
   (``StableAge`` 2 s, so that its warm-up computes shared-tags, instances-tags
   and attachments of every patient, study and series); once node 1's warm-up
   is done, every URL is read three times in a row through nginx (one
   connection), so that each node gets each URL once;
2. **steady state**: every node having served every URL, wrk reads them at
   random through nginx;
3. **right after node 2 restarts**: node 2 is stopped and started again with
   the same settings, and every URL is read three times again, at once;
4. **node 2 rescheduled**: the same with a new, empty ``Directory`` (a
   container moved to another host without its volume).

For each: the hit ratio (the plugin's ``X-Cache-Status``, as nginx logged it
for each request, with the node that answered), throughput and latency.
Then the **cost of a hit** end to end: wrk straight to node 1 (answers in its
memory front) and to node 3 restarted with ``MemorySize`` 0 (every hit read
from its store: disk or Redis).  Last, in this process, the **cost of one
``Store.get``** of a 20 KB and a 500 KB entry from the memory front, from disk
(diskcache, memory front off) and from Redis (memory front off).

It writes ``cluster-STACK.md`` (also printed) and ``cluster-STACK.json`` to
``--out`` (default ``bench/results``), and the chart to ``--chart`` (default
``docs/cluster-STACK.png``; with ``--quick``, into ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)

REPO = run.REPO
NODES = 3
#: The configurations compared, in the order they run.
STORES = ("disk", "redis")
#: One key prefix for the whole cluster (the shared store).
KEY_PREFIX = "orthanc-cache:bench-cluster:"
#: What the plugin's X-Cache-Status may say, in the order the tables list them.
OUTCOMES = ("HIT", "MISS", "STALE-REFRESHED", "REVALIDATED", "BYPASS", "PASS")
#: The counters of GET /cache/statistics, by the outcome they count.
STATISTICS = {"HIT": "Hits", "MISS": "Misses", "STALE-REFRESHED": "StaleRefreshed",
              "REVALIDATED": "NotModified", "BYPASS": "Bypasses", "PASS": "PassedThrough"}
#: The plugin's warnings at every start (not worth reporting).
STARTING = r"cache plugin: (version \S+ active|archive and media left|\S+ kept loaded)"
ACTIVE = r"cache plugin: version \S+ active, store in .* \(available\)"
MB = 1024 * 1024

#: nginx: the three nodes round-robin (nginx's default), keep-alive connections to them
#: (closed before Orthanc closes them itself, after 1 s idle), no cache; one log line per
#: request with the node that answered and what the plugin did.
SITE = """\
upstream orthanc_nodes {
%(servers)s
    keepalive 64;
    keepalive_timeout 500ms;
}

log_format cluster "$upstream_addr\\t$upstream_http_x_cache_status\\t$status";

server {
    listen 127.0.0.1:@PORT@;
    access_log @PREFIX@/cluster.log cluster;

    location / {
        proxy_pass http://orthanc_nodes;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffers 64 16k;
        proxy_busy_buffers_size 64k;
        proxy_max_temp_file_size 0;
    }
}
"""


@dataclass
class Plan:
    """Sizes and durations of one run."""

    quick: bool = False
    studies: int = 10                   # one patient, one series each
    instances: int = 25                 # per study
    duration: int = 5                   # seconds per wrk run
    connections: int = 16               # wrk through nginx
    e2e_connections: int = 8            # wrk straight to one node
    stable_age: int = 2                 # Orthanc's StableAge: when warm-up starts
    warm_up_timeout: float = 180.0
    micro_gets: int = 2000              # Store.get calls per measurement (5 batches)
    body_sizes: Tuple[int, ...] = (20_000, 500_000)
    idle_timeout: float = 60.0

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(quick=True, studies=3, instances=3, duration=1, connections=4,
                   e2e_connections=4, micro_gets=200, idle_timeout=20.0)


class Endpoint(NamedTuple):
    """What run.Wrk loads: a port (and a pid)."""

    port: int
    pid: int


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def _wait_for(condition: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("%s: not after %.0f s" % (what, timeout))
        time.sleep(every)


# -- nginx's log: who answered, and what the plugin did -----------------------------------

@dataclass
class Tally:
    """Outcomes (X-Cache-Status) of the requests nginx logged, per node."""

    nodes: Dict[str, Counter] = field(default_factory=dict)
    errors: int = 0       # statuses other than 200 and 304

    def add(self, node: str, outcome: str, status: str) -> None:
        self.nodes.setdefault(node, Counter())[outcome or "none"] += 1
        if status not in ("200", "304"):
            self.errors += 1

    def total(self, node: Optional[str] = None) -> Counter:
        if node is not None:
            return self.nodes.get(node, Counter())
        found: Counter = Counter()
        for counts in self.nodes.values():
            found.update(counts)
        return found

    def hit_ratio(self, node: Optional[str] = None) -> Optional[float]:
        counts = self.total(node)
        requests = sum(counts.values())
        return counts["HIT"] / requests if requests else None

    def as_dict(self) -> Dict[str, Any]:
        return {"hit_ratio": self.hit_ratio(), "outcomes": dict(self.total()),
                "errors": self.errors,
                "nodes": {node: {"hit_ratio": self.hit_ratio(node), "outcomes": dict(counts)}
                          for node, counts in sorted(self.nodes.items())}}


class AccessLog:
    """nginx's ``cluster`` log, read from a mark to its end."""

    def __init__(self, path: Path, ports: Sequence[int]):
        self.path = path
        self.names = {"127.0.0.1:%d" % port: "node %d" % (index + 1)
                      for index, port in enumerate(ports)}

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, offset: int) -> Tally:
        """The requests logged after ``offset``, once the log stopped growing (nginx
        writes a line when it has answered, after the client got the answer)."""
        size = -1
        while size != self.mark():
            size = self.mark()
            time.sleep(0.3)
        tally = Tally()
        with self.path.open("rb") as log:
            log.seek(offset)
            for line in log.read().decode("utf-8", "replace").splitlines():
                fields = line.split("\t")
                if len(fields) != 3 or fields[2] == "499":
                    continue  # 499: a request wrk left unanswered when it stopped
                upstream, outcome, status = fields
                # Several addresses when nginx tried another node: the last answered.
                address = upstream.split(",")[-1].strip()
                tally.add(self.names.get(address, address), outcome.strip("-"), status)
        return tally


# -- the cluster ----------------------------------------------------------------------------

class Cluster:
    """Three plugin nodes on one PostgreSQL database and one StorageDirectory."""

    def __init__(self, workdir: Path, store: str, postgres: Any, redis_url: str, plan: Plan):
        self.store = store
        self.workdir = workdir
        database = "orthanc_%s" % store
        postgres.create_database(database)
        self.nodes = []
        for number in range(1, NODES + 1):
            node = run.make_server(workdir / ("node-%d" % number), "plugin",
                                   workdir / ("cache-%d" % number))
            node.config.update(postgres.orthanc_config(database=database))
            node.config.update({"StorageDirectory": str(workdir / "storage"),
                                "StableAge": plan.stable_age})
            section = node.config["CachePlugin"]
            if store == "redis":
                section.update({"Backend": "redis", "RedisUrl": redis_url,
                                "KeyPrefix": KEY_PREFIX})
            else:
                section["Backend"] = "disk"
            self.nodes.append(node)

    @property
    def pids(self) -> List[int]:
        return [node.pid for node in self.nodes]

    def start(self) -> None:
        # One after the other, from this thread: the first node creates the database schema,
        # and the harness kills Orthanc when the thread that started it ends.
        for node in self.nodes:
            self.start_node(node)

    @staticmethod
    def start_node(node: Any) -> float:
        """Start a node and wait for the plugin; the seconds it took."""
        began = time.monotonic()
        node.start(60)
        node.wait_for_log(ACTIVE, 30)
        return time.monotonic() - began

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def warnings(self) -> List[str]:
        """The plugin's warnings in the nodes' logs, but those of every start."""
        found = []
        for number, node in enumerate(self.nodes, 1):
            for line in node.log_text().splitlines():
                if line.startswith("W") and "cache plugin:" in line and not re.search(
                        STARTING, line):
                    found.append("node %d: %s" % (number, line.split("] ", 1)[-1]))
        return found


class Bench:
    def __init__(self, plan: Plan, out: Path, workdir: Path, stack: str):
        self.plan = plan
        self.out = out
        self.workdir = workdir
        self.stack = stack
        self.wrk = run.Wrk(out, "cluster-%s-wrk.log" % stack)
        self.wrk.idle_timeout = plan.idle_timeout
        self.results: Dict[str, Any] = {"plan": dict(plan.__dict__), "environment": {},
                                        "scenarios": [], "end_to_end": [], "micro": []}
        self.postgres: Any = None
        self.redis: Any = None
        self.nginx: Any = None
        self.cluster: Optional[Cluster] = None
        self.urls: List[str] = []
        self.warm_ups = 0

    # -- set-up ---------------------------------------------------------------------------

    def generate(self) -> List[bytes]:
        run._import_support()
        from support.dicom_factory import make_study

        files: List[bytes] = []
        for number in range(self.plan.studies):
            files += make_study("CLUSTER-%03d" % number, 1, self.plan.instances,
                                seed="bench-cluster-%d" % number)
        return files

    def start_services(self) -> None:
        run._import_support()
        from support.postgres import PostgresServer
        from support.redis_server import RedisServer

        self.postgres = PostgresServer().start()
        self.redis = RedisServer().start()
        run._log("PostgreSQL on :%d, redis-server on :%d" % (self.postgres.port, self.redis.port))

    def start_cluster(self, store: str) -> Cluster:
        from support.nginx import NginxServer

        cluster = self.cluster = Cluster(self.workdir / store, store, self.postgres,
                                         self.redis.url, self.plan)
        began = time.monotonic()
        cluster.start()
        ports = [node.port for node in cluster.nodes]
        servers = "\n".join("    server 127.0.0.1:%d;" % port for port in ports)
        self.nginx = NginxServer(SITE % {"servers": servers}).start()
        self.log = AccessLog(self.nginx.workdir / "cluster.log", ports)
        self._quiet()
        run._log("%s: nodes on %s, nginx on :%d (%.0f s)" % (
            store, ", ".join(":%d" % port for port in ports), self.nginx.port,
            time.monotonic() - began))
        return cluster

    def _quiet(self) -> None:
        """The processes the wrk runs wait for (idle) and do not count as foreign."""
        assert self.cluster is not None
        self.wrk.quiet_pids = self.cluster.pids
        self.wrk.names = {node.pid: "node %d" % (index + 1)
                          for index, node in enumerate(self.cluster.nodes)}

    def stop_cluster(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def stop(self) -> None:
        self.stop_cluster()
        if self.redis is not None:
            self.redis.remove()  # stops it and removes its directory
        if self.postgres is not None:
            self.postgres.stop()  # removes its directory too

    def upload(self, files: List[bytes]) -> None:
        """Upload to node 1 only, and wait until its warm-up has stored every resource."""
        assert self.cluster is not None
        first = self.cluster.nodes[0]
        # One connection: concurrent uploads into one study make PostgreSQL transactions
        # fail to serialize (Orthanc answers 503, and a stable event went missing once).
        seconds, parents = run.upload_all(first.port, files, 1)
        studies = list(dict.fromkeys(parents))
        urls = []
        for study in studies:
            found = first.get("/studies/%s" % study).json()
            series, patient = found["Series"][0], found["ParentPatient"]
            urls += ["/studies/%s/shared-tags" % study, "/studies/%s/instances-tags" % study,
                     "/series/%s/shared-tags" % series, "/series/%s/instances-tags" % series,
                     "/patients/%s/shared-tags" % patient]
        self.urls = urls
        resources = 3 * len(studies)  # a patient, a study and a series each

        began = time.monotonic()
        last: List[Any] = [None, began]  # warm-ups done, and since when

        def warmed() -> bool:
            figures = first.get("/cache/statistics").json()
            done, now = figures["WarmUpsDone"], time.monotonic()
            if done != last[0]:
                last[:] = [done, now]
            if figures["WarmUpQueue"]:
                return False
            # Every resource, or no progress for a while (a stable event Orthanc never sent).
            return done >= resources or (done and now - last[1] > 10
                                         and now - began > self.plan.stable_age + 20)

        _wait_for(warmed, self.plan.warm_up_timeout, "warm-up of node 1")
        self.warm_ups = last[0]
        if self.warm_ups < resources:
            run._log("node 1 warmed %d resources of %d" % (self.warm_ups, resources))
        run._log("uploaded %d instances to node 1 in %.1f s; its warm-up of %d resources "
                 "done %.1f s later" % (len(files), seconds, self.warm_ups,
                                        time.monotonic() - began))

    # -- scenarios ----------------------------------------------------------------------

    def _record(self, row: Dict[str, Any]) -> None:
        self.results["scenarios"].append(row)
        tally = row["tally"]
        run._log("%-6s %-32s hit ratio %s (%s), %.0f req/s, p50 %.1f ms, p99 %.1f ms" % (
            row["store"], row["scenario"], _share(tally["hit_ratio"]),
            ", ".join("%s %s" % (node, _share(values["hit_ratio"]))
                      for node, values in tally["nodes"].items()),
            row["rps"], row["p50_ms"], row["p99_ms"]))

    def first_reads(self, scenario: str, **extra: Any) -> None:
        """Every URL read three times in a row through nginx, on one connection: with
        round-robin, each node gets each URL once."""
        assert self.cluster is not None
        client = run.Client(self.nginx.port)
        offset = self.log.mark()
        times = []
        began = time.perf_counter()
        for url in self.urls:
            for _ in range(NODES):
                status, _, body, seconds = client.get(url)
                if status != 200:
                    raise RuntimeError("%s answered %d through nginx: %r" % (url, status,
                                                                            body[:200]))
                times.append(seconds)
        elapsed = time.perf_counter() - began
        client.close()
        tally = self.log.since(offset)
        self._record(dict(extra, store=self.cluster.store, scenario=scenario, kind="first reads",
                          connections=1, requests=len(times), rps=len(times) / elapsed,
                          p50_ms=1000 * _percentile(times, 0.5),
                          p99_ms=1000 * _percentile(times, 0.99), tally=tally.as_dict()))

    def steady(self, scenario: str) -> None:
        """wrk through nginx on every URL at random."""
        assert self.cluster is not None
        label = "%s: %s" % (self.cluster.store, scenario)
        idle = self.wrk.wait_idle(label)
        offset = self.log.mark()
        load = self.wrk.run(Endpoint(self.nginx.port, self.nginx.process.pid),
                            [(url, "") for url in self.urls], self.plan.connections,
                            self.plan.duration, label, idle=idle,
                            measured=[*self.cluster.pids, self.nginx.process.pid])
        tally = self.log.since(offset)
        self._record(dict(store=self.cluster.store, scenario=scenario, kind="wrk",
                          connections=self.plan.connections, requests=load.requests,
                          rps=load.rps, p50_ms=load.p50_ms, p99_ms=load.p99_ms,
                          wrk_errors=load.errors, foreign_cpu=load.foreign_cpu,
                          busy_at_start=load.busy_at_start, tally=tally.as_dict()))

    def restart_node(self, number: int, empty_directory: bool) -> float:
        """Stop node ``number`` and start it again (with a new, empty Directory if
        ``empty_directory``); the seconds until its plugin was active."""
        assert self.cluster is not None
        node = self.cluster.nodes[number - 1]
        node.stop()
        if empty_directory:
            directory = self.cluster.workdir / ("cache-%d-rescheduled" % number)
            node.config["CachePlugin"]["Directory"] = str(directory)
        seconds = self.cluster.start_node(node)
        self._quiet()
        return seconds

    def end_to_end(self) -> None:
        """Hits straight to one node: node 1 (memory front), then node 3 restarted with
        MemorySize 0 (every hit read from the store)."""
        assert self.cluster is not None
        study = self.urls[0].split("/")[2]
        targets = {"shared-tags": "/studies/%s/shared-tags" % study,
                   "instances-tags": "/studies/%s/instances-tags" % study}
        for number, source in ((1, "memory front"), (3, self.cluster.store)):
            node = self.cluster.nodes[number - 1]
            if number == 3:
                node.stop()
                node.config["CachePlugin"]["MemorySize"] = 0
                self.cluster.start_node(node)
                self._quiet()
            client = run.Client(node.port)
            for route, url in targets.items():
                label = "%s: end to end, %s, %s" % (self.cluster.store, source, route)
                self.wrk.wait_idle(label)
                # Until a hit from this node's store (a store that failed, e.g. a Redis call
                # beyond RedisTimeout on a busy machine, is left alone for 5 s).
                outcomes = []
                deadline = time.monotonic() + 30
                while True:
                    status, headers, body, _ = client.get(url)
                    outcomes.append(headers.get("X-Cache-Status"))
                    if status == 200 and outcomes[-1] == "HIT":
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("node %d answered %s to %s" % (number, outcomes, url))
                    time.sleep(0 if outcomes[-1] in ("MISS", "STALE-REFRESHED") else 0.5)
                if "BYPASS" in outcomes:
                    run._log("%s: BYPASS before a hit (%s)" % (label, " ".join(
                        outcome for outcome in outcomes if outcome)))
                before = node.get("/cache/statistics").json()
                load = self.wrk.run(node, [(url, "")], self.plan.e2e_connections,
                                    self.plan.duration, label, measured=self.cluster.pids)
                after = node.get("/cache/statistics").json()
                counts = {outcome: after[name] - before[name]
                          for outcome, name in STATISTICS.items() if after[name] > before[name]}
                row = {"store": self.cluster.store, "source": source, "route": route,
                       "bytes": len(body), "connections": self.plan.e2e_connections,
                       "priming": outcomes, "outcomes": counts,
                       "hit_ratio": counts.get("HIT", 0) / max(1, sum(counts.values())),
                       **load.as_dict()}
                self.results["end_to_end"].append(row)
                run._log("%s: %.0f req/s, p50 %.2f ms (%d bytes)" % (label, load.rps,
                                                                     load.p50_ms, len(body)))
            client.close()

    def measure(self, store: str, files: List[bytes]) -> None:
        self.start_cluster(store)
        try:
            self.upload(files)
            self.first_reads("after warm-up on node 1", warm_ups=self.warm_ups,
                             resources=3 * self.plan.studies)
            self.steady("steady state (every node served)")
            seconds = self.restart_node(2, empty_directory=False)
            self.first_reads("right after node 2 restarts", restart_s=seconds)
            seconds = self.restart_node(2, empty_directory=True)
            self.first_reads("node 2 rescheduled (empty Directory)", restart_s=seconds)
            self.end_to_end()
        finally:
            if self.cluster is not None:
                self.results.setdefault("warnings", {})[store] = self.cluster.warnings()
            self.stop_cluster()

    # -- the cost of one Store.get ------------------------------------------------------

    def micro(self) -> None:
        """µs per ``Store.get`` of one entry, in this process."""
        from orthanc_cache_plugin.core.data import Entry
        from orthanc_cache_plugin.store.facade import Store
        from orthanc_cache_plugin.store.redis_backend import RedisOptions

        folder = self.workdir / "micro"
        options = RedisOptions(self.redis.url, "orthanc-cache:bench-micro:", 0.1)
        stores = {
            "memory front": Store(str(folder / "memory"), 1024 * MB, 604800, run._log,
                                  memory=64 * MB),
            "disk": Store(str(folder / "disk"), 1024 * MB, 604800, run._log),
            "redis": Store(str(folder / "redis"), 1024 * MB, 604800, run._log, redis=options),
        }
        # (name in the table, store, close the thread's SQLite connection after each get
        # as the plugin does at the end of every request that opened one, with another
        # thread holding a connection meanwhile as the warm-up thread of a node does:
        # without one, each close is the last and SQLite checkpoints its log then)
        cases = [("memory front", "memory front", False, False), ("disk", "disk", False, False),
                 ("disk, connection per get", "disk", True, True),
                 ("disk, connection per get, no other", "disk", True, False),
                 ("redis", "redis", False, False)]
        gets = self.plan.micro_gets
        try:
            for size in self.plan.body_sizes:
                # A JSON answer of exactly ``size`` bytes.
                body = json.dumps({"0010,0010": {"Name": "PatientName", "Type": "String",
                                                 "Value": ""}}).encode()
                body = body.replace(b'"Value": ""', b'"Value": "%s"' % (b"x" * (size - len(body))))
                entry = Entry("salt|20240101T000000|base|", "application/json", body)
                key = "/studies/micro-%d/instances-tags?#" % size
                for store in stores.values():
                    if not store.set(key, entry):
                        raise RuntimeError("%s: could not store the entry" % store.location)
                for name, which, close, other in cases:
                    store = stores[which]
                    found = store.get(key)
                    if found is None or found.body != body:
                        raise RuntimeError("%s: the entry did not come back" % name)
                    release = threading.Event()
                    holder = threading.Thread(target=_hold_connection,
                                              args=(store, key, release))
                    if other:
                        holder.start()
                        time.sleep(0.1)
                    batches = []
                    for _ in range(5):
                        began = time.perf_counter()
                        for _ in range(gets // 5):
                            store.get(key)
                            if close:
                                store.close_thread_connection()
                        batches.append((time.perf_counter() - began) / (gets // 5) * 1e6)
                    store.close_thread_connection()
                    release.set()
                    if other:
                        holder.join()
                    self.results["micro"].append({"source": name, "bytes": len(entry.encode()),
                                                  "body_bytes": len(body),
                                                  "us": statistics.median(batches),
                                                  "batches_us": batches})
                    run._log("Store.get, %s, %d bytes: %.1f µs" % (name, len(body),
                                                                 statistics.median(batches)))
        finally:
            for store in stores.values():
                store.close()


def _hold_connection(store: Any, key: str, release: threading.Event) -> None:
    """Open the calling thread's SQLite connection to ``store`` (a get), keep it until
    ``release``."""
    store.get(key)
    release.wait()
    store.close_thread_connection()


# -- reporting ------------------------------------------------------------------------------

def _share(value: Optional[float]) -> str:
    return "–" if value is None else "%.0f %%" % (100 * value)


def _ms(value: float) -> str:
    return "%.1f" % value if value < 100 else "%.0f" % value


def _noisy(row: Dict[str, Any]) -> str:
    return " †" if row.get("foreign_cpu", 0) > run.NOISY else ""


def _outcomes(counts: Dict[str, int]) -> str:
    order = list(OUTCOMES) + sorted(set(counts) - set(OUTCOMES))
    return ", ".join("%s %d" % (name, counts[name]) for name in order if counts.get(name))


def markdown(results: Dict[str, Any]) -> str:
    env = results["environment"]
    plan = results["plan"]
    lines = [
        "# Three nodes behind nginx round-robin%s" % (" (--quick)" if plan["quick"] else ""),
        "",
        "%s; Orthanc %s (stack %s%s), PostgreSQL index, %s CPUs (%s); plugin at %s%s "
        "(sources digest %s); %d studies of %d instances uploaded to node 1; wrk runs of "
        "%d s. Run time %s s; other processes used at least %.0f %% of the CPUs during the "
        "busiest wrk run." % (
            env.get("date"), env.get("orthanc"), env.get("stack"),
            ", AllowThreads" if env.get("allow_threads") else "", env.get("cpus"),
            env.get("cpu_model"), env.get("plugin_commit"),
            " + uncommitted changes" if env.get("plugin_tree_modified") else "",
            env.get("plugin_digest"), plan["studies"], plan["instances"], plan["duration"],
            env.get("seconds"), 100 * env.get("foreign_cpu", 0)),
        "",
        "## Hit ratio and throughput through nginx",
        "",
        "*disk*: each node its own disk store; *redis*: one Redis store and one `KeyPrefix` "
        "for the three nodes. *First reads*: every URL (%d: shared-tags and instances-tags of "
        "each study and series, shared-tags of each patient) read three times in a row "
        "through nginx on one connection, so each node answers it once; *wrk*: %d "
        "connections reading them at random. Hit ratio: share of `X-Cache-Status: HIT` as "
        "nginx logged it, per node in brackets (node 1 / node 2 / node 3)."
        % (env.get("urls", 0), plan["connections"]),
        "",
        "| Scenario | Store | Reads | Hit ratio | per node | req/s | p50 / p99 ms | Outcomes |",
        "|---|---|--:|--:|---|--:|--:|---|",
    ]
    for row in results["scenarios"]:
        tally = row["tally"]
        nodes = " / ".join(_share(tally["nodes"].get("node %d" % number, {}).get("hit_ratio"))
                           for number in range(1, NODES + 1))
        errors = " (%d errors)" % tally["errors"] if tally["errors"] else ""
        lines.append("| %s (%s)%s | %s | %d | %s | %s | %.0f | %s / %s | %s%s |" % (
            row["scenario"], "wrk" if row["kind"] == "wrk" else "first reads", _noisy(row),
            row["store"],
            sum(tally["outcomes"].values()), _share(tally["hit_ratio"]), nodes, row["rps"],
            _ms(row["p50_ms"]), _ms(row["p99_ms"]), _outcomes(tally["outcomes"]), errors))
    for store, warnings in results.get("warnings", {}).items():
        if warnings:
            lines += ["", "Warnings of the plugin during the *%s* runs (%d): %s." % (
                store, len(warnings), "; ".join("`%s`" % line for line in warnings[:5])
                + ("; ..." if len(warnings) > 5 else ""))]
    restarts = ["%s %s: %.1f s" % (row["store"], row["scenario"].split(" (")[0], row["restart_s"])
                for row in results["scenarios"] if "restart_s" in row]
    if restarts:
        lines += ["", "From the start of the restarted node to its plugin active: %s."
                  % "; ".join(restarts)]
    if results["end_to_end"]:
        lines += ["", "## The cost of a hit, end to end", "",
                  "wrk straight to one node (no nginx), %d connections, one URL: node 1 "
                  "answers from its memory front; node 3, restarted with `MemorySize` 0, reads "
                  "every hit from its store." % plan["e2e_connections"], "",
                  "| Hit from | Configuration | Route (bytes) | req/s | p50 / p99 ms | Outcomes |",
                  "|---|---|---|--:|--:|---|"]
        for row in results["end_to_end"]:
            lines.append("| %s%s | %s | %s (%d) | %.0f | %s / %s | %s |" % (
                "memory front" if row["source"] == "memory front" else row["source"] + " store",
                _noisy(row), row["store"], row["route"], row["bytes"], row["rps"],
                _ms(row["p50_ms"]), _ms(row["p99_ms"]), _outcomes(row.get("outcomes", {}))))
    if any(_noisy(row) for row in results["scenarios"] + results["end_to_end"]):
        lines += ["", "† other processes used more than %d %% of the CPUs during that wrk run "
                  "(`foreign_cpu` in the JSON, an estimate that errs low)." % (100 * run.NOISY)]
    if results["micro"]:
        sizes = sorted({row["body_bytes"] for row in results["micro"]})
        sources = list(dict.fromkeys(row["source"] for row in results["micro"]))
        lines += ["", "## The cost of one Store.get", "",
                  "In this process (the benchmark's Python %s, not Orthanc's), median of 5 "
                  "batches of %d gets of one entry; µs per get. *disk, connection per get*: "
                  "the SQLite connection closed after each get, as the plugin does at the end "
                  "of every request that opened one, while another thread holds one (as a "
                  "node's warm-up thread does); *no other*: without it, each close is the "
                  "last, and SQLite checkpoints its write-ahead log then." % (env.get("python"),
                                                         plan["micro_gets"] // 5), "",
                  "| Hit from | %s |" % " | ".join("%d KB body" % round(size / 1000)
                                                   for size in sizes),
                  "|---|%s" % ("--:|" * len(sizes))]
        for source in sources:
            cells = []
            for size in sizes:
                found = [row["us"] for row in results["micro"]
                         if row["source"] == source and row["body_bytes"] == size]
                cells.append("%.1f" % found[0] if found else "–")
            lines.append("| %s | %s |" % (source, " | ".join(cells)))
    return "\n".join(lines) + "\n"


def chart(results: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain_numbers = FuncFormatter(lambda value, _: "%g" % value)
    colors = {"disk": "#1f77b4", "redis": "#d62728", "memory front": "#2ca02c",
              "disk, connection per get": "#6baed6",
              "disk, connection per get, no other": "#c6dbef"}
    figure, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    scenarios = list(dict.fromkeys(row["scenario"] for row in results["scenarios"]))
    names = [scenario.replace(" (", "\n(").replace("right after ", "after ")
             for scenario in scenarios]
    width = 0.38
    ratio, speed = axes[0]
    for offset, store in enumerate(STORES):
        rows = {row["scenario"]: row for row in results["scenarios"] if row["store"] == store}
        xs = [index + (offset - 0.5) * width for index in range(len(scenarios))]
        ratios = [100 * (rows[name]["tally"]["hit_ratio"] or 0) if name in rows else 0
                  for name in scenarios]
        ratio.bar(xs, ratios, width, color=colors[store], label=store)
        for x, name, value in zip(xs, scenarios, ratios):
            if name not in rows:
                continue
            ratio.text(x, value + 1.5, "%.0f %%" % value, ha="center", fontsize=7)
            nodes = rows[name]["tally"]["nodes"]
            marks = [100 * (nodes.get("node %d" % number, {}).get("hit_ratio") or 0)
                     for number in range(1, NODES + 1)]
            ratio.scatter([x - width / 3, x, x + width / 3], marks, color="black", s=30,
                          linewidths=2.5, zorder=3, marker="_",
                          label="node 1, 2, 3 (left to right)" if x == xs[0] and not offset
                          else None)
        speed.bar(xs, [rows[name]["rps"] if name in rows else 0 for name in scenarios], width,
                  color=colors[store], label=store)
    ratio.set_ylim(0, 128)
    ratio.set_yticks(range(0, 101, 20))
    ratio.set_ylabel("hits, % of reads")
    ratio.set_title("Hit ratio through nginx", fontsize=10)
    speed.set_yscale("log")
    speed.yaxis.set_major_formatter(plain_numbers)
    speed.set_ylabel("requests/s (log)")
    speed.set_title("Throughput through nginx (first reads: 1 connection; wrk: %d)"
                    % results["plan"]["connections"], fontsize=10)
    speed.set_ylim(top=speed.get_ylim()[1] * 4)
    for axis in (ratio, speed):
        axis.set_xticks(range(len(scenarios)))
        axis.set_xticklabels(names, fontsize=7)
        axis.legend(fontsize=8, loc="upper center", ncol=3)
        axis.grid(axis="y", alpha=0.3)

    micro, e2e = axes[1]
    sizes = sorted({row["body_bytes"] for row in results["micro"]})
    sources = list(dict.fromkeys(row["source"] for row in results["micro"]))
    bar = 0.8 / max(1, len(sources))
    for offset, source in enumerate(sources):
        values = [next((row["us"] for row in results["micro"]
                        if row["source"] == source and row["body_bytes"] == size), 0)
                  for size in sizes]
        micro.bar([index + (offset - (len(sources) - 1) / 2) * bar for index in range(len(sizes))],
                  values, bar, color=colors.get(source, "#999999"), label=source)
    micro.set_xticks(range(len(sizes)))
    micro.set_xticklabels(["%d KB" % round(size / 1000) for size in sizes])
    micro.set_yscale("log")
    micro.yaxis.set_major_formatter(plain_numbers)
    micro.set_ylabel("µs per Store.get (log)")
    micro.set_title("Cost of one hit in the store (in-process)", fontsize=10)
    micro.set_ylim(top=micro.get_ylim()[1] * 30)
    micro.legend(fontsize=8, loc="upper center", ncol=2)
    micro.grid(axis="y", which="both", alpha=0.3)

    rows = results["end_to_end"]
    routes = list(dict.fromkeys(row["route"] for row in rows))
    kinds = list(dict.fromkeys((row["source"], row["store"]) for row in rows))
    bar = 0.8 / max(1, len(kinds))
    for offset, (source, store) in enumerate(kinds):
        values = [next((row["rps"] for row in rows if row["route"] == route
                        and (row["source"], row["store"]) == (source, store)), 0)
                  for route in routes]
        label = "memory front (%s run)" % store if source == "memory front" else \
            "%s store, MemorySize 0" % store
        e2e.bar([index + (offset - (len(kinds) - 1) / 2) * bar for index in range(len(routes))],
                values, bar, label=label, color=colors[source], edgecolor="white",
                hatch="//" if source == "memory front" and store != STORES[0] else "")
    e2e.set_xticks(range(len(routes)))
    e2e.set_xticklabels(["%s (%d KB)" % (route, next(row["bytes"] for row in rows
                                                     if row["route"] == route) // 1000)
                         for route in routes])
    e2e.set_ylabel("hits/s, one node (wrk, %d connections)" % results["plan"]["e2e_connections"])
    e2e.set_title("Cost of a hit end to end (one node, no nginx)", fontsize=10)
    e2e.set_ylim(top=e2e.get_ylim()[1] * 1.3)
    e2e.legend(fontsize=7, loc="upper center", ncol=2)
    e2e.grid(axis="y", alpha=0.3)

    env = results["environment"]
    figure.suptitle("Three Orthanc nodes behind nginx: per-node disk stores vs the shared Redis "
                    "store (Orthanc %s, %s, %s CPUs)" % (env.get("orthanc"), env.get("date"),
                                                        env.get("cpus")), fontsize=11)
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)


def render(results: Dict[str, Any], out: Path, chart_path: Path) -> None:
    stack = results["environment"].get("stack_name", "sid")
    (out / ("cluster-%s.json" % stack)).write_text(json.dumps(results, indent=2))
    report = markdown(results)
    (out / ("cluster-%s.md" % stack)).write_text(report)
    chart(results, chart_path)
    print(report)


def environment(stack: str, urls: int) -> Dict[str, Any]:
    run._import_support()
    import platform
    import subprocess

    from support import stacks

    found = stacks.versions()
    git = ["git", "-C", str(REPO)]
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "stack_name": stack,
        "stack": "%s: orthanc %s, orthanc-python %s" % (stack, found.get("orthanc"),
                                                       found.get("orthanc-python")),
        "orthanc": stacks.orthanc_version(),
        "cpus": os.cpu_count(),
        "cpu_model": run._cpu_model(),
        "python": platform.python_version(),
        "urls": urls,
        "plugin_commit": subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip(),
        "plugin_digest": run._package_digest(),
        "plugin_tree_modified": bool(subprocess.run(
            git + ["status", "--porcelain", "--", "orthanc_cache_plugin"],
            capture_output=True, text=True).stdout.strip()),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny data, 1 s wrk runs (smoke test, 70 to 90 s)")
    parser.add_argument("--stack", choices=("sid", "bookworm"), default="sid",
                        help="sid: Orthanc 1.13.0, plugin 7.1; bookworm: 1.10.1, plugin 4.0")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5; quick 1)")
    parser.add_argument("--studies", type=int, help="studies uploaded (default 10)")
    parser.add_argument("--instances", type=int, help="instances per study (default 25)")
    parser.add_argument("--only", choices=STORES, help="measure one configuration only")
    parser.add_argument("--allow-threads", action="store_true",
                        help='every node with "Python": {"AllowThreads": true} (plugin 4.3+), '
                             "as deployment.md advises for a cluster")
    parser.add_argument("--out", type=Path, default=run.BENCH_DIR / "results",
                        help="where cluster-STACK.md and .json go")
    parser.add_argument("--chart", type=Path,
                        help="the chart (default docs/cluster-STACK.png; --quick: in --out)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: table and chart again from --out's JSON")
    parser.add_argument("--keep", action="store_true", help="keep the servers' files")
    args = parser.parse_args(argv)
    run.ensure_environment(False)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    chart_path = (args.chart or (out if args.quick else REPO / "docs")
                  / ("cluster-%s.png" % args.stack)).resolve()
    if args.render:
        render(json.loads((out / ("cluster-%s.json" % args.stack)).read_text()), out, chart_path)
        return 0

    run._import_support()
    from support import stacks
    stacks.select(args.stack)
    if args.allow_threads:
        run.COMMON_CONFIG["Python"] = {"AllowThreads": True}
    plan = Plan.quick_plan() if args.quick else Plan()
    for name in ("duration", "studies", "instances"):
        if getattr(args, name):
            setattr(plan, name, getattr(args, name))
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-cluster-"))
    began = time.monotonic()
    bench = Bench(plan, out, workdir, args.stack)
    try:
        files = bench.generate()
        bench.start_services()
        for store in ([args.only] if args.only else STORES):
            bench.measure(store, files)
        bench.results["environment"] = dict(environment(args.stack, len(bench.urls)),
                                            allow_threads=args.allow_threads)
        bench.micro()
    except BaseException:
        (out / ("cluster-%s-partial.json" % args.stack)).write_text(
            json.dumps(bench.results, indent=2, default=str))
        raise
    finally:
        bench.stop()
        if args.keep:
            run._log("servers' files kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results = bench.results
    wrk_rows = [row for row in results["scenarios"] if row["kind"] == "wrk"] + \
        results["end_to_end"]
    results["environment"]["foreign_cpu"] = max(
        [row.get("foreign_cpu", 0.0) for row in wrk_rows] or [0.0])
    results["environment"]["seconds"] = round(time.monotonic() - began)
    render(results, out, chart_path)
    run._log("done in %d s: %s, %s" % (results["environment"]["seconds"],
                                       out / ("cluster-%s.md" % args.stack), chart_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
