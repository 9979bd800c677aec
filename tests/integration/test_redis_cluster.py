"""Three Orthanc nodes, one PostgreSQL index, one Redis store (``Backend: redis``).

What one node computed or warmed up is a hit on the others (their first
request included), and what one node changes reaches the others' versions
at once: the writing node publishes the change before Orthanc runs the
write (docs/deployment.md states 0.25 s; the figures are printed).  A node
restarted with an empty directory (a rescheduled container) joins the
others and serves their answers.  The freshness model test runs on such a
cluster too (test_freshness_model.py).
"""

from __future__ import annotations

import shutil
import time
from typing import Callable, Dict, Iterator, List

import pytest
import requests

from orthanc_cache_plugin.core.data import Outcome
from support.concurrent import get_together
from support.dicom_factory import make_instance, make_study
from support.orthanc_server import OrthancServer
from support.postgres import OrthancCluster
from support.redis_server import RedisServer

#: Also run on Debian 12's Orthanc 1.10.1 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

NO_GZIP = {"Accept-Encoding": "identity"}
#: freshness.SETTLE + freshness.GRACE: after a write, answers are stored again.
QUIET = 5.2
#: What docs/deployment.md states for a change made through another node.
BOUND = 0.25
JOINED = "hears the other nodes' changes"


@pytest.fixture
def shared(cluster: Callable[..., OrthancCluster]) -> Iterator[OrthancCluster]:
    with RedisServer() as redis:
        nodes = cluster(3, settings={"Backend": "redis", "RedisUrl": redis.url,
                                     "KeyPrefix": "cluster-test:"},
                        config={"StableAge": 1, "Python": {"AllowThreads": True}})
        for node in nodes.nodes:
            assert node.wait_for_log(JOINED)
        yield nodes
        # Every node stops cleanly, its bus thread included (Python 3.14 crashed at
        # stops with threads still running: clean_exit.py).
        for node in nodes.nodes:
            node.stop()
            assert node.process is not None and node.process.returncode == 0, node.log_tail()
            assert node.log_text().rstrip().endswith("Orthanc has stopped")


def get(server: OrthancServer, path: str, **headers: str) -> requests.Response:
    return server.get(path, headers=dict(NO_GZIP, **headers))


def status(server: OrthancServer) -> Callable[[str], str]:
    return lambda path: get(server, path).headers.get("X-Cache-Status", "")


def routes(instance: Dict[str, str]) -> List[str]:
    return ["/studies/%s/shared-tags" % instance["ParentStudy"],
            "/studies/%s/instances-tags" % instance["ParentStudy"],
            "/series/%s/instances-tags?short" % instance["ParentSeries"],
            "/patients/%s/instances-tags" % instance["ParentPatient"]]


def test_warmed_up_on_one_node_a_hit_on_every_node(shared: OrthancCluster) -> None:
    first, second, third = shared.nodes
    uploaded = [first.upload(dicom) for dicom in make_study("PAT-shared", 2, 2, seed="shared")]
    study = uploaded[0]["ParentStudy"]
    # StableAge 1: the first node warms the study up once it is stable.
    assert first.wait_for_log(r"warm-up of studies %s: \d+ answers stored" % study, timeout=30)
    assert first.wait_for_log(r"warm-up of patients %s" % uploaded[0]["ParentPatient"],
                              timeout=30)
    for path in routes(uploaded[0]):
        truth = get(first, path)
        for node in (second, third):
            answer = get(node, path)
            assert answer.headers["X-Cache-Status"] == "HIT", (path, node.outcomes(path))
            assert (answer.status_code, answer.content) == (200, truth.content)
            assert answer.headers["ETag"] == truth.headers["ETag"]
            # A validator of one node is one of every node.
            assert get(node, path, **{"If-None-Match": truth.headers["ETag"]}).status_code == 304
    assert second.outcomes(routes(uploaded[0])[0]) == [Outcome.HIT, Outcome.REVALIDATED]


