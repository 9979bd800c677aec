#!/usr/bin/env python3
"""Opening a study as the web viewers do: plain Orthanc beside the cache plugin.

One command (as root, from the repository's root, after ``scripts/test.sh`` made the
virtual environment and the stacks)::

    .venv/bin/python bench/viewer.py --stack sid        # Orthanc 1.13.0, DICOMweb 1.24: ~4 min
    .venv/bin/python bench/viewer.py --stack bookworm   # Orthanc 1.10.1, DICOMweb 1.7
    .venv/bin/python bench/viewer.py --quick            # a small study: a smoke test

Two Orthancs hold the same study (``--instances`` in ``--series`` series, 600 in 4
by default), each with its DICOMweb plugin and behind nginx, as viewers reach
them:

* **plain**: Orthanc and DICOMweb with their version's defaults, behind the nginx
  block "nginx without a shared copy" of docs/deployment.md;
* **plugin**: the same with the cache plugin of this working tree
  (``HttpCompressionEnabled`` false, as deployment.md recommends), behind the
  block "DICOMweb viewers" of docs/deployment.md.

While they are measured, a writer uploads an image of another patient to each,
every ``--write-interval`` seconds: real servers are never read-only.

A viewer opens the study over 6 connections, as a browser: ``Accept-Encoding:
gzip, deflate, br``, and ``Accept: application/dicom+json`` for DICOMweb.

* **OHIF** (and Stone): QIDO of the study (``/dicom-web/studies?StudyInstanceUID=``),
  QIDO of its series, then the WADO-RS metadata of every series at once;
* **Orthanc Explorer 2** (``src/orthancApi.js``): the study with its
  ``requestedTags``, its series and its instances with the tags that find PDF
  reports, then the instances of every series at once.

Three kinds of user open it, on each server in turn: the **first** ever (once,
after the study became stable and the plugin's warm-up of it ended), **another**
user (no validators: ``--rounds`` opens, each on new connections), and the
**same** user again (``If-None-Match`` with the ETag of each answer of that
user's previous open).  For each: the time of the whole open (median), the
requests answered 304, and the bytes of the
bodies received (as sent: compressed when the server compressed them).

It writes ``viewer-STACK.md`` (also printed) and ``viewer-STACK.json`` to ``--out``
(default ``bench/results``), and the chart to ``--chart`` (default
``docs/viewer-STACK.png``; with ``--quick``, into ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)

REPO = run.REPO
#: What every browser, viewer and HTTP library sends.
BROWSER = {"Accept-Encoding": "gzip, deflate, br"}
DICOM_JSON = dict(BROWSER, Accept="application/dicom+json")
#: Orthanc Explorer 2's default ``requestedTagsForStudyList``.
OE2_REQUESTED_TAGS = "ModalitiesInStudy;NumberOfStudyRelatedInstances;NumberOfStudyRelatedSeries"
#: What its study item asks to find PDF reports (``getStudyInstancesExpanded``): tags that
#: only the files hold.
OE2_REPORT_TAGS = "SOPClassUID;SeriesDate;SeriesDescription"
SCENARIOS = ("OHIF", "Orthanc Explorer 2")
KINDS = ("first", "another", "same")
KIND_NAMES = {"first": "first user ever", "another": "another user",
              "same": "same user again"}
#: Targets of issue 19.
ANOTHER_RATIO = 0.5
SAME_304_SHARE = 0.9
SAME_BYTES_RATIO = 0.1


@dataclass
class Plan:
    instances: int = 600
    series: int = 4
    rounds: int = 7
    connections: int = 6
    write_interval: float = 0.5
    stable_age: int = 2

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(instances=40, series=4, rounds=2)


class Step:
    """A request of an open: the path, its headers, and whether it may run beside others."""

    def __init__(self, path: str, headers: Dict[str, str]):
        self.path = path
        self.headers = headers


class Open:
    """One viewer opening the study: steps in order, each a list of requests sent at once."""

    def __init__(self, steps: List[List[Step]]):
        self.steps = steps


class Study:
    """The study's identifiers, as each viewer names it."""

    def __init__(self, study_id: str, study_uid: str, series: List[Tuple[str, str]]):
        self.study_id = study_id
        self.study_uid = study_uid
        self.series = series  # (Orthanc id, SeriesInstanceUID)

    def open_as(self, scenario: str) -> Open:
        uid = self.study_uid
        if scenario == "OHIF":
            return Open([
                [Step("/dicom-web/studies?StudyInstanceUID=%s" % uid, DICOM_JSON)],
                [Step("/dicom-web/studies/%s/series" % uid, DICOM_JSON)],
                [Step("/dicom-web/studies/%s/series/%s/metadata" % (uid, series_uid), DICOM_JSON)
                 for _, series_uid in self.series],
            ])
        return Open([
            [Step("/studies/%s?requestedTags=%s" % (self.study_id, OE2_REQUESTED_TAGS), BROWSER)],
            [Step("/studies/%s/series" % self.study_id, BROWSER),
             Step("/studies/%s/instances?expanded&requestedTags=%s"
                  % (self.study_id, OE2_REPORT_TAGS), BROWSER)],
            [Step("/series/%s/instances" % series_id, BROWSER) for series_id, _ in self.series],
        ])


