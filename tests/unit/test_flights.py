"""Unit tests of orthanc_cache_plugin.cache.flights, with real threads."""

from __future__ import annotations

import threading
import time
from typing import List, Optional

from orthanc_cache_plugin.cache.flights import Flights

THREADS = 16


def run_together(count: int, work) -> List[object]:
    """Run ``work(index)`` in ``count`` threads started together; their results in order."""
    barrier = threading.Barrier(count)
    results: List[object] = [None] * count
    errors: List[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = work(index)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=body, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert errors == []
    return results


def test_one_leader_the_others_follow_and_get_its_value():
    flights: Flights[str] = Flights()
    computed: List[int] = []
    all_joined = threading.Event()
    joined = []
    lock = threading.Lock()

    def work(index: int) -> Optional[str]:
        flight, leading = flights.join("k")
        with lock:
            joined.append(index)
            if len(joined) == THREADS:
                all_joined.set()
        if leading:
            try:
                all_joined.wait(10)  # everyone is in the flight before it lands
                computed.append(index)
                flight.land("value")
            finally:
                flight.land(None)
            return "value"
        return flight.wait(10)

    results = run_together(THREADS, work)
    assert len(computed) == 1
    assert results == ["value"] * THREADS
    assert len(flights) == 0


def test_a_leader_that_raises_releases_its_followers_with_nothing():
    flights: Flights[str] = Flights()
    flight, leading = flights.join("k")
    assert leading
    follower, leading_too = flights.join("k")
    assert follower is flight and not leading_too
    results: List[Optional[str]] = []
    waiter = threading.Thread(target=lambda: results.append(follower.wait(10)))
    waiter.start()
    try:
        try:
            raise RuntimeError("Orthanc went away")
        finally:
            flight.land(None)
    except RuntimeError:
        pass
    waiter.join(10)
    assert results == [None]
    assert len(flights) == 0
    assert flights.join("k")[1]  # the next caller leads a new flight


def test_wait_is_bounded():
    flights: Flights[str] = Flights()
    flight, _ = flights.join("k")
    follower, leading = flights.join("k")
    assert not leading
    started = time.monotonic()
    assert follower.wait(0.2) is None
    assert 0.15 <= time.monotonic() - started < 5
    assert follower.wait(0) is None and follower.wait(-1) is None
    flight.land("late")
    assert follower.wait(0) == "late"


def test_only_the_first_land_counts():
    flights: Flights[str] = Flights()
    flight, _ = flights.join("k")
    flight.land("first")
    flight.land(None)
    flight.land("second")
    assert flight.landed and flight.wait(0) == "first"


def test_a_follower_gets_the_value_even_after_the_flight_left_the_table():
    flights: Flights[str] = Flights()
    flight, _ = flights.join("k")
    follower, _ = flights.join("k")
    flight.land("value")
    assert len(flights) == 0
    assert follower.wait(0) == "value"


def test_a_landed_flight_does_not_remove_its_successor():
    flights: Flights[str] = Flights()
    first, _ = flights.join("k")
    first.land(None)
    second, leading = flights.join("k")
    assert leading and second is not first
    first.land("too late")  # no effect
    assert len(flights) == 1 and flights.join("k")[0] is second


def test_different_keys_do_not_wait_for_each_other():
    flights: Flights[str] = Flights()
    blocked, _ = flights.join(("/studies/a/instances-tags", "v1"))
    leads = [flights.join(key)[1] for key in (("/studies/a/instances-tags", "v2"),
                                              ("/studies/b/instances-tags", "v1"),
                                              ("/studies/a/instances-tags?short", "v1"))]
    assert leads == [True, True, True]
    assert len(flights) == 4
    blocked.land(None)


def test_many_keys_many_threads_leave_an_empty_table():
    flights: Flights[int] = Flights()
    computations = {key: 0 for key in range(4)}
    lock = threading.Lock()

    def work(index: int) -> Optional[int]:
        key = index % 4
        for _ in range(50):
            flight, leading = flights.join(key)
            if leading:
                try:
                    with lock:
                        computations[key] += 1
                    flight.land(key * 10)
                finally:
                    flight.land(None)
            else:
                value = flight.wait(10)
                assert value in (key * 10, None)
        return key

    run_together(THREADS, work)
    assert len(flights) == 0
    assert all(count >= 1 for count in computations.values())