def test_changes_through_one_node_reach_the_others_at_once(shared: OrthancCluster) -> None:
    """Each write goes through one node in turn.  From the moment Orthanc answered it,
    one of the other nodes is read without pause until it answers what Orthanc now
    holds (the delay is printed); after the bound, every watched route of both other
    nodes answers it, and no validator taken before gives a 304."""
    nodes = shared.nodes
    uploaded = [nodes[0].upload(dicom) for dicom in make_study("PAT-fresh", 1, 4, seed="fresh")]
    instance = uploaded[0]
    series, study = instance["ParentSeries"], instance["ParentStudy"]
    study_uid = nodes[0].get("/studies/%s" % study).json()["MainDicomTags"]["StudyInstanceUID"]
    series_uid = nodes[0].get("/series/%s" % series).json()["MainDicomTags"][
        "SeriesInstanceUID"]
    watched = ["/series/%s/instances-tags" % series, "/studies/%s/shared-tags" % study,
               "/studies/%s/attachments" % study] + \
        ["/instances/%s/metadata?expand" % each["ID"] for each in uploaded]
    time.sleep(QUIET)
    for node in nodes:
        for path in watched:
            get(node, path)
    assert status(nodes[2])(watched[0]) == "HIT"

    writes = [
        ("put metadata", lambda node: node.put("/instances/%s/metadata/1024" % uploaded[1]["ID"],
                                               data=b"a")),
        ("put attachment", lambda node: node.put("/studies/%s/attachments/1030" % study,
                                                 data=b"n")),
        ("delete metadata", lambda node: node.delete(
            "/instances/%s/metadata/1024" % uploaded[1]["ID"])),
        ("delete instance", lambda node: node.delete("/instances/%s" % uploaded[3]["ID"])),
        ("upload instance", lambda node: node.post("/instances", data=make_instance(
            "PAT-fresh", study_uid=study_uid, series_uid=series_uid, instance_number=9))),
    ]
    #: The route each write changes, read without pause on the next node.
    probes = [watched[4], watched[2], watched[4], watched[0], watched[0]]
    delays: List[float] = []
    for number, ((kind, write), probe) in enumerate(zip(writes, probes)):
        writer = nodes[number % 3]
        others = [node for node in nodes if node is not writer]
        before = {path: get(others[0], path) for path in watched}
        response = write(writer)
        written = time.monotonic()
        assert response.status_code == 200, (kind, response.status_code, response.text)
        truth = get(writer, probe).content
        assert truth != before[probe].content, (kind, probe)
        while get(others[0], probe).content != truth:
            assert time.monotonic() - written < 5, (kind, probe, "never fresh")
        delays.append(time.monotonic() - written)
        time.sleep(max(0.0, written + BOUND - time.monotonic()))
        for node in others:
            for path in watched:
                now, expected = get(node, path), get(writer, path)
                assert (now.status_code, now.content) == \
                    (expected.status_code, expected.content), (kind, path)
                old = before[path]
                if old.status_code == 200 and old.content != expected.content:
                    again = get(node, path, **{"If-None-Match": old.headers["ETag"]})
                    assert again.status_code != 304, (kind, path)
    print("fresh on another node after (ms): %s" % ", ".join(
        "%s %.1f" % (kind, delay * 1000) for (kind, _), delay in zip(writes, delays)))
    assert max(delays) < BOUND, delays


def test_a_node_restarted_empty_serves_the_others_answers(shared: OrthancCluster) -> None:
    """A rescheduled container: its directory (state files) lost, it joins the others,
    takes their generations, and its first requests are hits."""
    first, second, _ = shared.nodes
    uploaded = [first.upload(dicom) for dicom in make_study("PAT-again", 1, 2, seed="again")]
    time.sleep(QUIET)
    paths = routes(uploaded[0])
    for path in paths:
        get(first, path)
        assert status(first)(path) == "HIT"
    assert first.put("/instances/%s/metadata/1024" % uploaded[0]["ID"], data=b"x").ok
    time.sleep(QUIET)
    for path in paths:
        get(first, path)
    second.stop()
    shutil.rmtree(second.config["CachePlugin"]["Directory"])
    second.start()  # joined before Orthanc answers HTTP: the very first reads are hits
    for path in paths:
        answer = get(second, path)
        assert answer.headers["X-Cache-Status"] == "HIT", (path, second.outcomes(path))
        assert answer.content == get(first, path).content


def test_simultaneous_first_reads_on_every_node_are_computed_once(
        shared: OrthancCluster) -> None:
    """Sixteen first reads of one answer at the same moment, spread over the three nodes
    (Python.AllowThreads, as in the image): Orthanc computes it once in the cluster."""
    nodes = shared.nodes
    uploaded = [nodes[0].upload(dicom)
                for dicom in make_study("PAT-burst", 3, 10, seed="burst")]
    time.sleep(QUIET)  # settled, and warmed up (the route read is not a warm-up route)
    path = "/studies/%s/instances-tags?short&simplify" % uploaded[0]["ParentStudy"]
    answers = get_together(nodes, path, 16)
    assert [answer.status_code for answer in answers] == [200] * 16
    assert len({answer.content for answer in answers}) == 1
    assert len({answer.headers["ETag"] for answer in answers}) == 1
    outcomes = [outcome for node in nodes for outcome in node.outcomes(path)]
    assert sorted(outcome.value for outcome in outcomes) == ["HIT"] * 15 + ["MISS"], outcomes
    logged = "HIT GET " + path.partition("?")[0] + ":"  # the log names the URI alone
    reasons = [line for node in nodes for line in node.log_text().splitlines()
               if logged in line]
    assert any("on another node" in line for line in reasons), reasons