class Measure:
    """What one open cost: its time, requests, 304s and body bytes; and the ETags it got."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.requests = 0
        self.not_modified = 0
        self.bytes = 0
        self.statuses: Dict[int, int] = {}
        self.etags: Dict[str, str] = {}


def open_study(port: int, view: Open, connections: int,
               etags: Optional[Dict[str, str]] = None) -> Measure:
    """Open the study once through ``port`` on new connections (``etags``: a returning user's)."""
    clients = [run.Client(port) for _ in range(connections)]
    measure = Measure()
    lock = threading.Lock()

    def send(index: int, step: Step) -> None:
        headers = dict(step.headers)
        if etags and step.path in etags:
            headers["If-None-Match"] = etags[step.path]
        status, answer_headers, body, _ = clients[index % connections].request(
            "GET", step.path, headers=headers)
        with lock:
            measure.requests += 1
            measure.bytes += len(body)
            measure.statuses[status] = measure.statuses.get(status, 0) + 1
            if status == 304:
                measure.not_modified += 1
            etag = answer_headers.get("ETag")
            if etag:
                measure.etags[step.path] = etag
            elif etags and step.path in etags and status == 304:
                measure.etags[step.path] = etags[step.path]

    began = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        for requests in view.steps:
            list(pool.map(send, range(len(requests)), requests))
    measure.seconds = time.perf_counter() - began
    for client in clients:
        client.close()
    bad = {status: count for status, count in measure.statuses.items()
           if status not in (200, 304)}
    if bad:
        raise RuntimeError("an open got %s" % bad)
    return measure


class Writer(threading.Thread):
    """Uploads an image of another patient to every server, every ``interval`` seconds."""

    def __init__(self, ports: Sequence[int], files: Sequence[bytes], interval: float):
        super().__init__(daemon=True)
        self.ports, self.files, self.interval = ports, files, interval
        self.stopping = threading.Event()
        self.uploads = 0

    def run(self) -> None:
        clients = [run.Client(port) for port in self.ports]
        for dicom in self.files:
            for client in clients:
                status, _, _, _ = client.request("POST", "/instances", dicom,
                                                 {"Content-Type": "application/dicom"})
                if status == 200:
                    self.uploads += 1
            if self.stopping.wait(self.interval):
                break
        for client in clients:
            client.close()


class Bench:
    def __init__(self, plan: Plan, workdir: Path, stack: str):
        self.plan = plan
        self.workdir = workdir
        self.stack = stack
        self.servers: Dict[str, Any] = {}
        self.proxies: Dict[str, Any] = {}
        self.results: Dict[str, Any] = {"plan": plan.__dict__, "opens": {}}

    def start(self) -> None:
        run._import_support()
        from support.deployment_doc import documented_site
        from support.nginx import NginxServer
        from support.stacks import DICOMWEB_PLUGIN, PYTHON_PLUGIN

        for kind in ("plain", "plugin"):
            server = run.make_server(self.workdir / kind, kind, self.workdir / "cache")
            plugins = [DICOMWEB_PLUGIN] if kind == "plain" else [PYTHON_PLUGIN, DICOMWEB_PLUGIN]
            server.config.update({"Plugins": plugins, "DicomWeb": {"Enable": True},
                                  "StableAge": self.plan.stable_age})
            server.start()
            self.servers[kind] = server
            site = documented_site(*(("test_proxy.py", "no-store") if kind == "plain" else
                                     ("test_dicomweb_routes.py", "dicomweb")), server.port)
            self.proxies[kind] = NginxServer(site).start()

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        for server in self.servers.values():
            server.stop()

    def load(self) -> Study:
        run._import_support()
        from support.dicom_factory import make_study

        plan = self.plan
        files = make_study("PAT-viewer", plan.series, plan.instances // plan.series,
                           seed="viewer")
        for kind, server in self.servers.items():
            seconds, _ = run.upload_all(server.port, files, 4)
            run._log("%d instances uploaded to %s in %.1f s" % (len(files), kind, seconds))
        plain = self.servers["plain"]
        study_id = plain.get("/studies").json()[0]
        study_uid = plain.get("/studies/%s" % study_id).json()["MainDicomTags"]["StudyInstanceUID"]
        series = sorted((item["ID"], item["MainDicomTags"]["SeriesInstanceUID"])
                        for item in plain.get("/studies/%s/series" % study_id).json())
        # Stable (StableAge), and the cache plugin's warm-up done.
        deadline = time.monotonic() + 120
        while not all(s.get("/studies/%s" % study_id).json().get("IsStable")
                      for s in self.servers.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the study never became stable")
            time.sleep(0.5)
        # As when a user opens it minutes after it arrived: the plugin's warm-up of its
        # series, study and patient is done.
        while True:
            figures = self.servers["plugin"].get("/cache/statistics").json()
            if figures["WarmUpQueue"] == 0 and figures["WarmUpsDone"] >= len(series) + 2:
                break
            if time.monotonic() > deadline + 300:
                raise RuntimeError("the warm-up never ended: %s" % figures)
            time.sleep(0.5)
        time.sleep(4)
        return Study(study_id, study_uid, series)

    def measure(self, study: Study) -> None:
        run._import_support()
        from support.dicom_factory import make_instance

        plan = self.plan
        others = [make_instance("PAT-writer", seed="writer", instance_number=number)
                  for number in range(1, 1000)]
        writer = Writer([s.port for s in self.servers.values()], others, plan.write_interval)
        writer.start()
        try:
            for scenario in SCENARIOS:
                view = study.open_as(scenario)
                runs: Dict[str, Dict[str, List[Measure]]] = {
                    kind: {"first": [], "another": [], "same": []} for kind in self.servers}
                previous: Dict[str, Dict[str, str]] = {}
                for kind in self.servers:
                    first = open_study(self.proxies[kind].port, view, plan.connections)
                    runs[kind]["first"].append(first)
                    previous[kind] = first.etags
                for _ in range(plan.rounds):
                    for kind in self.servers:  # side by side: plain, then the plugin
                        port = self.proxies[kind].port
                        runs[kind]["another"].append(open_study(port, view, plan.connections))
                        same = open_study(port, view, plan.connections, previous[kind])
                        runs[kind]["same"].append(same)
                        previous[kind] = dict(previous[kind], **same.etags)
                self.results["opens"][scenario] = {
                    kind: {user: summary(measures) for user, measures in users.items()}
                    for kind, users in runs.items()}
                run._log("%s: %s" % (scenario, json.dumps(self.results["opens"][scenario])))
        finally:
            writer.stopping.set()
            writer.join()
        self.results["writes"] = writer.uploads


def summary(measures: List[Measure]) -> Dict[str, Any]:
    return {"seconds": statistics.median(m.seconds for m in measures),
            "requests": measures[0].requests,
            "not_modified": statistics.median(m.not_modified for m in measures),
            "bytes": statistics.median(m.bytes for m in measures),
            "opens": len(measures)}


def evaluate(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The targets of issue 19, per scenario."""
    rows = []
    for scenario, servers in results["opens"].items():
        plain, plugin = servers["plain"], servers["plugin"]
        time_ratio = plugin["another"]["seconds"] / plain["another"]["seconds"]
        share = plugin["same"]["not_modified"] / plugin["same"]["requests"]
        bytes_ratio = plugin["same"]["bytes"] / max(plain["same"]["bytes"], 1)
        rows += [
            {"scenario": scenario, "target": "another user: time <= %.1f x plain" % ANOTHER_RATIO,
             "value": "%.2f" % time_ratio, "met": time_ratio <= ANOTHER_RATIO},
            {"scenario": scenario, "target": "same user again: >= %d %% 304s"
             % (SAME_304_SHARE * 100), "value": "%.0f %%" % (share * 100),
             "met": share >= SAME_304_SHARE},
            {"scenario": scenario, "target": "same user again: bytes <= %d %% of plain"
             % (SAME_BYTES_RATIO * 100), "value": "%.1f %%" % (bytes_ratio * 100),
             "met": bytes_ratio <= SAME_BYTES_RATIO},
        ]
    return rows


def _size(count: float) -> str:
    return "%.0f B" % count if count < 1024 else ("%.1f KB" % (count / 1024) if count < 1024 ** 2
                                                  else "%.2f MB" % (count / 1024 ** 2))


def markdown(results: Dict[str, Any]) -> str:
    env = results["environment"]
    plan = results["plan"]
    lines = [
        "# Opening a study as a viewer (%s)" % env["stack"], "",
        "%s; %s CPUs (%s); plugin at %s%s; %d instances in %d series; %d connections, "
        "Accept-Encoding gzip; %d opens per kind and server (median), side by side; %d "
        "uploads of another patient meanwhile (one every %.1f s per server); %d s in all." % (
            env["date"], env["cpus"], env["cpu_model"], env["plugin_commit"],
            " (modified)" if env["plugin_tree_modified"] else "", plan["instances"],
            plan["series"], plan["connections"], plan["rounds"], results["writes"],
            plan["write_interval"], env["seconds"]), "",
        "| viewer | user | requests | plain | plugin | plugin / plain | 304s plain / plugin "
        "| bytes plain | bytes plugin |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, servers in results["opens"].items():
        for kind in KINDS:
            plain, plugin = servers["plain"][kind], servers["plugin"][kind]
            lines.append("| %s | %s | %d | %.0f ms | %.0f ms | %.2f | %g / %g | %s | %s |" % (
                scenario, KIND_NAMES[kind], plain["requests"], plain["seconds"] * 1000,
                plugin["seconds"] * 1000, plugin["seconds"] / plain["seconds"],
                plain["not_modified"], plugin["not_modified"], _size(plain["bytes"]),
                _size(plugin["bytes"])))
    lines += ["", "| viewer | target | measured | met |", "|---|---|---|---|"]
    lines += ["| %s | %s | %s | %s |" % (row["scenario"], row["target"], row["value"],
                                         "yes" if row["met"] else "**no**")
              for row in results["targets"]]
    return "\n".join(lines) + "\n"


def chart(results: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results["opens"]), figsize=(11, 4))
    for axis, (scenario, servers) in zip(axes, results["opens"].items()):
        positions = range(len(KINDS))
        for offset, kind, colour in ((-0.2, "plain", "#999999"), (0.2, "plugin", "#1f77b4")):
            values = [servers[kind][user]["seconds"] * 1000 for user in KINDS]
            bars = axis.bar([p + offset for p in positions], values, 0.4, label=kind,
                            color=colour)
            for bar, user in zip(bars, KINDS):
                axis.annotate(_size(servers[kind][user]["bytes"]),
                              (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                              ha="center", va="bottom", fontsize=7)
        axis.set_xticks(list(positions))
        axis.set_xticklabels([KIND_NAMES[user] for user in KINDS])
        axis.set_ylabel("time to open the study (ms, median)")
        axis.set_title("%s (%s)" % (scenario, results["environment"]["stack_name"]))
        axis.legend()
    figure.suptitle("Opening %d instances in %d series over %d connections, gzip (bytes "
                    "received on the bars)" % (results["plan"]["instances"],
                                               results["plan"]["series"],
                                               results["plan"]["connections"]), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def environment(stack: str) -> Dict[str, Any]:
    import subprocess

    run._import_support()
    from support import stacks

    found = stacks.versions()
    git = ["git", "-C", str(REPO)]
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "stack_name": stack,
        "stack": "%s: Orthanc %s, Python plugin %s, DICOMweb %s" % (
            stack, found.get("orthanc"), found.get("orthanc-python"),
            found.get("orthanc-dicomweb")),
        "cpus": os.cpu_count(),
        "cpu_model": run._cpu_model(),
        "plugin_commit": subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip(),
        "plugin_tree_modified": bool(subprocess.run(
            git + ["status", "--porcelain", "--", "orthanc_cache_plugin"],
            capture_output=True, text=True).stdout.strip()),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small study (smoke test)")
    parser.add_argument("--stack", choices=("sid", "bookworm", "trixie"), default="sid",
                        help="sid: Orthanc 1.13.0, DICOMweb 1.24; trixie: 1.12.7, 1.20; "
                             "bookworm: 1.10.1, 1.7")
    parser.add_argument("--instances", type=int, help="instances of the study (default 600)")
    parser.add_argument("--series", type=int, help="series of the study (default 4)")
    parser.add_argument("--rounds", type=int, help="opens per kind of user and server (7)")
    parser.add_argument("--write-interval", type=float,
                        help="seconds between uploads of another patient (default 0.5)")
    parser.add_argument("--out", type=Path, default=run.BENCH_DIR / "results",
                        help="where viewer-STACK.md and .json go")
    parser.add_argument("--chart", type=Path,
                        help="the chart (default docs/viewer-STACK.png; --quick: in --out)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: table and chart again from --out's JSON")
    args = parser.parse_args(argv)
    run.ensure_environment(False)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    chart_path = (args.chart or (out if args.quick else REPO / "docs")
                  / ("viewer-%s.png" % args.stack)).resolve()
    if args.render:
        render(json.loads((out / ("viewer-%s.json" % args.stack)).read_text()), out, chart_path)
        return 0
    run._import_support()
    from support import stacks
    stacks.select(args.stack)
    plan = Plan.quick_plan() if args.quick else Plan()
    for name in ("instances", "series", "rounds", "write_interval"):
        if getattr(args, name):
            setattr(plan, name, getattr(args, name))
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-viewer-"))
    began = time.monotonic()
    bench = Bench(plan, workdir, args.stack)
    try:
        bench.start()
        study = bench.load()
        bench.measure(study)
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results = bench.results
    results["environment"] = dict(environment(args.stack),
                                  seconds=round(time.monotonic() - began))
    results["targets"] = evaluate(results)
    render(results, out, chart_path)
    run._log("done: %s, %s" % (out / ("viewer-%s.md" % args.stack), chart_path))
    return 0


def render(results: Dict[str, Any], out: Path, chart_path: Path) -> None:
    stack = results["environment"]["stack_name"]
    (out / ("viewer-%s.json" % stack)).write_text(json.dumps(results, indent=2))
    report = markdown(results)
    (out / ("viewer-%s.md" % stack)).write_text(report)
    print(report)
    chart(results, chart_path)


if __name__ == "__main__":
    sys.exit(main())
