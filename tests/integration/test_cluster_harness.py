"""The cluster harness: Orthanc nodes sharing one PostgreSQL index and one storage directory.

Also pins down what a cluster-aware cache can rely on: changes (``/changes``) are
shared at once, whereas plugin global properties are stored per
``DatabaseServerIdentifier`` (orthanc-postgresql's ``ServerProperties`` table),
which Orthanc derives from each node's MAC addresses, AET and ports unless the
configuration sets it: nodes share them only if they share that identifier.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Callable, Optional

import pytest

from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer
from support.postgres import OrthancCluster

PROPERTY = 4242
SERVER_IDENTIFIER = re.compile(r'Identifier of this Orthanc server for the global properties '
                               r'of the custom database: "([^"]+)"')

PROBE_SCRIPT = textwrap.dedent(
    f"""
    import orthanc

    def global_property(output, uri, **request):
        if request["method"] == "GET":
            output.AnswerBuffer(orthanc.GetGlobalProperty({PROPERTY}, ""), "text/plain")
        else:
            orthanc.SetGlobalProperty({PROPERTY}, request["body"].decode("utf-8"))
            output.AnswerBuffer("", "text/plain")

    def last_change(output, uri, **request):
        output.AnswerBuffer(orthanc.RestApiGet("/changes?last"), "application/json")

    orthanc.RegisterRestCallback("/probe/global-property", global_property)
    orthanc.RegisterRestCallback("/probe/last-change", last_change)
    """
)


@pytest.fixture
def probe_script(tmp_path: Path) -> Path:
    """A Python script exposing global property 4242 and ``RestApiGet('/changes?last')``."""
    script = tmp_path / "cluster_probe.py"
    script.write_text(PROBE_SCRIPT, encoding="utf-8")
    return script


def set_property(node: OrthancServer, value: str) -> None:
    """``SetGlobalProperty(4242, value)`` inside ``node``."""
    response = node.put("/probe/global-property", data=value.encode("utf-8"))
    assert response.status_code == 200, response.text


def get_property(node: OrthancServer) -> str:
    """``GetGlobalProperty(4242, "")`` inside ``node``."""
    response = node.get("/probe/global-property")
    assert response.status_code == 200, response.text
    return response.text


def last_change_seen_by_plugin(node: OrthancServer) -> int:
    """``Last`` of ``RestApiGet('/changes?last')`` inside ``node``."""
    response = node.get("/probe/last-change")
    assert response.status_code == 200, response.text
    return int(json.loads(response.text)["Last"])


def server_identifier(node: OrthancServer) -> str:
    """The ``DatabaseServerIdentifier`` the node logged at start-up."""
    return node.wait_for_log(SERVER_IDENTIFIER.pattern).group(1)


@pytest.mark.parametrize("with_cache_plugin", [False, True], ids=["plain", "cache-plugin"])
def test_nodes_share_index_and_storage(cluster: Callable[..., OrthancCluster], example_script: Path,
                                       with_cache_plugin: bool) -> None:
    script: Optional[Path] = example_script if with_cache_plugin else None
    node_a, node_b = cluster(python_script=script).nodes
    dicom = make_study("PAT-CLUSTER", n_series=1, n_instances=1, seed="cluster")[0]

    uploaded = node_a.upload(dicom)

    assert uploaded["Status"] == "Success"
    assert node_b.get("/studies").json() == [uploaded["ParentStudy"]]
    stored = node_b.get(f"/instances/{uploaded['ID']}/file")
    assert stored.status_code == 200
    assert stored.content == dicom


def test_each_node_has_its_cache_directory_and_index_connections(
        cluster: Callable[..., OrthancCluster]) -> None:
    created = cluster(n=3)
    node_configs = [node.config for node in created.nodes]

    assert len({config["CachePlugin"]["Directory"] for config in node_configs}) == 3
    assert {config["StorageDirectory"] for config in node_configs} == {str(created.storage_dir)}
    assert {config["PostgreSQL"]["Port"] for config in node_configs} == {created.postgres.port}
    assert all(config["PostgreSQL"]["Lock"] is False for config in node_configs)
    connections = created.postgres.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()")
    assert int(connections) == sum(config["PostgreSQL"]["IndexConnectionsCount"]
                                   for config in node_configs)


def test_global_properties_are_per_node_by_default(cluster: Callable[..., OrthancCluster],
                                                   probe_script: Path) -> None:
    created = cluster(python_script=probe_script)
    node_a, node_b = created.nodes
    assert server_identifier(node_a) != server_identifier(node_b)

    set_property(node_a, "set through A")
    assert get_property(node_a) == "set through A"
    assert get_property(node_b) == ""

    set_property(node_b, "set through B")
    assert get_property(node_a) == "set through A"
    assert get_property(node_b) == "set through B"

    rows = created.postgres.psql(
        f"SELECT server, value FROM ServerProperties WHERE property = {PROPERTY} ORDER BY value")
    assert rows.splitlines() == [f"{server_identifier(node_a)}|set through A",
                            f"{server_identifier(node_b)}|set through B"]


def test_global_properties_are_shared_with_a_common_server_identifier(
        cluster: Callable[..., OrthancCluster], probe_script: Path) -> None:
    node_a, node_b = cluster(python_script=probe_script,
                             config={"DatabaseServerIdentifier": "harness-cluster"}).nodes
    assert server_identifier(node_a) == server_identifier(node_b) == "harness-cluster"

    set_property(node_a, "first")
    assert get_property(node_b) == "first"  # no retry: read back at once
    set_property(node_a, "second")
    assert get_property(node_b) == "second"
    for round_trip in range(20):  # alternating writers: no node serves a stale copy
        writer, reader = (node_a, node_b) if round_trip % 2 else (node_b, node_a)
        set_property(writer, f"value-{round_trip}")
        assert get_property(reader) == f"value-{round_trip}"


def test_plugin_sees_changes_made_on_another_node(cluster: Callable[..., OrthancCluster],
                                                   probe_script: Path) -> None:
    node_a, node_b = cluster(python_script=probe_script).nodes
    assert last_change_seen_by_plugin(node_b) == 0

    for seed in ("first", "second"):
        node_a.upload(make_study("PAT-CHANGES", n_series=1, n_instances=1, seed=seed)[0])
        last_on_a = node_a.get("/changes?last").json()["Last"]
        assert last_on_a > 0
        assert last_change_seen_by_plugin(node_b) == last_on_a  # no retry: seen at once
