#!/usr/bin/env python3
"""Reads beside unrelated writes: does a write elsewhere cost the readers anything?

One command (as root, from the repository's root, after ``scripts/test.sh`` made the
virtual environment and the stacks)::

    .venv/bin/python bench/writes.py [--stack sid|bookworm] [--seconds 8] [--rounds 3]

One Orthanc with the plugin holds "read" studies and "write" studies.  Reader
threads revalidate the answers of the read studies without pause: each sends
``If-None-Match`` with the ETag it holds and takes the new ETag from every
200 and 304 (RFC 9111, section 4.3.4), as browsers, viewers and CDNs do.
Rounds alternate, side by side in one run, between:

* **quiet**: nothing else happens;
* **writes**: once a second, one write on the *write* studies only, each kind
  in turn: a metadata PUT and DELETE, an attachment PUT, a C-ECHO and a query
  to a modality where nobody listens (they fail), ``/tools/find``, a label
  (Orthanc 1.12 and later), an upload, the deletion of one instance.

For each kind of round it prints the reads per second and the share of reads
answered without Orthanc computing the answer (``X-Cache-Status`` HIT, or a
304 decided from the version).  Targets (issue #9): at least 99 % of the reads
of untouched resources answered without computing, and at least 0.9 of the
quiet throughput during writes.  At the end, a write on a read study must be
seen by the very next read of it (a metadata PUT, then the deletion of an
instance).  Besides the table (``writes-STACK.md``) and the figures
(``writes-STACK.json``), ``writes-STACK.png`` charts the reads of every
second, the rounds and each write.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from support import stacks  # noqa: E402
from support.dicom_factory import make_instance, make_study, make_uid  # noqa: E402
from support.orthanc_server import OrthancServer, free_port  # noqa: E402

NO_GZIP = {"Accept-Encoding": "identity"}
#: Outcomes for which Orthanc computed nothing.
NOT_COMPUTED = ("HIT", "REVALIDATED")


@dataclass
class Tally:
    """What the readers saw during one kind of round."""

    seconds: float = 0.0
    reads: int = 0
    outcomes: Counter = field(default_factory=Counter)
    not_modified: int = 0

    def add(self, other: Tally) -> None:
        self.seconds += other.seconds
        self.reads += other.reads
        self.outcomes.update(other.outcomes)
        self.not_modified += other.not_modified

    @property
    def rate(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0

    @property
    def served(self) -> float:
        """Share of reads answered without Orthanc computing the answer."""
        return sum(self.outcomes[name] for name in NOT_COMPUTED) / self.reads if self.reads else 0.0


class Readers:
    """Threads that revalidate a fixed set of URLs, keeping the latest ETag of each."""

    def __init__(self, server: OrthancServer, paths: Sequence[str], threads: int,
                 origin: float):
        self.server = server
        self.paths = list(paths)
        self.etags: Dict[str, str] = {}
        self.lock = threading.Lock()
        self.tally = Tally()
        #: Second since ``origin`` (time.monotonic) -> reads counted, and those computed.
        self.origin = origin
        self.timeline: Dict[int, Counter] = {}
        self.running = threading.Event()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(number,), daemon=True)
                        for number in range(threads)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def measure(self, seconds: float, during: Callable[[float], None]) -> Tally:
        """Count the reads of ``seconds`` while ``during(seconds)`` runs."""
        with self.lock:
            self.tally = Tally()
        began = time.monotonic()
        self.running.set()
        during(seconds)
        self.running.clear()
        with self.lock:
            tally, self.tally = self.tally, Tally()
        tally.seconds = time.monotonic() - began
        return tally

    def stop(self) -> None:
        self.stopping.set()
        self.running.set()
        for thread in self.threads:
            thread.join(10)

    def _run(self, number: int) -> None:
        session = requests.Session()
        session.trust_env = False
        index = number
        while not self.stopping.is_set():
            self.running.wait()
            path = self.paths[index % len(self.paths)]
            index += 1
            headers = dict(NO_GZIP)
            etag = self.etags.get(path)
            if etag:
                headers["If-None-Match"] = etag
            answer = session.get(self.server.url + path, headers=headers)
            if "ETag" in answer.headers:
                self.etags[path] = answer.headers["ETag"]
            with self.lock:
                if self.running.is_set():
                    outcome = answer.headers.get("X-Cache-Status", "-")
                    self.tally.reads += 1
                    self.tally.outcomes[outcome] += 1
                    self.tally.not_modified += answer.status_code == 304
                    second = self.timeline.setdefault(int(time.monotonic() - self.origin),
                                                      Counter())
                    second["reads"] += 1
                    second["computed"] += outcome not in NOT_COMPUTED


class Writer:
    """One write a second on the write studies, each kind in turn."""

    def __init__(self, server: OrthancServer, studies: List[List[dict]], labels: bool,
                 origin: float):
        self.server = server
        self.origin = origin
        #: When each write began (seconds since ``origin``), and its kind.
        self.times: List[Tuple[float, str]] = []
        self.instances = [instance for study in studies for instance in study]
        self.study_ids = [study[0]["ParentStudy"] for study in studies]
        self.kinds: List[Callable[[int], None]] = [
            self._metadata_put, self._metadata_delete, self._attachment_put, self._echo,
            self._query, self._find, self._upload, self._delete_instance]
        if labels:
            self.kinds.append(self._label)
        self.count = 0
        self.done: Counter = Counter()

    def during(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            kind = self.kinds[self.count % len(self.kinds)]
            self.times.append((time.monotonic() - self.origin, kind.__name__.strip("_")))
            kind(self.count)
            self.done[kind.__name__.strip("_")] += 1
            self.count += 1
            time.sleep(max(0.0, min(1.0, end - time.monotonic())))

    def _instance(self, number: int) -> str:
        return self.instances[number % len(self.instances)]["ID"]

    def _metadata_put(self, number: int) -> None:
        self.server.put("/instances/%s/metadata/1024" % self._instance(number), data=b"v")

    def _metadata_delete(self, number: int) -> None:
        self.server.delete("/instances/%s/metadata/1024" % self._instance(number - 1))

    def _attachment_put(self, number: int) -> None:
        study = self.study_ids[number % len(self.study_ids)]
        self.server.put("/studies/%s/attachments/1030" % study, data=b"note")

    def _echo(self, number: int) -> None:
        self.server.post("/modalities/nowhere/echo", data=b"{}")

    def _query(self, number: int) -> None:
        self.server.post("/modalities/nowhere/query", json={"Level": "Study", "Query": {}})

    def _find(self, number: int) -> None:
        self.server.post("/tools/find", json={"Level": "Study", "Query": {}})

    def _label(self, number: int) -> None:
        study = self.study_ids[number % len(self.study_ids)]
        self.server.put("/studies/%s/labels/seen%d" % (study, number % 3))

    def _upload(self, number: int) -> None:
        first = self.instances[0]
        study = self.server.get("/studies/%s" % first["ParentStudy"]).json()
        dicom = make_instance(study["PatientMainDicomTags"]["PatientID"],
                              study_uid=study["MainDicomTags"]["StudyInstanceUID"],
                              sop_uid=make_uid("writes", "upload", number),
                              instance_number=1000 + number, seed="writes")
        self.instances.append(self.server.upload(dicom))

    def _delete_instance(self, number: int) -> None:
        if len(self.instances) > 4:
            gone = self.instances.pop()
            self.server.delete("/instances/%s" % gone["ID"])


def seen_at_once(server: OrthancServer, study: List[dict]) -> Dict[str, bool]:
    """A write on a read study, then the very next read of it."""
    instance, series = study[0]["ID"], study[0]["ParentSeries"]
    server.put("/instances/%s/metadata/1024" % instance, data=b"new")
    metadata = server.get("/instances/%s/metadata" % instance, headers=NO_GZIP).json()
    before = len(server.get("/series/%s/instances-tags" % series, headers=NO_GZIP).json())
    gone = [other for other in study if other["ParentSeries"] == series][-1]
    server.delete("/instances/%s" % gone["ID"])
    after = len(server.get("/series/%s/instances-tags" % series, headers=NO_GZIP).json())
    return {"metadata PUT": "1024" in metadata, "instance deletion": after == before - 1}


def chart(timeline: Dict[int, Counter], rounds: Sequence[Tuple[float, float, str]],
          writes: Sequence[Tuple[float, str]], title: str, path: Path) -> None:
    """Reads of every second (all of them, and those Orthanc computed), the rounds
    with writes shaded, and a mark at each write."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = sorted(second for second in timeline
                     if any(began <= second + 0.5 < ended for began, ended, _ in rounds))
    figure, axes = plt.subplots(figsize=(12, 4.5))
    for began, ended, kind in rounds:
        if kind == "writes":
            axes.axvspan(began, ended, color="#ff7f0e", alpha=0.12, linewidth=0)
    axes.plot([second + 0.5 for second in seconds],
              [timeline[second]["reads"] for second in seconds],
              color="#1f77b4", label="reads a second")
    axes.bar([second + 0.5 for second in seconds],
             [timeline[second]["computed"] for second in seconds], width=0.8,
             color="#d62728", label="of which computed by Orthanc")
    peak = max([timeline[second]["reads"] for second in seconds] or [1])
    for moment, _ in writes:
        axes.plot([moment, moment], [0, peak * 0.06], color="#ff7f0e", linewidth=1.5)
    axes.plot([], [], color="#ff7f0e", alpha=0.4, linewidth=8,
              label="rounds with one write a second elsewhere (ticks: writes)")
    axes.set_ylim(0, peak * 1.25)
    axes.set_xlabel("seconds")
    axes.set_ylabel("reads a second (revalidations)")
    axes.set_title("Reads beside unrelated writes: " + title, fontsize=10)
    axes.legend(loc="upper right", fontsize=8, ncol=3)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=stacks.NAMES, default="sid")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--readers", type=int, default=8, help="reader threads")
    parser.add_argument("--allow-threads", action="store_true",
                        help='"Python": {"AllowThreads": true} (plugin 4.3 and later)')
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    options = parser.parse_args(argv)
    stacks.select(options.stack)

    with tempfile.TemporaryDirectory(prefix="orthanc-writes-") as folder:
        config = {
            "CachePlugin": {"Directory": str(Path(folder) / "cache")},
            "DicomModalities": {"nowhere": ["NOWHERE", "127.0.0.1", free_port()]},
            "HttpThreadsCount": 64,
        }
        if options.allow_threads:
            config["Python"] = {"AllowThreads": True}
        server = OrthancServer(Path(folder) / "orthanc", python_script=REPO / "example.py",
                               config=config, log_flags=())
        server.start()
        try:
            read = [[server.upload(dicom) for dicom in make_study("PAT-READ-%d" % n, 2, 5,
                                                                  seed="read-%d" % n)]
                    for n in range(4)]
            written = [[server.upload(dicom) for dicom in make_study("PAT-WRITE-%d" % n, 1, 5,
                                                                     seed="write-%d" % n)]
                       for n in range(3)]
            paths = []
            for study in read:
                first = study[0]
                paths += ["/studies/%s/shared-tags" % first["ParentStudy"],
                          "/studies/%s/instances-tags" % first["ParentStudy"],
                          "/series/%s/shared-tags" % first["ParentSeries"],
                          "/patients/%s/shared-tags" % first["ParentPatient"],
                          "/instances/%s/tags" % first["ID"],
                          "/instances/%s/metadata" % first["ID"]]
            time.sleep(5.5)  # settled: answers are stored and validated by version
            for path in paths:
                server.get(path)
            api = server.get("/system").json()["ApiVersion"]
            origin = time.monotonic()
            writer = Writer(server, written, labels=api >= 20, origin=origin)
            readers = Readers(server, paths, options.readers, origin)
            readers.start()
            readers.measure(2.0, time.sleep)  # every reader holds an ETag
            quiet, writes = Tally(), Tally()
            rounds: List[Tuple[float, float, str]] = []
            for _ in range(options.rounds):
                for kind, tally, during in (("quiet", quiet, time.sleep),
                                            ("writes", writes, writer.during)):
                    began = time.monotonic() - origin
                    tally.add(readers.measure(options.seconds, during))
                    rounds.append((began, time.monotonic() - origin, kind))
            readers.stop()
            fresh = seen_at_once(server, read[0])
        finally:
            server.stop()

    versions = stacks.versions()
    lines = [
        "`bench/writes.py --stack %s%s --seconds %g --rounds %d --readers %d`: Orthanc %s, "
        "Python plugin %s; %d URLs of 4 read studies, writes on 3 other studies (%s)."
        % (options.stack, " --allow-threads" if options.allow_threads else "", options.seconds,
           options.rounds, options.readers, versions.get("orthanc"),
           versions.get("orthanc-python"), len(paths),
           ", ".join("%s %d" % item for item in sorted(writer.done.items()))),
        "",
        "| rounds | reads/s | answered without computing | 304 | outcomes |",
        "|---|---:|---:|---:|---|",
    ]
    for name, tally in (("quiet", quiet), ("one write a second elsewhere", writes)):
        lines.append("| %s | %.0f | %.2f %% | %d of %d | %s |" % (
            name, tally.rate, 100 * tally.served, tally.not_modified, tally.reads,
            ", ".join("%s %d" % item for item in sorted(tally.outcomes.items()))))
    ratio = writes.rate / quiet.rate if quiet.rate else 0.0
    lines += ["", "Throughput with writes / without: **%.2f** (target 0.9); answered without "
              "computing during writes: **%.2f %%** (target 99 %%); a write on a read study "
              "seen by the next read: %s." % (
                  ratio, 100 * writes.served,
                  ", ".join("%s %s" % (name, "yes" if ok else "NO")
                            for name, ok in fresh.items()))]
    text = "\n".join(lines)
    print(text)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / ("writes-%s.md" % options.stack)).write_text(text + "\n", encoding="utf-8")
    (options.out / ("writes-%s.json" % options.stack)).write_text(json.dumps({
        "quiet": vars(quiet), "writes": vars(writes), "ratio": ratio, "fresh": fresh,
        "writes_done": dict(writer.done), "rounds": rounds, "write_times": writer.times,
        "timeline": {str(second): dict(counts)
                     for second, counts in sorted(readers.timeline.items())}},
        default=dict, indent=2), encoding="utf-8")
    chart(readers.timeline, rounds, writer.times, "Orthanc %s, Python plugin %s%s" % (
        versions.get("orthanc"), versions.get("orthanc-python"),
        ", AllowThreads" if options.allow_threads else ""),
        options.out / ("writes-%s.png" % options.stack))
    met = ratio >= 0.9 and writes.served >= 0.99 and all(fresh.values())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
