"""Unit tests of orthanc_cache_plugin.freshness: versions, generations, writes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from orthanc_cache_plugin.freshness import (
    GRACE,
    SETTLE,
    RememberedUpdates,
    generation_time,
    later_generation,
    may_change_stored_answers,
    new_generation,
    resource_version,
)

NOW = datetime(2023, 2, 20, 15, 0, 0, 500000, tzinfo=timezone.utc)


def test_generations_are_unique_and_dated() -> None:
    first, second = new_generation(NOW), new_generation(NOW)
    assert first != second
    assert generation_time(first) == NOW == generation_time(second)
    assert generation_time("") is None and generation_time("garbage") is None


def test_a_later_generation_keeps_an_announced_grace_period() -> None:
    announced = new_generation(NOW + GRACE)
    assert generation_time(later_generation(announced, NOW)) == NOW + GRACE
    assert generation_time(later_generation(new_generation(NOW), NOW + SETTLE)) == NOW + SETTLE
    assert generation_time(later_generation("", NOW)) == NOW


def test_version_combines_last_update_and_generation() -> None:
    generation = new_generation(NOW - timedelta(hours=1))
    version = resource_version("20230220T140000", generation, NOW)
    assert version.token == "20230220T140000|" + generation
    assert version.modified == datetime(2023, 2, 20, 14, 0, 0, tzinfo=timezone.utc)
    assert version.settled
    later = resource_version("20230220T140000", new_generation(NOW - timedelta(seconds=30)), NOW)
    assert later.modified == datetime(2023, 2, 20, 14, 59, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("age, settled", [(0, False), (1.9, False), (2.4, False), (3.6, True),
                                          (60, True)])
def test_a_version_settles_after_the_change(age: float, settled: bool) -> None:
    changed = (NOW - timedelta(seconds=age)).strftime("%Y%m%dT%H%M%S")
    assert resource_version(changed, "", NOW).settled is settled
    assert resource_version("20200101T000000", new_generation(NOW - timedelta(seconds=age)),
                            NOW).settled is settled


def test_an_announced_write_keeps_versions_unsettled_through_its_grace() -> None:
    announced = new_generation(NOW + GRACE)
    assert not resource_version("20200101T000000", announced, NOW + GRACE).settled
    assert resource_version("20200101T000000", announced, NOW + GRACE + SETTLE).settled


def test_unparsable_last_update_never_settles() -> None:
    assert not resource_version("garbage", "", NOW).settled


@pytest.mark.parametrize("method, uri, expected", [
    ("GET", "/studies/x/shared-tags", False),
    ("POST", "/instances", False),
    ("POST", "/tools/find", False),
    ("POST", "/studies/x/archive", False),
    ("POST", "/studies/x/modify", True),
    ("POST", "/tools/execute-script", True),
    ("PUT", "/instances/x/metadata/1024", True),
    ("PUT", "/studies/x/labels/a", True),
    ("DELETE", "/instances/x", True),
    ("DELETE", "/studies/x/attachments/1030", True),
])
def test_which_requests_announce_a_write(method: str, uri: str, expected: bool) -> None:
    assert may_change_stored_answers(method, uri) is expected


# --- Remembered LastUpdates ----------------------------------------------------------------

def test_remembered_updates_are_kept_until_anything_changes():
    updates = RememberedUpdates()
    epoch = updates.epoch
    updates.remember("studies", "s", "20230220T140000", epoch)
    assert updates.get("studies", "s") == "20230220T140000"
    assert updates.get("series", "s") is None  # one id, another level: not the same resource
    updates.forget_all()
    assert updates.get("studies", "s") is None


def test_a_value_read_before_a_change_is_not_remembered_after_it():
    updates = RememberedUpdates()
    epoch = updates.epoch  # taken before asking Orthanc
    updates.forget_all()  # an instance is stored meanwhile
    updates.remember("studies", "s", "20230220T140000", epoch)
    assert updates.get("studies", "s") is None


def test_remembered_updates_are_bounded():
    updates = RememberedUpdates()
    for number in range(RememberedUpdates.LIMIT + 1):
        updates.remember("instances", str(number), "t", updates.epoch)
    assert updates.get("instances", str(RememberedUpdates.LIMIT)) == "t"
    assert updates.get("instances", "0") is None
