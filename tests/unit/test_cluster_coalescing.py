"""Concurrent misses across nodes sharing a Redis store: one computes, the others wait.

Two (or three) controllers, each with its own Store on one real
redis-server, stand for the nodes of a cluster; each has its own fake
Orthanc that counts what it computes.  When they miss the same key at the
same version together, the first to claim it computes; the others wait
for its entry (at most LockTimeout), and compute themselves when it gave
the claim up without storing (an Orthanc error), when the wait ran out, or
when the store fails.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, List, Tuple

import pytest
from test_controller import SALT, GatedOrigin, make_controller, wait_until

from orthanc_cache_plugin.cache.controller import CacheController
from orthanc_cache_plugin.core.data import Reply
from orthanc_cache_plugin.core.keys import cache_key, claim_name
from orthanc_cache_plugin.store.facade import Store
from orthanc_cache_plugin.store.redis_backend import RedisOptions
from support.redis_server import RedisServer
from support.request_factory import make_request

pytest.importorskip("redis")

URI = "/studies/st/shared-tags"
BODY = b'{"tags": 1}|20230220T140000||'


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as own:
        yield own


@pytest.fixture
def nodes(tmp_path, server, request, warnings) -> Iterator[List[CacheController]]:
    """Three controllers, each with its store (no memory front) and its gated origin."""
    prefix = request.node.name + ":"
    built = []
    for number in range(3):
        store = Store(str(tmp_path / ("node-%d" % number)), 0, 3600, warn=warnings.append,
                      redis=RedisOptions(server.url, prefix, 0.1))
        origin = GatedOrigin()
        origin.set("st", "20230220T140000")
        origin.answers[URI] = ("application/json; charset=utf-8", b'{"tags": 1}')
        built.append(make_controller(tmp_path, store, origin, lock_timeout=5))
    yield built
    for controller in built:
        controller.store.clear()
        controller.store.close()


def serve_in_threads(pairs) -> Tuple[List[Reply], List[threading.Thread]]:
    """Serve each (controller, request) in a thread of its own; the replies as they come."""
    replies: List[Reply] = []
    threads = [threading.Thread(target=lambda c=controller, r=req: replies.append(c.serve(r)))
               for controller, req in pairs]
    for thread in threads:
        thread.start()
    return replies, threads


def test_one_node_computes_the_others_wait_for_its_entry(nodes) -> None:
    first, second, third = nodes
    replies, threads = serve_in_threads([(first, make_request(URI))])
    assert first.origin.first_fetch.wait(10)  # the first node holds the claim, computing
    waiting: List[CacheController] = []
    for node in (second, third):
        node.sleep = lambda seconds, node=node: (waiting.append(node), time.sleep(seconds))
    more, others = serve_in_threads([(second, make_request(URI)), (third, make_request(URI))])
    name = claim_name(cache_key(URI, "", ""), SALT + "|20230220T140000")
    assert first.store.claims.claimed(name) is True
    # Both wait for the claim before the first node stores: started later (a busy
    # machine), they would find its entry at their first read, a plain HIT.
    wait_until(lambda: second in waiting and third in waiting)
    first.origin.gate.set()
    for thread in threads + others:
        thread.join(10)
    replies += more
    assert sorted(reply.outcome.value for reply in replies) == ["HIT", "HIT", "MISS"]
    assert {reply.body for reply in replies} == {BODY}
    assert [reply.reason for reply in more] == ["computed by a concurrent request on another "
                                                "node"] * 2
    assert (len(first.origin.fetches), second.origin.started, third.origin.started) == (1, 0, 0)
    assert first.store.claims.claimed(name) is False  # given up once stored


def test_the_others_compute_when_the_first_gets_an_error(nodes) -> None:
    first, second, _ = nodes
    first.origin.first_fails = True
    second.origin.first_fetch.set()  # its fetches are not held
    naps: List[float] = []
    second.sleep = lambda seconds: (naps.append(seconds), time.sleep(seconds))
    replies, threads = serve_in_threads([(first, make_request(URI))])
    assert first.origin.first_fetch.wait(10)
    more, others = serve_in_threads([(second, make_request(URI))])
    wait_until(lambda: len(naps) >= 3)  # the second node waits for the claim to go
    assert second.origin.started == 0
    first.origin.gate.set()
    for thread in threads + others:
        thread.join(10)
    assert [reply.status for reply in replies] == [404]  # Orthanc's own error, never shared
    assert [(reply.status, reply.outcome.value, reply.body) for reply in more] == \
        [(200, "MISS", BODY)]
    assert second.origin.started == 1


def test_a_wait_ends_after_lock_timeout(nodes, tmp_path) -> None:
    first, second, _ = nodes
    second = make_controller(tmp_path, second.store, second.origin, lock_timeout=1)
    replies, threads = serve_in_threads([(first, make_request(URI))])
    assert first.origin.first_fetch.wait(10)
    started = second.monotonic()
    second.origin.first_fetch.set()  # its own fetches are not held
    reply = second.serve(make_request(URI))
    waited = second.monotonic() - started
    assert (reply.status, reply.outcome.value, reply.body) == (200, "MISS", BODY)
    assert 1 <= waited < 3, waited
    first.origin.gate.set()
    for thread in threads:
        thread.join(10)


def test_a_failing_store_never_makes_a_request_wait(nodes, server) -> None:
    first, second, _ = nodes
    replies, threads = serve_in_threads([(first, make_request(URI))])
    assert first.origin.first_fetch.wait(10)
    server.pause()
    try:
        second.origin.first_fetch.set()
        started = second.monotonic()
        reply = second.serve(make_request(URI))
        assert second.monotonic() - started < 1.5
        assert (reply.status, reply.body) == (200, BODY)
    finally:
        server.resume()
        first.origin.gate.set()
        for thread in threads:
            thread.join(10)
