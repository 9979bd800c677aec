#!/usr/bin/env python3
"""Compare variants of the plugin on the hit path, side by side with the floor.

For trying an optimisation before and after, without the full benchmark::

    python3 bench/compare.py current=. faster=/tmp/faster [--duration 5] [--quick]

Each argument is ``name=folder``, the folder holding an ``orthanc_cache_plugin``
package (``.`` is this working tree).  Every variant gets its own Orthanc and
store on the same data (20 studies of 100 instances and one of 1,000, as in
``bench/run.py``); hits, revalidations and the spec scenario then run on each
server in turn, scenario by scenario, so that the variants share the same
machine conditions.  Prints a Markdown table of requests/s (and the ratio to
the floor); ``--out`` also gets it as ``compare.md`` with ``compare.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)


def parse_variant(text: str) -> Tuple[str, Path]:
    name, separator, folder = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError("expected name=folder, got %r" % text)
    path = Path(folder).resolve()
    if not (path / "orthanc_cache_plugin" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError("no orthanc_cache_plugin package in %s" % path)
    return name, path


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="name=folder")
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 s wrk runs")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5)")
    parser.add_argument("--out", type=Path, default=run.BENCH_DIR / "results",
                        help="output directory")
    args = parser.parse_args(argv)
    run.ensure_environment(profile=False)

    plan = run.Plan.quick_plan() if args.quick else run.Plan()
    if args.duration:
        plan.duration = args.duration
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-compare-"))
    bench = run.Bench(plan, out, workdir, profile=False, wrk_log="compare-wrk.log")
    names = ["floor"] + [name for name, _ in args.variants]
    rows: List[Dict[str, Any]] = []
    try:
        run._import_support()
        from support.dicom_factory import make_study

        base: List[bytes] = []
        for number in range(plan.spec_studies):
            base += make_study("BENCH-%03d" % number, 1, plan.small, seed="bench-small-%d" % number)
        big = make_study("BENCH-BIG", 1, plan.big, seed="bench-big")
        loader = run.make_server(workdir / "loader", "plain")
        loader.start()
        _, studies = run.upload_all(loader.port, base + big, plan.upload_threads)
        loader.stop()
        spec = list(dict.fromkeys(studies[:len(base)]))
        small, large = spec[0], studies[-1]

        for name in names:
            shutil.copytree(loader.storage_dir, workdir / name / "storage")
        bench.servers["floor"] = run.make_server(workdir / "floor", "floor")
        for name, path in args.variants:
            bench.servers[name] = run.make_server(workdir / name, "plugin",
                                                  workdir / name / "cache", path)
        for server in bench.servers.values():
            server.start(60)  # from this thread (see run.Bench.set_up)
        for name, path in args.variants:
            if path != run.REPO:  # else example.py imports this working tree
                bench.servers[name].wait_for_log(
                    "benchmark: orthanc_cache_plugin from %s/" % path)
        bench.clients = {name: run.Client(server.port) for name, server in bench.servers.items()}
        time.sleep(plan.settle_wait)
        urls = ["/studies/%s/%s" % (study, route) for study in (small, large)
                for route in ("shared-tags", "instances-tags")]
        urls += ["/studies/%s/shared-tags" % study for study in spec]
        for client in bench.clients.values():
            for url in urls * 2:
                if client.get(url)[0] != 200:
                    raise RuntimeError("priming %s failed" % url)

        scenarios = [
            ("hit shared-tags, %d instances" % plan.small, "/studies/%s/shared-tags" % small,
             False, 8),
            ("hit shared-tags, %d instances" % plan.small, "/studies/%s/shared-tags" % small,
             False, 64),
            ("revalidate shared-tags, %d instances" % plan.small, "/studies/%s/shared-tags" % small,
             True, 8),
            ("hit instances-tags, %d instances" % plan.big, "/studies/%s/instances-tags" % large,
             False, 8),
            ("revalidate instances-tags, %d instances" % plan.big,
             "/studies/%s/instances-tags" % large, True, 8),
        ]
        if plan.quick:
            scenarios = scenarios[:1] + scenarios[2:3]
        for label, url, revalidate, connections in scenarios:
            row: Dict[str, Any] = {"scenario": label, "connections": connections}
            for name in names:
                etag = bench.clients[name].get(url)[1].get("ETag", "") if revalidate else ""
                row[name] = bench.wrk.run(bench.servers[name], [(url, etag)], connections,
                                          plan.duration, "%s: %s" % (label, name)).as_dict()
            rows.append(row)
            run._log("%s c=%d: %s" % (label, connections, ", ".join(
                "%s %.0f" % (name, row[name]["rps"]) for name in names)))
        targets = [("/studies/%s/shared-tags" % study, "") for study in spec]
        row = {"scenario": "spec: shared-tags of %d studies, random" % len(spec),
               "connections": plan.spec_connections}
        for name in names:
            row[name] = bench.wrk.run(bench.servers[name], targets, plan.spec_connections,
                                      plan.duration, "spec: %s" % name).as_dict()
        rows.append(row)
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    header = "| Scenario | Conns | " + " | ".join(names) + " |"
    lines = ["requests/s (ratio to the floor); wrk runs of %d s" % plan.duration, "", header,
             "|---|--:|" + "--:|" * len(names)]
    for row in rows:
        cells = ["%.0f" % row["floor"]["rps"]] + [
            "%.0f (%.2f)" % (row[name]["rps"], row[name]["rps"] / max(row["floor"]["rps"], 1e-9))
            for name in names[1:]]
        lines.append("| %s | %d | %s |" % (row["scenario"], row["connections"], " | ".join(cells)))
    table = "\n".join(lines) + "\n"
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps(
        {"variants": {name: str(path) for name, path in args.variants}, "rows": rows}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
