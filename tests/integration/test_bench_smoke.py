"""The benchmark (bench/run.py) runs end to end in its tiny --quick mode.

No timing assertion: only that it measures every server, gets the answers it
expects (200 hits, 304 revalidations, no wrk errors), and writes its table
and chart.  Takes about 30 s (1 s wrk runs, studies of a few instances).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import stacks


def test_quick_benchmark_writes_a_table_and_a_chart(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = subprocess.run(
        # The stack pytest runs (--stack), not the benchmark's own default (sid).
        [sys.executable, str(repo_root / "bench" / "run.py"), "--quick",
         "--stack", stacks.current(), "--out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table = (out / "results.md").read_text()
    assert table.strip() in result.stdout  # printed too
    assert "| Scenario | Conns | plain req/s | plugin req/s | floor req/s |" in table
    for section in ("## Scale", "## Cold misses", "## Ingest", "## Memory", "## Targets"):
        assert section in table

    results = json.loads((out / "results.json").read_text())
    groups = {row["group"] for row in results["loads"]}
    assert groups == {"hit", "304", "spec", "mixed"}
    for row in results["loads"]:
        for server in ("plain", "plugin", "floor"):
            load = row[server]
            assert load["requests"] > 0 and load["errors"] == 0, (row["scenario"], server, load)
        if row["group"] == "304":  # plain Orthanc sends no ETag: it answers 200
            assert (row["plain"]["statuses"], row["plugin"]["statuses"], row["floor"]["statuses"]) \
                == ("200", "304", "304"), row
        elif row["group"] == "hit":
            assert {row[server]["statuses"] for server in ("plain", "plugin", "floor")} == {"200"}
        elif row["group"] == "mixed":  # misses were asked for while the hits ran
            assert all(row[server]["misses"] > 0 for server in ("plain", "plugin", "floor")), row
    assert [entry["server"] for entry in results["scale"]] == ["plugin", "plugin-100k"]
    assert results["scale"][1]["entries"] > results["scale"][0]["entries"]
    assert {row["kind"] for row in results["cold"]} == {"new key", "after write",
                                                        "browser, new key"}
    assert [len(row["ratios"]) for row in results["codings"]] == [1, 1]  # two routes
    assert set(results["ingest"]) == {"plain", "plugin", "floor"}
    assert set(results["memory"]) == {"plain", "plugin", "floor", "plugin-100k"}
    assert [target["target"].split(" with ")[0] for target in results["targets"]] == [
        "hits", "a browser's hits", "304 revalidations", "cold miss: first GET after a change",
        "cold miss: first GET of a new key (stored)",
        "cold miss: a browser's first GET of a new key (compressed once, stored)", "ingest",
        "hits", "memory"]

    chart = (out / "chart.png").read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n") and len(chart) > 10_000


def test_the_writes_benchmark_runs_and_sees_related_writes(repo_root: Path,
                                                           tmp_path: Path) -> None:
    """bench/writes.py, in short rounds: it measures both kinds of round, and a write on
    a study being read is seen by the next read (its exit status also judges the
    throughput target, which short rounds on a busy machine cannot: not asserted)."""
    from support import stacks

    result = subprocess.run(
        [sys.executable, str(repo_root / "bench" / "writes.py"), "--stack", stacks.current(),
         "--seconds", "2", "--rounds", "1", "--readers", "4", "--out", str(tmp_path)],
        cwd=repo_root, capture_output=True, text=True, timeout=170)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads((tmp_path / ("writes-%s.json" % stacks.current())).read_text())
    assert figures["fresh"] == {"metadata PUT": True, "instance deletion": True}
    for kind in ("quiet", "writes"):
        assert figures[kind]["reads"] > 0, figures
    assert sum(figures["writes_done"].values()) >= 2, figures
    assert len(figures["write_times"]) == sum(figures["writes_done"].values())
    assert [kind for _, _, kind in figures["rounds"]] == ["quiet", "writes"]
    assert sum(counts["reads"] for counts in figures["timeline"].values()) >= \
        figures["quiet"]["reads"] + figures["writes"]["reads"]
    assert "| quiet |" in result.stdout
    chart = (tmp_path / ("writes-%s.png" % stacks.current())).read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n") and len(chart) > 10_000


def test_the_cluster_benchmark_measures_both_stores(repo_root: Path, tmp_path: Path) -> None:
    """bench/cluster.py --quick: three nodes behind nginx, per-node disk stores then the
    shared Redis store; every scenario measured through nginx on every node, sharing seen
    (hits on every node after warm-up on one, no miss on a restarted node), the cost of a
    hit end to end and in-process, the table printed and the chart drawn (about 80 s)."""
    stack = stacks.current()
    result = subprocess.run(
        [sys.executable, str(repo_root / "bench" / "cluster.py"), "--quick", "--stack", stack,
         "--out", str(tmp_path)],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / ("cluster-%s.md" % stack)).read_text()
    assert table.strip() in result.stdout
    assert "| Scenario | Store | Reads | Hit ratio | per node |" in table

    results = json.loads((tmp_path / ("cluster-%s.json" % stack)).read_text())
    rows = {(row["store"], row["scenario"]): row["tally"] for row in results["scenarios"]}
    scenarios = ["after warm-up on node 1", "steady state (every node served)",
                 "right after node 2 restarts", "node 2 rescheduled (empty Directory)"]
    assert sorted(rows) == sorted((store, scenario) for store in ("disk", "redis")
                                  for scenario in scenarios)
    for (store, scenario), tally in rows.items():
        assert tally["errors"] == 0, (store, scenario, tally)
        assert sorted(tally["nodes"]) == ["node 1", "node 2", "node 3"], (store, scenario, tally)
        assert tally["hit_ratio"] is not None

    def node_ratios(store: str, scenario: str) -> list:
        nodes = rows[(store, scenario)]["nodes"]
        return [nodes["node %d" % number]["hit_ratio"] for number in (1, 2, 3)]

    # Node 1 warmed every answer; per-node disk stores leave nodes 2 and 3 to compute theirs.
    assert node_ratios("disk", scenarios[0]) == [1.0, 0.0, 0.0]
    # The shared store: node 1's warm-up serves every node.
    assert node_ratios("redis", scenarios[0]) == [1.0, 1.0, 1.0]
    assert rows[("disk", scenarios[1])]["hit_ratio"] >= 0.95
    # A restart keeps a node's disk store and generations; an empty Directory does not.
    assert node_ratios("disk", scenarios[2]) == [1.0, 1.0, 1.0]
    assert node_ratios("disk", scenarios[3]) == [1.0, 0.0, 1.0]
    # With the shared store, even a node with an empty Directory never misses: it hits, or
    # answers BYPASS (Orthanc's answer, not stored) until it has joined the other nodes.
    for scenario in scenarios[2:]:
        assert set(rows[("redis", scenario)]["nodes"]["node 2"]["outcomes"]) <= {
            "HIT", "BYPASS"}, (scenario, rows[("redis", scenario)])

    assert {(row["source"], row["store"]) for row in results["end_to_end"]} == {
        ("memory front", "disk"), ("disk", "disk"), ("memory front", "redis"),
        ("redis", "redis")}
    for row in results["end_to_end"]:
        assert row["requests"] > 0 and row["errors"] == 0, row
    assert {row["source"] for row in results["micro"]} == {
        "memory front", "disk", "disk, connection per get", "disk, connection per get, no other",
        "redis"}
    assert all(row["us"] > 0 for row in results["micro"])
    chart = (tmp_path / ("cluster-%s.png" % stack)).read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n") and len(chart) > 10_000


def test_the_viewer_benchmark_opens_the_study_as_each_viewer(repo_root: Path,
                                                              tmp_path: Path) -> None:
    """bench/viewer.py --quick: plain Orthanc and the plugin, each with DICOMweb and behind
    its documented nginx, opened as OHIF and as Orthanc Explorer 2 by three kinds of user
    while another patient is uploaded; a returning user revalidates everything with the
    plugin (304s, few bytes), nothing with plain Orthanc; the table and chart are written."""
    stack = stacks.current()
    result = subprocess.run(
        [sys.executable, str(repo_root / "bench" / "viewer.py"), "--quick", "--stack", stack,
         "--out", str(tmp_path)],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / ("viewer-%s.md" % stack)).read_text()
    assert table.strip() in result.stdout
    results = json.loads((tmp_path / ("viewer-%s.json" % stack)).read_text())
    assert sorted(results["opens"]) == ["OHIF", "Orthanc Explorer 2"]
    for scenario, servers in results["opens"].items():
        for kind in ("first", "another", "same"):
            assert servers["plain"][kind]["requests"] == servers["plugin"][kind]["requests"]
        same = servers["plugin"]["same"]
        assert same["not_modified"] == same["requests"], (scenario, same)
        assert servers["plain"]["same"]["not_modified"] == 0, scenario
        assert same["bytes"] < servers["plain"]["same"]["bytes"] / 10, (scenario, servers)
    assert results["writes"] > 0
    assert [row["target"] for row in results["targets"]][:3] == [
        "another user: time <= 0.5 x plain", "same user again: >= 90 % 304s",
        "same user again: bytes <= 10 % of plain"]
    chart = (tmp_path / ("viewer-%s.png" % stack)).read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n") and len(chart) > 10_000
