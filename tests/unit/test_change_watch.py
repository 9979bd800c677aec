"""Unit tests of cache.changes: the change watch carrying out its decisions against a
real store and a fake index (an in-memory hierarchy of resources)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional, Tuple

import pytest

from orthanc_cache_plugin.cache.changes import (
    ChangePoller,
    ChangeWatch,
    HousekeeperWatch,
    Ticker,
    Watchers,
)
from orthanc_cache_plugin.core.routes import Level
from orthanc_cache_plugin.freshness.changes import Event
from orthanc_cache_plugin.freshness.versions import RememberedUpdates
from orthanc_cache_plugin.store.facade import Store

MB = 1024 * 1024
_CHILDREN = {Level.PATIENT: "Studies", Level.STUDY: "Series", Level.SERIES: "Instances"}
_PARENT = {Level.STUDY: "ParentPatient", Level.SERIES: "ParentStudy",
           Level.INSTANCE: "ParentSeries"}


class FakeIndex:
    """Orthanc's index as the change watch sees it: patient p1, study s1, series r1,
    instances i1 and i2; a change log; a Housekeeper status."""

    def __init__(self, shared: bool = False) -> None:
        self.resources: Dict[str, Tuple[Level, Optional[str]]] = {
            "p1": (Level.PATIENT, None), "s1": (Level.STUDY, "p1"), "r1": (Level.SERIES, "s1"),
            "i1": (Level.INSTANCE, "r1"), "i2": (Level.INSTANCE, "r1")}
        self.log: List[Dict[str, Any]] = []
        self.housekeeper: Optional[Dict[str, Any]] = None
        self.markers: List[Tuple[Level, str]] = []
        self.shared = shared
        self.asked = 0

    def delete(self, resource_id: str) -> None:
        for child in [r for r, (_, parent) in self.resources.items() if parent == resource_id]:
            self.delete(child)
        self.resources.pop(resource_id, None)

    def describe(self, level: Level, resource_id: str) -> Dict[str, Any]:
        self.asked += 1
        if self.resources.get(resource_id, (None,))[0] is not level:
            return {}
        parent = self.resources[resource_id][1]
        description: Dict[str, Any] = {"ID": resource_id}
        if parent is not None:
            description[_PARENT[level]] = parent
        if level in _CHILDREN:
            description[_CHILDREN[level]] = [r for r, (_, p) in self.resources.items()
                                             if p == resource_id]
        return description

    def changes(self, since: int, limit: int) -> Dict[str, Any]:
        page = [change for change in self.log if change["Seq"] > since][:limit]
        return {"Changes": page, "Last": self.last_change()}

    def last_change(self) -> int:
        return self.log[-1]["Seq"] if self.log else 0

    def housekeeper_status(self) -> Optional[Dict[str, Any]]:
        return self.housekeeper

    def log_marker(self, level: Level, resource_id: str) -> bool:
        if resource_id not in self.resources:
            return False
        self.markers.append((level, resource_id))
        return True

    def shares_database(self) -> bool:
        return self.shared

    def append(self, kind: str, level: str, resource_id: str) -> None:
        self.log.append({"Seq": self.last_change() + 1, "ChangeType": kind,
                         "ResourceType": level, "ID": resource_id})


@pytest.fixture
def store(tmp_path):
    opened = Store(str(tmp_path / "store"), 64 * MB, 3600, warn=lambda message: None)
    yield opened
    opened.close()


def _watch(store: Store, index: FakeIndex, logs: Optional[List[str]] = None) -> ChangeWatch:
    logs = [] if logs is None else logs
    watch = ChangeWatch(store, index, logs.append, logs.append, admin_prefix="/cache")
    watch.updates = RememberedUpdates()
    watch.start()
    return watch


def _generations(watch: ChangeWatch, *resources: str) -> List[str]:
    return [watch.generations.of(resource) for resource in resources]


def test_a_metadata_event_outdates_the_resource_and_its_ancestors_only(store):
    index = FakeIndex()
    watch = _watch(store, index)
    before = _generations(watch, "i1", "r1", "s1", "p1", "i2")
    watch.after_change(Event.METADATA, Level.INSTANCE, "i1")
    after = _generations(watch, "i1", "r1", "s1", "p1", "i2")
    assert [b != a for b, a in zip(before, after)] == [True, True, True, True, False]
    # Kept in the store: a watch started afresh reads them back.
    assert _generations(_watch(store, index), "i1", "i2") == after[::4]


def test_an_announced_deletion_is_recognized_and_logged_for_the_nodes_sharing_the_index(store):
    index = FakeIndex(shared=True)
    logs: List[str] = []
    watch = _watch(store, index, logs)
    watch.updates.remember("series", "r1", "20261207T120000", watch.updates.epoch)
    watch.before_write("DELETE", "/series/r1")
    assert index.markers == [(Level.SERIES, "r1")]  # before: on the resource itself
    assert watch.updates.get("series", "r1") is None  # paused until reported
    index.delete("r1")
    announced = _generations(watch, "r1", "s1", "p1", "i1")
    # Orthanc reports the instances below first: they go with it, nothing is advanced.
    watch.after_change(Event.DELETED, Level.INSTANCE, "i1")
    assert _generations(watch, "r1", "s1", "p1", "i1") == announced
    # Its own event: it and its ancestors; the marker on the nearest ancestor left.
    watch.after_change(Event.DELETED, Level.SERIES, "r1")
    reported = _generations(watch, "r1", "s1", "p1", "i1")
    assert [a != r for a, r in zip(announced, reported)] == [True, True, True, False]
    assert index.markers == [(Level.SERIES, "r1"), (Level.STUDY, "s1")]
    assert any("DELETE /series/r1" in line for line in logs)


def test_without_a_shared_index_no_marker_is_written(store):
    index = FakeIndex(shared=False)
    watch = _watch(store, index)
    watch.before_write("DELETE", "/series/r1")
    index.delete("r1")
    watch.after_change(Event.DELETED, Level.SERIES, "r1")
    assert index.markers == []


def test_a_deletion_that_no_request_announced_outdates_everything(store):
    index = FakeIndex()
    watch = _watch(store, index)
    base = watch.generations.base
    index.delete("i2")
    watch.after_change(Event.DELETED, Level.INSTANCE, "i2")
    assert watch.generations.base != base
    # An overwrite (it exists again): only it and its ancestors.
    base = watch.generations.base
    watch.after_change(Event.DELETED, Level.INSTANCE, "i1")
    assert watch.generations.base == base and watch.generations.touched("i1")


def test_a_reconstruction_touches_everything_below(store):
    index = FakeIndex()
    watch = _watch(store, index)
    watch.before_write("POST", "/studies/s1/reconstruct")
    assert all(watch.generations.touched(r) for r in ("p1", "s1", "r1", "i1", "i2"))


def test_writes_of_the_admin_api_and_uploads_ask_nothing(store):
    index = FakeIndex()
    watch = _watch(store, index)
    before = watch.generations.dump()
    watch.before_write("DELETE", "/cache/studies/s1")
    watch.before_write("POST", "/instances")
    assert watch.generations.dump() == before and index.asked == 0


def test_the_poller_follows_the_change_log_from_where_it_stopped(store):
    index = FakeIndex()
    index.append("NewInstance", "Instance", "i1")
    watch = _watch(store, index)
    poller = ChangePoller(watch, store, index, clustered=False)
    poller.tick()  # starts at the end of the log
    assert store.get_value("changes-seen") == "1"
    index.append("UpdatedMetadata", "Series", "r1")
    before = _generations(watch, "r1", "s1", "i1")
    poller.tick()
    after = _generations(watch, "r1", "s1", "i1")
    assert [b != a for b, a in zip(before, after)] == [True, True, False]
    assert store.get_value("changes-seen") == "2"
    # A new poller (Orthanc restarted) continues from there, without outdating everything.
    base = watch.generations.base
    ChangePoller(watch, store, index, clustered=False).tick()
    assert watch.generations.base == base


def test_a_first_start_outdates_everything_stored_before(store):
    index = FakeIndex()
    watch = _watch(store, index)
    base = watch.generations.base
    ChangePoller(watch, store, index, clustered=False)
    assert watch.generations.base != base


def test_the_housekeeper_watch_holds_versions_and_stops_when_not_loaded(store):
    index = FakeIndex()
    logs: List[str] = []
    watch = _watch(store, index, logs)
    housekeeper = HousekeeperWatch(watch, store, index, logs.append)
    now = datetime.now(timezone.utc)
    assert watch.generations.held(now) is not None  # until the first look
    index.housekeeper = {"CurrentlyProcessingConfiguration": {"a": 1},
                         "LastProcessedConfiguration": None}
    housekeeper.tick()
    assert watch.generations.held(now) is not None
    assert any("rewriting files" in line for line in logs)
    index.housekeeper = None
    housekeeper.tick()
    assert not housekeeper.active
    assert watch.generations.held(datetime.now(timezone.utc) + timedelta(seconds=1)) is None


def test_the_ticker_survives_failures_and_warns_once():
    failures: List[int] = []
    warnings: List[str] = []
    done = threading.Event()
    calls = [0]

    def task() -> None:
        calls[0] += 1
        if calls[0] <= 3:
            raise OSError("index unreachable")
        done.set()

    ticker = Ticker([task], lambda: failures.append(1), warnings.append)
    ticker.PERIOD = 0.01
    ticker.start()
    assert done.wait(5)
    ticker.stop()
    assert len(failures) == 3
    assert len(warnings) == 1 and "index unreachable" in warnings[0]


def test_watchers_start_and_stop_with_the_housekeeper(store):
    index = FakeIndex()
    index.housekeeper = {"LastProcessedConfiguration": {"a": 1}}
    ticks: List[int] = []
    watchers = Watchers(store, index, lambda: ticks.append(1), lambda m: None, lambda m: None,
                        housekeeper=True)
    watchers.start()
    assert watchers.housekeeper is not None and watchers.housekeeper.active
    assert store.get_value("housekeeper-finished") == '{"a": 1}'
    watchers.stop()
