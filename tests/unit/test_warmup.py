"""Unit tests of orthanc_cache_plugin.cache.warmup with a fake controller."""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, List

import pytest

from orthanc_cache_plugin.cache.warmup import WarmUp, warm_requests
from orthanc_cache_plugin.core.data import Request
from orthanc_cache_plugin.core.routes import Answer, Level

WAIT = 5.0  # generous upper bound for thread hand-overs; tests finish far sooner


class FakeController:
    """Records warm() calls; can block on the first call or raise for some resources."""

    def __init__(self, block: bool = False, failing: tuple = ()) -> None:
        self.calls: List[Request] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.failing = failing
        self.lock = threading.Lock()

    def warm(self, request: Request, wait: Callable[[float], Any] = time.sleep) -> bool:
        with self.lock:
            self.calls.append(request)
        self.started.set()
        self.release.wait(WAIT)
        if request.resource_id in self.failing:
            raise RuntimeError("boom for %s" % request.resource_id)
        return request.arguments == {}

    def resources(self) -> List[str]:
        with self.lock:
            seen: List[str] = []
            for request in self.calls:
                if request.resource_id not in seen:
                    seen.append(request.resource_id)
            return seen


def wait_until(condition, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


@pytest.fixture
def logs():
    return {"info": [], "warn": []}


def make_warmup(controller, logs, queue_size: int = 10) -> WarmUp:
    return WarmUp(controller, queue_size, logs["info"].append, logs["warn"].append)


# --- warm_requests ---------------------------------------------------------------------------

@pytest.mark.parametrize("level", [Level.PATIENT, Level.STUDY, Level.SERIES])
def test_warm_requests_of_parent_levels(level):
    requests = warm_requests(level, "abc")
    uris = [(request.uri, tuple(sorted(request.arguments))) for request in requests]
    prefix = "/%s/abc" % level.value
    # Attachments are answered from Orthanc's index, never stored: nothing to warm.
    assert uris == [
        (prefix + "/instances-tags", ()),
        (prefix + "/instances-tags", ("short",)),
        (prefix + "/instances-tags", ("simplify",)),
        (prefix + "/shared-tags", ()),
        (prefix + "/shared-tags", ("short",)),
        (prefix + "/shared-tags", ("simplify",)),
    ]
    for request in requests:
        assert request.groups == ("abc",)
        assert request.resource_id == "abc"
        assert request.headers == {}
        assert request.route.answer is Answer.JSON
        assert re.fullmatch(request.route.pattern, request.uri)
        assert all(value == "" for value in request.arguments.values())


def test_no_warm_requests_for_instances():
    assert warm_requests(Level.INSTANCE, "abc") == ()


# --- The worker ------------------------------------------------------------------------------

def test_queued_items_are_processed(logs):
    controller = FakeController()
    warmup = make_warmup(controller, logs)
    try:
        assert warmup.submit(Level.STUDY, "s1") is True
        assert warmup.submit(Level.SERIES, "r1") is True
        assert wait_until(lambda: warmup.done == 2)
        assert controller.resources() == ["s1", "r1"]
        assert len(controller.calls) == 12
        assert [request.uri for request in controller.calls[:6]] == [
            request.uri for request in warm_requests(Level.STUDY, "s1")]
        assert warmup.pending == 0
        assert warmup.skipped == 0
        assert wait_until(lambda: len(logs["info"]) == 2)
        # the fake "stores" the 2 answers without arguments of each resource
        assert logs["info"][0] == "warm-up of studies s1: 2 answers stored"
        assert logs["warn"] == []
    finally:
        warmup.stop()


def test_bounded_queue(logs):
    controller = FakeController(block=True)
    warmup = make_warmup(controller, logs, queue_size=3)
    try:
        assert warmup.submit(Level.STUDY, "busy") is True
        assert controller.started.wait(WAIT)           # the worker is inside warm()
        assert wait_until(lambda: warmup.pending == 0)
        for index in range(3):
            assert warmup.submit(Level.STUDY, "queued-%d" % index) is True
        assert warmup.pending == 3
        assert warmup.submit(Level.STUDY, "too-many") is False
        assert warmup.submit(Level.PATIENT, "too-many-2") is False
        assert warmup.skipped == 2
        assert warmup.pending == 3
        assert any("too-many" in message and "full" in message for message in logs["info"])

        controller.release.set()
        assert wait_until(lambda: warmup.done == 4)
        assert controller.resources() == ["busy", "queued-0", "queued-1", "queued-2"]
        assert warmup.submit(Level.STUDY, "later") is True   # room again
        assert wait_until(lambda: warmup.done == 5)
    finally:
        controller.release.set()
        warmup.stop()


def test_stop_joins_quickly_with_a_full_queue(logs):
    controller = FakeController(block=True)
    warmup = make_warmup(controller, logs, queue_size=5)
    assert warmup.submit(Level.STUDY, "busy")
    assert controller.started.wait(WAIT)
    assert wait_until(lambda: warmup.pending == 0)
    for index in range(5):
        assert warmup.submit(Level.STUDY, "queued-%d" % index)
    assert warmup.pending == 5

    # The worker is stuck in the current resource: stop() gives up after its timeout...
    started = time.monotonic()
    warmup.stop(timeout=0.05)
    assert time.monotonic() - started < 1.0
    assert warmup._thread.is_alive()
    # ...and once the current resource finishes, the worker ends without the queued ones.
    controller.release.set()
    started = time.monotonic()
    warmup.stop()
    assert time.monotonic() - started < 1.0
    assert not warmup._thread.is_alive()
    # the rest of the current resource and the queued ones were dropped
    assert controller.resources() == ["busy"]
    assert len(controller.calls) == 1 and warmup.done == 0
    # after stop, nothing more is accepted
    assert warmup.submit(Level.STUDY, "after-stop") is False


def test_stop_when_idle_is_immediate(logs):
    warmup = make_warmup(FakeController(), logs)
    started = time.monotonic()
    warmup.stop()
    assert time.monotonic() - started < 1.0
    assert not warmup._thread.is_alive()
    assert warmup.submit(Level.STUDY, "x") is False
    assert warmup.skipped == 0


def test_stop_twice_is_harmless(logs):
    warmup = make_warmup(FakeController(), logs)
    warmup.stop()
    warmup.stop(timeout=0.5)
    assert not warmup._thread.is_alive()


def test_exceptions_do_not_kill_the_worker(logs):
    controller = FakeController(failing=("bad",))
    warmup = make_warmup(controller, logs)
    try:
        assert warmup.submit(Level.STUDY, "bad")
        assert warmup.submit(Level.STUDY, "good")
        assert wait_until(lambda: warmup.done == 1 and "good" in controller.resources())
        assert wait_until(lambda: len(logs["warn"]) == 1)
        assert "bad" in logs["warn"][0] and "RuntimeError" in logs["warn"][0]
        assert warmup.submit(Level.SERIES, "bad")
        assert warmup.submit(Level.SERIES, "good2")
        assert wait_until(lambda: warmup.done == 2)
        assert len(logs["warn"]) == 2
    finally:
        warmup.stop()


def test_worker_is_a_daemon_thread(logs):
    warmup = make_warmup(FakeController(), logs)
    try:
        assert warmup._thread.daemon
        assert warmup._thread.name == "cache-warm-up"
    finally:
        warmup.stop()
