#!/usr/bin/env python3
"""Memory under many requests: does Orthanc's resident memory grow with the plugin?

One command (as root, from the repository's root, after ``scripts/test.sh`` made the
virtual environment and the stacks; needs ``wrk``)::

    .venv/bin/python bench/memory.py [--stack sid|bookworm] [--requests 1000000]

Three Orthancs hold the same small study: plain, the plugin as configured by
default (with its incoming-request filter), and the plugin with
``WatchHttpWrites`` false (no filter).  Each gets ``--requests`` requests
through wrk, half to ``/system`` (a route of Orthanc's: the filter runs, the
plugin's REST callbacks do not) and half to a 2-instance study's ``shared-tags`` (a
cached route: hits).  After a warm-up of 5 % of the requests, it reads each
process's resident memory (``VmRSS``), sends the rest, lets the servers idle
for a few seconds, and reads it again.  It prints the growth per request in
bytes: a leak shows as a steady figure (the Python plugin 4.0's filter leaks
about 370 bytes a request, issue #9), noise as a few bytes either way.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from support import stacks  # noqa: E402
from support.dicom_factory import make_study  # noqa: E402
from support.orthanc_server import OrthancServer  # noqa: E402

#: Seconds of one wrk run: the requests are sent in runs of this length.
CHUNK = 20
#: The servers measured, by name (--servers): None for plain Orthanc, else the
#: plugin's settings.
KINDS: Dict[str, Optional[Dict[str, object]]] = {
    "plain": None,
    "plugin": {},
    "plugin-no-filter": {"WatchHttpWrites": False},
}


def resident_mb(pid: int) -> float:
    """VmRSS of a process, in MB."""
    status = Path("/proc/%d/status" % pid).read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def send(url: str, requests: int, connections: int = 16) -> int:
    """At least ``requests`` GETs of ``url`` with wrk (runs of at most CHUNK seconds, sized
    from the rate of the previous one); how many were sent."""
    done, seconds = 0, 2
    while done < requests:
        output = subprocess.run(
            ["wrk", "-t2", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "30s", url],
            capture_output=True, text=True, check=True).stdout
        found = re.search(r"(\d+) requests in", output)
        if not found or int(found.group(1)) == 0:
            raise RuntimeError("wrk sent nothing:\n" + output)
        done += int(found.group(1))
        rate = int(found.group(1)) / seconds
        seconds = max(1, min(CHUNK, math.ceil((requests - done) / rate)))
    return done


def measure(server: OrthancServer, paths: Sequence[str], requests: int) -> Dict[str, float]:
    """Resident memory before and after ``requests`` requests spread over ``paths``."""
    pid = server.pid
    assert pid is not None
    each = max(1, requests // len(paths))
    for path in paths:  # warm-up: threads, connections, caches
        send(server.url + path, each // 20)
    time.sleep(3)
    before = resident_mb(pid)
    sent = sum(send(server.url + path, each) for path in paths)
    time.sleep(5)
    after = resident_mb(pid)
    return {"requests": sent, "before_mb": before, "after_mb": after,
            "bytes_per_request": (after - before) * 1024 * 1024 / sent}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=stacks.NAMES, default="sid")
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="requests to each server, after the warm-up")
    parser.add_argument("--servers", nargs="+", choices=KINDS, default=list(KINDS),
                        help="which servers to measure (default: all three)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    options = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is missing: apt-get install wrk")
    stacks.select(options.stack)

    kinds = {name: KINDS[name] for name in options.servers}
    rows: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="orthanc-memory-") as folder:
        study = make_study("PAT-MEMORY", 1, 2, seed="memory")
        for number, (name, section) in enumerate(kinds.items()):
            workdir = Path(folder) / ("server-%d" % number)
            config: Dict[str, object] = {"HttpThreadsCount": 32}
            script = None
            if section is not None:
                config["CachePlugin"] = dict(section, Directory=str(workdir / "cache"))
                script = REPO / "example.py"
            server = OrthancServer(workdir, python_script=script, config=config, log_flags=())
            server.start()
            try:
                ids = [server.upload(dicom) for dicom in study]
                time.sleep(4)  # settled: the plugin stores and hits
                paths = ["/system", "/studies/%s/shared-tags" % ids[0]["ParentStudy"]]
                rows[name] = measure(server, paths, options.requests)
            finally:
                server.stop()
            print("%s: %s" % (name, json.dumps(rows[name])), flush=True)

    versions = stacks.versions()
    lines = [
        "`bench/memory.py --stack %s --requests %d --servers %s`: Orthanc %s, Python plugin "
        "%s; half `/system`, half a 2-instance study's `shared-tags`, wrk 16 connections "
        "(plugin-no-filter: WatchHttpWrites false)."
        % (options.stack, options.requests, " ".join(options.servers), versions.get("orthanc"),
           versions.get("orthanc-python")),
        "",
        "| server | requests | VmRSS before (MB) | after (MB) | growth per request (bytes) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append("| %s | %d | %.1f | %.1f | %.1f |" % (
            name, row["requests"], row["before_mb"], row["after_mb"],
            row["bytes_per_request"]))
    text = "\n".join(lines)
    print(text)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / ("memory-%s.md" % options.stack)).write_text(text + "\n", encoding="utf-8")
    (options.out / ("memory-%s.json" % options.stack)).write_text(
        json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
