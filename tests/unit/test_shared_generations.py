"""Generations shared by the nodes of a cluster (freshness.versions.Generations.merge, cluster.bus).

Pure part, as tables and a seeded simulation: the order of generations, and
nodes that exchange their updates in any order, repeated or late, end with
the same generations, and every change outdates what every node held before
it.  Redis part, against a real redis-server: the merge script keeps exactly
what ``Generations.merge`` keeps, and buses hear each other, join with the
hash's content, and notice a lost channel.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest

from orthanc_cache_plugin.cluster.bus import RedisBus, decode, encode, from_hash
from orthanc_cache_plugin.core.data import GenerationUpdate
from orthanc_cache_plugin.freshness.versions import (
    GRACE,
    SETTLE,
    Generations,
    generation_time,
    new_generation,
    newer,
)
from orthanc_cache_plugin.store.redis_backend import RedisOptions, RedisStore
from support.redis_server import RedisServer

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
A = "1764504000.000000/aaaaaaaaaaaa"
B = "1764504000.000000/bbbbbbbbbbbb"
LATER = "1764504000.000001/000000000000"
MUCH_LATER = "1764504100.500000/000000000000"


@pytest.mark.parametrize("first, second, expected", [
    (A, "", True),  # anything comes after the initial (empty) generation
    ("", A, False),
    (LATER, A, True),  # a later date wins whatever the text
    (A, LATER, False),
    (B, A, True),  # the same date: the greater text
    (A, B, False),
    (A, A, False),  # never newer than itself
    (MUCH_LATER, LATER, True),
    ("1764504000.000000/aaaaaaaaaaaa", "999999999.999999/ffffffffffff", True),  # by number
])
def test_which_generation_is_newer(first: str, second: str, expected: bool) -> None:
    assert newer(first, second) is expected


@pytest.mark.parametrize("holding, update, base, touched", [
    # a newer touch replaces; an older one does not
    ((A, {"s": A}), GenerationUpdate(touched={"s": LATER}), A, {"s": LATER}),
    ((A, {"s": LATER}), GenerationUpdate(touched={"s": B}), A, {"s": LATER}),
    # a touch dated no later than the base is outdated by it
    ((LATER, {}), GenerationUpdate(touched={"s": A}), LATER, {}),
    # a newer base drops the touches it outdates, keeps later ones
    (("", {"s": A, "t": MUCH_LATER}), GenerationUpdate(base=LATER), LATER, {"t": MUCH_LATER}),
    # an older base changes nothing
    ((LATER, {"t": MUCH_LATER}), GenerationUpdate(base=A), LATER, {"t": MUCH_LATER}),
    # a forget carries no generation
    ((A, {"s": LATER}), GenerationUpdate(forget=True), A, {"s": LATER}),
])
def test_a_merge_keeps_the_newest(holding: Tuple[str, Dict[str, str]], update: GenerationUpdate,
                                  base: str, touched: Dict[str, str]) -> None:
    generations = Generations(*holding)
    generations.merge(update)
    assert generations.everything() == GenerationUpdate(base, touched)


def test_each_change_is_dated_after_what_it_replaces() -> None:
    generations = Generations()
    ahead = generations.announce(["s"], NOW + timedelta(hours=1)).touched["s"]
    # Announced an hour ahead (another node's clock): a change now still replaces it.
    assert newer(generations.advance(["s"], NOW).touched["s"], ahead)
    assert newer(generations.announce(["s"], NOW).touched["s"], ahead)
    base = generations.advance_all(NOW).base
    assert newer(base, ahead) and generations.everything() == GenerationUpdate(base, {})
    assert newer(generations.announce_all(NOW - timedelta(days=1)).base, base)


def _operate(node: Generations, rng: random.Random, now: datetime) -> Tuple[str, GenerationUpdate]:
    resources = rng.sample(RESOURCES, rng.randint(1, 3))
    kind = rng.choice(["announce", "advance", "advance", "announce_all", "advance_all"])
    if kind.endswith("_all"):
        return kind, getattr(node, kind)(now)
    return kind, getattr(node, kind)(resources, now)


RESOURCES = "abcdefgh"
#: How far the nodes' clocks may differ from the true time (docs: within a second).
SKEW = 0.4


@pytest.mark.parametrize("seed", range(20))
def test_nodes_that_exchange_updates_in_any_order_agree_and_never_serve_stale(seed: int) -> None:
    """Three nodes with slightly different clocks change their generations; each update
    reaches every other node later, in a random order, sometimes twice.

    Whenever a node has merged an update, no answer stored before the change it
    announces can match the version of a resource it changed: that version is one
    that no node held before, or one dated too late for anything to have settled
    under it before the change (answers are stored only SETTLE after their version's
    date).  At the end every node holds the same generations."""
    rng = random.Random(seed)
    nodes = [Generations() for _ in range(3)]
    skews = [timedelta(seconds=rng.uniform(-SKEW, SKEW)) for _ in nodes]
    pending: List[Tuple[int, int, GenerationUpdate]] = []  # (to node, update number, update)
    #: Per update: the resources it changed, the versions held before, when the change is.
    before: Dict[int, Tuple[Set[str], Set[str], datetime]] = {}
    clock = NOW
    for number in range(300):
        clock += timedelta(milliseconds=rng.randint(0, 3000))
        if pending and rng.random() < 0.5:
            receiver, update_number, update = pending.pop(rng.randrange(len(pending)))
            nodes[receiver].merge(update)
            if rng.random() < 0.2:
                nodes[receiver].merge(update)  # delivered twice: no effect
            _check_outdated(nodes[receiver], before[update_number])
            continue
        sender = rng.randrange(3)
        seen = {node.of(resource) for node in nodes for resource in RESOURCES}
        kind, update = _operate(nodes[sender], rng, clock + skews[sender])
        changed = set(RESOURCES) if update.base else set(update.touched)
        # An announced write runs within GRACE after its announcement.
        change = clock + (GRACE if kind.startswith("announce") else timedelta(0))
        before[number] = (changed, seen, change)
        _check_outdated(nodes[sender], before[number])
        pending += [(receiver, number, update) for receiver in range(3) if receiver != sender]
    rng.shuffle(pending)
    for receiver, update_number, update in pending:
        nodes[receiver].merge(update)
        _check_outdated(nodes[receiver], before[update_number])
    assert nodes[0].everything() == nodes[1].everything() == nodes[2].everything()


def _check_outdated(node: Generations, what: Tuple[Set[str], Set[str], datetime]) -> None:
    changed, seen, change = what
    for resource in changed:
        version = node.of(resource)
        dates = [generation_time(part) for part in version.split("|")]
        latest = max(date for date in dates + [NOW - timedelta(days=1)] if date is not None)
        settled_before_change = latest + SETTLE - timedelta(seconds=SKEW) <= change
        assert version not in seen or not settled_before_change, (resource, version)


def test_too_many_touches_converge_too() -> None:
    """Past the limit a node replaces its base: merged elsewhere, it drops the same."""
    first, second = Generations(), Generations()
    first.LIMIT = second.LIMIT = 3
    updates = [first.advance(["a", "b"], NOW), second.advance(["c"], NOW),
               first.advance(["d", "e"], NOW + timedelta(seconds=1))]
    assert updates[-1].base  # over the limit: a new base
    second.merge(updates[0])
    second.merge(updates[2])
    first.merge(updates[1])
    assert first.everything() == second.everything() == GenerationUpdate(updates[-1].base, {})


@pytest.mark.parametrize("message", [
    b"", b"{}", b"not json", b'{"node": 1, "base": "", "touched": {}}',
    b'{"node": "n", "base": "", "touched": {"a": 1}}', b'[1, 2]',
])
def test_messages_that_are_not_updates_are_ignored(message: bytes) -> None:
    assert decode(message) is None


def test_a_message_carries_its_update_and_sender() -> None:
    update = GenerationUpdate(A, {"s": LATER}, forget=True)
    assert decode(encode("node-1", update).encode()) == ("node-1", update)


# -- on a real redis-server ------------------------------------------------------------------

pytest.importorskip("redis")
TIMEOUT = 0.1


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as own:
        yield own


def _store(server: RedisServer, warnings: List[str]) -> RedisStore:
    return RedisStore(RedisOptions(server.url, "test:", TIMEOUT), warnings.append)


class Recorder:
    """A bus's three callbacks, recorded."""

    def __init__(self, join: bool = True) -> None:
        self.updates: List[GenerationUpdate] = []
        self.lost: List[str] = []
        self.joined: List[GenerationUpdate] = []
        self.join = join
        self.event = threading.Event()

    def on_update(self, update: GenerationUpdate) -> None:
        self.updates.append(update)
        self.event.set()

    def on_lost(self, reason: str) -> None:
        self.lost.append(reason)
        self.event.set()

    def on_joined(self, shared: GenerationUpdate) -> bool:
        self.joined.append(shared)
        self.event.set()
        return self.join

    def wait(self, condition: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            self.event.wait(0.05)
            self.event.clear()


def _bus(store: RedisStore, recorder: Recorder) -> RedisBus:
    return RedisBus(store.connection, recorder.on_update, recorder.on_lost, recorder.on_joined)


def test_the_merge_script_keeps_what_generations_keep(server: RedisServer) -> None:
    warnings: List[str] = []
    store = _store(server, warnings)
    bus = _bus(store, Recorder())
    rng = random.Random(3)
    here, nodes = Generations(), [Generations(), Generations()]
    clock = NOW
    try:
        for _ in range(150):
            clock += timedelta(milliseconds=rng.randint(0, 2000))
            update = _operate(rng.choice(nodes), rng, clock)[1]
            here.merge(update)
            assert bus.publish(update) is True
        shared = from_hash(server_hash(server, bus.hash))
        assert shared == here.everything() and shared.base
    finally:
        store.close()
    assert warnings == []


def server_hash(server: RedisServer, key: str) -> Dict[bytes, bytes]:
    import redis
    client = redis.Redis.from_url(server.url)
    try:
        return client.hgetall(key)  # type: ignore[no-any-return]
    finally:
        client.close()


def test_buses_hear_each_other_and_join_with_what_the_nodes_know(server: RedisServer) -> None:
    warnings: List[str] = []
    stores = [_store(server, warnings), _store(server, warnings)]
    recorders = [Recorder(), Recorder()]
    buses = [_bus(store, recorder) for store, recorder in zip(stores, recorders)]
    try:
        assert buses[0].publish(GenerationUpdate(A, {"s": LATER}))
        for bus in buses:
            bus.start()
        for recorder in recorders:
            recorder.wait(lambda r=recorder: r.joined)
            assert recorder.joined == [GenerationUpdate(A, {"s": LATER})]
            assert recorder.lost == ["not joined yet"]
        update = GenerationUpdate(touched={"t": MUCH_LATER})
        assert buses[0].publish(update)
        recorders[1].wait(lambda: recorders[1].updates)
        assert recorders[1].updates == [update]
        buses[1].tell_forget()
        recorders[0].wait(lambda: recorders[0].updates)
        assert recorders[0].updates == [GenerationUpdate(forget=True)]
        time.sleep(0.3)
        assert recorders[0].updates == [GenerationUpdate(forget=True)]  # not its own
        assert recorders[1].updates == [update]
    finally:
        for bus in buses:
            bus.stop()
        for store in stores:
            store.close()
    assert warnings == []


@pytest.mark.parametrize("failure", ["stop", "pause"])
def test_a_lost_channel_is_noticed_and_joined_again(server: RedisServer, failure: str) -> None:
    warnings: List[str] = []
    store = _store(server, warnings)
    recorder = Recorder()
    bus = _bus(store, recorder)
    bus.start()
    try:
        recorder.wait(lambda: recorder.joined)
        started = time.monotonic()
        if failure == "stop":
            server.stop()
        else:
            server.pause()
        recorder.wait(lambda: len(recorder.lost) == 2)
        noticed = time.monotonic() - started
        # A closed connection at once; a silent server after a ping goes unanswered.
        assert noticed < (1 if failure == "stop" else RedisBus.PING_AFTER
                          + RedisBus.PING_TIMEOUT + 1.5), noticed
        if failure == "stop":
            server.start()
        else:
            server.resume()
        recorder.wait(lambda: len(recorder.joined) == 2, timeout=30)
    finally:
        bus.stop()
        store.close()


def test_a_node_that_cannot_publish_what_it_knows_does_not_join(server: RedisServer) -> None:
    store = _store(server, [])
    recorder = Recorder(join=False)
    bus = _bus(store, recorder)
    bus.start()
    try:
        recorder.wait(lambda: len(recorder.joined) >= 2)  # tried again, with backoff
        assert len(recorder.lost) >= 2
    finally:
        bus.stop()
        store.close()


def test_a_new_node_generates_a_base_no_earlier_one_matches() -> None:
    assert newer(new_generation(datetime(1970, 1, 1, tzinfo=timezone.utc)), "")


def test_a_forget_that_could_not_be_sent_does_not_stop_the_next_ones(
        server: RedisServer) -> None:
    warnings: List[str] = []
    sender = RedisStore(RedisOptions(server.url, "test:", TIMEOUT), warnings.append,
                        retry_delay=0.1)
    listener_store = _store(server, [])
    recorder = Recorder()
    listener = _bus(listener_store, recorder)
    bus = _bus(sender, Recorder())
    try:
        server.stop()
        sender.get("k")  # the store notices the failure
        bus.tell_forget()  # not sent: the server is away
        server.start()
        deadline = time.monotonic() + 10
        while sender.claims.claimed("probe") is None:  # works again after the retry delay
            assert time.monotonic() < deadline
            time.sleep(0.05)
        listener.start()
        recorder.wait(lambda: recorder.joined)
        bus.tell_forget()
        recorder.wait(lambda: recorder.updates)
        assert recorder.updates == [GenerationUpdate(forget=True)]
    finally:
        listener.stop()
        sender.close()
        listener_store.close()
