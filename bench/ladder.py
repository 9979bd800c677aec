#!/usr/bin/env python3
"""What each part of a hit costs: the floor, plus one part of the plugin's work at a time.

    python3 bench/ladder.py [--duration 4] [--rounds 2] [--connections 8]

Starts one Orthanc per rung on the same data (a study of 100 instances),
each running ``bench/ladder_script.py`` with more of a hit's work than the
rung before (see that file), then the plugin itself; runs wrk on
``/studies/{id}/shared-tags`` on each in turn, ``--rounds`` times, and prints
the median requests/s and what each rung adds per request (µs, from the
difference of 1/throughput: the Python part of every request runs under the
GIL, one at a time).  ``--out`` also gets ``ladder.md`` and ``ladder.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)

SCRIPT = run.BENCH_DIR / "ladder_script.py"

#: (label, BENCH_LADDER parts); None: the plugin itself (this working tree).
RUNGS: Tuple[Tuple[str, Any], ...] = (
    ("floor: bytes from a dict", ""),
    ("+ incoming-request filter", "filter"),
    ("+ RestApiGet of LastUpdate", "filter,lastupdate"),
    ("+ diskcache read (least-recently-stored, connection per OS thread)",
     "filter,lastupdate,store"),
    ("+ least-recently-used (a write transaction per read)", "filter,lastupdate,store,lru"),
    ("+ a new SQLite connection per request (diskcache's threading.local)",
     "filter,lastupdate,store,lru,fresh-connections"),
    ("+ LogInfo per request", "filter,lastupdate,store,lru,fresh-connections,log"),
    ("the plugin (this working tree)", None),
)


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="wrk runs per rung")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--rung", action="append", metavar="PARTS",
                        help="measure these rungs instead (BENCH_LADDER parts, e.g. 'store' or "
                             "'filter,lastupdate'; '' is the floor, 'plugin' the plugin); "
                             "repeatable")
    parser.add_argument("--out", type=Path, default=run.BENCH_DIR / "results",
                        help="output directory")
    args = parser.parse_args(argv)
    run.ensure_environment(profile=False)
    run._import_support()
    from support.dicom_factory import make_study
    from support.orthanc_server import OrthancServer

    rungs = RUNGS
    if args.rung:
        rungs = tuple((("plugin" if parts == "plugin" else "parts: %s" % (parts or "(floor)")),
                       None if parts == "plugin" else parts) for parts in args.rung)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-ladder-"))
    wrk = run.Wrk(out, "ladder-wrk.log")
    servers: List[Any] = []
    rates: Dict[int, List[float]] = {index: [] for index in range(len(rungs))}
    try:
        loader = run.make_server(workdir / "loader", "plain")
        loader.start()
        _, studies = run.upload_all(loader.port,
                                    make_study("LADDER", 1, args.instances, seed="ladder"), 4)
        loader.stop()
        url = "/studies/%s/shared-tags" % studies[0]
        for index, (_, parts) in enumerate(rungs):
            folder = workdir / ("rung-%d" % index)
            shutil.copytree(loader.storage_dir, folder / "storage")
            if parts is None:
                server = run.make_server(folder, "plugin", folder / "cache")
            else:
                server = OrthancServer(folder, python_script=SCRIPT, config=dict(run.COMMON_CONFIG),
                                       log_flags=(),
                                       env={"BENCH_LADDER": parts,
                                            "BENCH_LADDER_STORE": str(folder / "store")})
            server.start(60)  # from this thread (see run.Bench.set_up)
            servers.append(server)
        time.sleep(run.Plan().settle_wait)  # the plugin stores nothing changed < 3 s ago
        for server in servers:
            client = run.Client(server.port)
            for _ in range(2):
                if client.get(url)[0] != 200:
                    raise RuntimeError("%s answered an error" % url)
            client.close()
        for round_ in range(args.rounds):
            for index, server in enumerate(servers):
                load = wrk.run(server, [(url, "")], args.connections, args.duration,
                               "ladder %s, round %d" % (rungs[index][0], round_ + 1))
                rates[index].append(load.rps)
            run._log("round %d: %s" % (round_ + 1, ", ".join("%.0f" % rates[i][-1] for i in rates)))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    lines = ["wrk -c%d on `GET /studies/{id}/shared-tags` (%d instances), "
             "median of %d runs of %d s." % (
        args.connections, args.instances, args.rounds, args.duration), "",
        "| Rung | req/s | ÷ first | µs per request | added µs |", "|---|--:|--:|--:|--:|"]
    rows = []
    floor = statistics.median(rates[0])
    previous = None
    for index, (label, parts) in enumerate(rungs):
        rps = statistics.median(rates[index])
        cost = 1e6 / rps
        # The default rungs add one part each: compare with the rung above; custom
        # rungs are independent: compare with the first one.
        reference = previous if not args.rung else (1e6 / floor if index else None)
        added = "" if reference is None else "%+.0f" % (cost - reference)
        if parts is None and not args.rung:  # the plugin's own Python on top of its parts
            added += " (vs the rung above)"
        lines.append("| %s | %.0f | %.2f | %.0f | %s |" % (label, rps, rps / floor, cost, added))
        rows.append({"rung": label, "parts": parts, "rps": rps, "runs": rates[index]})
        previous = cost
    table = "\n".join(lines) + "\n"
    (out / "ladder.md").write_text(table)
    (out / "ladder.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
