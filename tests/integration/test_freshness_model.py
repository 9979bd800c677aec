"""Model-based freshness test: random writes never make the plugin answer stale.

A seeded random sequence of operations runs on a plain Orthanc and on an
Orthanc with the plugin (``StoreBinary`` on, so binaries come from the store
too; ``StableAge`` 1, so warm-up runs meanwhile), both holding the same data:

* uploads of new patients, studies, series, and of instances into existing
  series and studies, often right after a read of an affected resource, in
  the same second;
* deletions of instances, series, studies and patients;
* writes and deletions of user-defined metadata and attachments at every level;
* overwrites of instances (same SOPInstanceUID, other tags and pixels) and
  re-creations of deleted instances with other content;
* ``POST /{level}/{id}/reconstruct`` (sometimes with ``ReconstructFiles``), which
  touches the resource, everything below it and its ancestors (Orthanc 1.11+);
* on Orthancs that have the Housekeeper plugin (1.11+), restarts of both servers with
  another ``IngestTranscoding``, after which it rewrites every stored file without
  telling anyone (no event, no ``LastUpdate``, nothing in /changes);
* writes that touch no cached answer: labels set and removed (Orthanc 1.12+, when
  ``/system`` says ``HasLabels``), C-ECHOs and queries to a configured modality where
  nobody listens (they fail, alike on both servers);
* reads of every cached route, on existing and recently deleted resources,
  plain or with ``If-None-Match`` / ``If-Modified-Since`` from an earlier 200
  of the plugin for the same URL.

Short random pauses, and every 120 operations a quiet phase of 15 s followed
by re-reads, let resources become stable and answers settle, so that stored
answers are served, and 304s given, before the next writes.

Every plugin answer must be plain Orthanc's current answer (status,
Content-Type, body; see ``support/oracle.py``), and a 304 is only right when
plain Orthanc still answers what the client got with those validators.  And
the ETag of an answer taken while its resource had settled (no write touching
it, as docs/freshness.md's table says, for ``FreshnessRun.TOUCH_SETTLE`` s, no
new instance in it for ``UPLOAD_SETTLE`` s) must be the ETag of the latest such
answer of the same URL, Accept and node unless a write touched the resource in
between: writes elsewhere, and unrelated ones, change no ETag ("changed etag";
the summary counts the "etag checks").  A failure shows the seed, the step,
the writes since the client's copy, a diff and the last operations.  The model
lives in ``support/model.py``; it also drives several plugin nodes sharing one
database:
``FreshnessRun(seed, plain, [node_a, node_b], instance_reads=CLUSTER_INSTANCE_READS)``.

Environment:

* ``FRESHNESS_OPERATIONS``: number of operations (default 300, about 45 s);
* ``FRESHNESS_SEED``: seed of the sequence (default ``1``);
* ``FRESHNESS_CLUSTER_OPERATIONS``: operations of the two-node variant (default 250);
* ``FRESHNESS_KEEP_GOING=1``: count every violation instead of stopping at
  the first one.

The long run (5,000 operations, about 15 minutes; ``-s`` prints the counts)::

    FRESHNESS_OPERATIONS=5000 FRESHNESS_SEED=7 \\
        .venv/bin/python -m pytest tests/integration/test_freshness_model.py -s
"""

from __future__ import annotations

import os
from typing import Callable

import pytest

from support import stacks
from support.model import (
    CLUSTER_INSTANCE_READS,
    HOUSEKEEPER_CONFIG,
    SERVER_CONFIG,
    FreshnessRun,
)
from support.orthanc_server import OrthancServer
from support.redis_server import RedisServer

OPERATIONS = int(os.environ.get("FRESHNESS_OPERATIONS", "300"))
SEED = os.environ.get("FRESHNESS_SEED", "1")
KEEP_GOING = os.environ.get("FRESHNESS_KEEP_GOING", "") not in ("", "0")
CLUSTER_OPERATIONS = int(os.environ.get("FRESHNESS_CLUSTER_OPERATIONS", "250"))
#: docs/freshness.md: changes made through another node are seen within 1 s.
OTHER_NODE_BOUND = 1.0
#: docs/deployment.md: with a shared Redis store, within 0.25 s.
SHARED_STORE_BOUND = 0.25
SHARED_OPERATIONS = int(os.environ.get("FRESHNESS_SHARED_OPERATIONS", "250"))


def test_random_writes_never_leave_a_stale_answer(
        orthanc_factory: Callable[..., OrthancServer],
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    """On one node; where Orthanc has its Housekeeper (1.11+), both servers load it and
    the operations include restarts that make it rewrite every file."""
    housekeeper = stacks.host_path(stacks.HOUSEKEEPER_PLUGIN).exists()
    config, plugins = dict(SERVER_CONFIG), []
    if housekeeper:
        config.update(HOUSEKEEPER_CONFIG)
        plugins = [stacks.HOUSEKEEPER_PLUGIN]
    plain = orthanc_factory(config=dict(config, Plugins=plugins))
    plugin = cached_orthanc({"StoreBinary": True},
                            config=dict(config, Plugins=[stacks.PYTHON_PLUGIN] + plugins))
    report = FreshnessRun(SEED, plain, [plugin], keep_going=KEEP_GOING,
                          housekeeper=housekeeper).run(OPERATIONS)
    print(report.summary())
    if report.violations:
        pytest.fail(report.failure_message(), pytrace=False)


def test_random_writes_on_a_cluster_never_leave_a_stale_answer(
        orthanc_factory: Callable[..., OrthancServer], cluster) -> None:
    """Two plugin nodes on one PostgreSQL index; reads through the other node
    than the last write's wait the stated bound (1 s)."""
    plain = orthanc_factory(config=SERVER_CONFIG)
    nodes = cluster(2, settings={"StoreBinary": True}, config=SERVER_CONFIG).nodes
    report = FreshnessRun(SEED, plain, nodes, keep_going=KEEP_GOING,
                          instance_reads=CLUSTER_INSTANCE_READS,
                          other_node_delay=OTHER_NODE_BOUND).run(CLUSTER_OPERATIONS)
    print(report.summary())
    if report.violations:
        pytest.fail(report.failure_message(), pytrace=False)


def test_random_writes_on_three_nodes_sharing_redis_never_leave_a_stale_answer(
        orthanc_factory: Callable[..., OrthancServer], cluster) -> None:
    """Three plugin nodes on one PostgreSQL index and one Redis store (``Backend:
    redis``, one key prefix): answers one node stored are served by the others, so a
    change made through one node must reach the others' versions; reads through another
    node than the last write's wait only the shared store's bound (0.25 s)."""
    plain = orthanc_factory(config=SERVER_CONFIG)
    with RedisServer() as redis:
        nodes = cluster(3, settings={"StoreBinary": True, "Backend": "redis",
                                     "RedisUrl": redis.url, "KeyPrefix": "model:"},
                        config=SERVER_CONFIG).nodes
        for node in nodes:
            assert node.wait_for_log("hears the other nodes' changes")
        report = FreshnessRun(SEED, plain, nodes, keep_going=KEEP_GOING,
                              instance_reads=CLUSTER_INSTANCE_READS,
                              other_node_delay=SHARED_STORE_BOUND).run(SHARED_OPERATIONS)
        print(report.summary())
        hits = sum(node.log_text().count("HIT GET") for node in nodes)
        print("hits on the three nodes: %d" % hits)
    if report.violations:
        pytest.fail(report.failure_message(), pytrace=False)
