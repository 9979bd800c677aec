"""Unit tests of orthanc_cache_plugin.freshness.versions: versions, generations, writes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from orthanc_cache_plugin.core.routes import Level
from orthanc_cache_plugin.freshness.versions import (
    GRACE,
    SETTLE,
    AnnouncedDeletions,
    Generations,
    Reach,
    RememberedUpdates,
    generation_time,
    later_generation,
    new_generation,
    resource_version,
    write_effect,
)

NOW = datetime(2023, 2, 20, 15, 0, 0, 500000, tzinfo=timezone.utc)
TICK = timedelta(microseconds=1)


def test_generations_are_unique_and_dated() -> None:
    first, second = new_generation(NOW), new_generation(NOW)
    assert first != second
    assert generation_time(first) == NOW == generation_time(second)
    assert generation_time("") is None and generation_time("garbage") is None


def test_a_later_generation_keeps_an_announced_grace_period() -> None:
    announced = new_generation(NOW + GRACE)
    # A microsecond after it: a replacement is always dated after what it replaces.
    assert generation_time(later_generation(announced, NOW)) == NOW + GRACE + TICK
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


@pytest.mark.parametrize("method, uri, reach, level", [
    ("GET", "/studies/x/shared-tags", Reach.NOTHING, None),
    ("POST", "/instances", Reach.NOTHING, None),
    ("POST", "/dicom-web/studies", Reach.NOTHING, None),
    ("POST", "/dicom-web/studies/1.2.3", Reach.NOTHING, None),
    ("POST", "/tools/find", Reach.NOTHING, None),
    ("POST", "/tools/create-dicom", Reach.NOTHING, None),
    ("POST", "/studies/x/archive", Reach.NOTHING, None),
    ("POST", "/modalities/pacs/echo", Reach.NOTHING, None),
    ("POST", "/modalities/pacs/query", Reach.NOTHING, None),
    ("POST", "/modalities/pacs/store", Reach.NOTHING, None),
    ("POST", "/peers/other/store", Reach.NOTHING, None),
    ("POST", "/queries/q1/answers/0/retrieve", Reach.NOTHING, None),
    ("POST", "/jobs/j1/cancel", Reach.NOTHING, None),
    ("PUT", "/modalities/pacs", Reach.NOTHING, None),
    ("PUT", "/studies/x/labels/a", Reach.NOTHING, None),
    ("DELETE", "/series/x/labels/a", Reach.NOTHING, None),
    ("PUT", "/patients/x/protected", Reach.NOTHING, None),
    ("DELETE", "/changes", Reach.NOTHING, None),
    ("PUT", "/instances/x/metadata/1024", Reach.RESOURCE, Level.INSTANCE),
    ("DELETE", "/studies/x/metadata/1024", Reach.RESOURCE, Level.STUDY),
    # A parent's attachments show only in its list of attachments (validated by content).
    ("PUT", "/series/x/attachments/1030", Reach.NOTHING, None),
    ("DELETE", "/studies/x/attachments/1030", Reach.NOTHING, None),
    ("PUT", "/patients/x/attachments/4301", Reach.NOTHING, None),
    ("PUT", "/instances/x/attachments/1030", Reach.RESOURCE, Level.INSTANCE),
    ("POST", "/instances/x/attachments/dicom/compress", Reach.RESOURCE, Level.INSTANCE),
    ("POST", "/studies/x/reconstruct", Reach.SUBTREE, Level.STUDY),
    ("POST", "/studies/x/modify", Reach.SUBTREE, Level.STUDY),
    ("DELETE", "/instances/x", Reach.DELETION, Level.INSTANCE),
    ("DELETE", "/patients/x/", Reach.DELETION, Level.PATIENT),
    ("POST", "/tools/execute-script", Reach.EVERYTHING, None),
    ("POST", "/tools/reconstruct", Reach.EVERYTHING, None),
    ("POST", "/tools/bulk-delete", Reach.EVERYTHING, None),
    ("POST", "/studies/x/merge", Reach.EVERYTHING, None),
    ("PUT", "/tools/default-encoding", Reach.EVERYTHING, None),
    ("POST", "/another-plugin/do", Reach.EVERYTHING, None),
])
def test_what_each_write_may_change(method: str, uri: str, reach: Reach,
                                    level: Level | None) -> None:
    effect = write_effect(method, uri)
    assert (effect.reach, effect.level) == (reach, level)
    assert effect.resource_id == ("x" if level else "")
    assert effect.reason


def test_touching_a_resource_changes_its_version_only() -> None:
    generations = Generations(new_generation(NOW - timedelta(hours=1)))
    before = {name: generations.of(name) for name in ("a", "b")}
    generations.advance(["a"], NOW)
    assert generations.of("b") == before["b"] and generations.of("a") != before["a"]
    assert not resource_version("20200101T000000", generations.of("a"), NOW).settled
    assert resource_version("20200101T000000", generations.of("b"), NOW).settled
    assert resource_version("20200101T000000", generations.of("a"), NOW + SETTLE).settled


def test_an_announced_touch_keeps_its_grace_when_the_change_is_reported() -> None:
    generations = Generations()
    generations.announce(["a"], NOW)
    generations.advance(["a"], NOW)
    assert not resource_version("20200101T000000", generations.of("a"),
                                NOW + GRACE + SETTLE - timedelta(seconds=1)).settled


def test_a_change_of_unknown_reach_outdates_everything() -> None:
    generations = Generations()
    generations.advance(["a"], NOW)
    before = {name: generations.of(name) for name in ("a", "b")}
    generations.advance_all(NOW + timedelta(seconds=10))
    assert all(generations.of(name) != before[name] for name in ("a", "b"))
    assert not generations.touched("a")


def test_generations_survive_a_restart() -> None:
    generations = Generations(new_generation(NOW))
    generations.announce(["a", "b"], NOW)
    again = Generations.load(generations.dump())
    assert [again.of(name) for name in "abc"] == [generations.of(name) for name in "abc"]


def test_the_single_generation_of_earlier_releases_becomes_the_base() -> None:
    old = new_generation(NOW)
    assert Generations.load(old).of("a") == old + "|"
    assert Generations.load(None).of("a") == Generations.load("").of("a") == "|"


@pytest.mark.parametrize("text", ["{", "[]", '{"base": 1, "touched": {}}',
                                  '{"base": "", "touched": {"a": 2}}', "garbage"])
def test_unreadable_generations_outdate_everything(text: str) -> None:
    loaded = Generations.load(text)
    assert loaded.of("a") not in ("|", "")
    assert resource_version("20200101T000000", loaded.of("a"), NOW).settled


def test_too_many_touches_become_a_new_base_dated_after_the_last_one() -> None:
    generations = Generations()
    generations.LIMIT = 3
    generations.advance(["a", "b", "c"], NOW)
    untouched = generations.of("z")
    generations.announce(["d"], NOW)
    assert not generations.touched("a") and generations.of("z") != untouched
    assert generation_time(generations.base) == NOW + GRACE + TICK


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


def test_a_hold_keeps_versions_unsettled_without_outdating_them() -> None:
    generations = Generations()
    before = generations.of("a")
    assert not generations.held(NOW)
    generations.hold(None)
    assert generations.held(NOW + timedelta(days=365))
    generations.hold(NOW + GRACE)
    assert generations.held(NOW) and not generations.held(NOW + GRACE)
    assert generations.of("a") == before


def test_an_announced_deletion_matches_the_events_of_the_parents_it_empties_in_any_order() \
        -> None:
    """Orthanc 1.13 with PostgreSQL reports an emptied series after the deleted instance:
    that event too belongs to the announced deletion (before, it replaced the base and
    changed every ETag of the node)."""
    for order in (["instance", "series"], ["series", "instance"]):
        deletions = AnnouncedDeletions()
        deletions.announce("instance", ["instance"], ["series", "study", "patient"])
        for resource in order:
            assert deletions.match(resource, 100.0) == ("instance", ["series", "study",
                                                                     "patient"])
        assert deletions.match("other", 100.0) is None


def test_an_announced_deletion_stops_matching_a_while_after_its_own_event() -> None:
    deletions = AnnouncedDeletions()
    deletions.announce("series", ["series", "instance"], ["study"])
    assert deletions.match("instance", 100.0) is not None
    assert deletions.match("instance", 100.0 + 3 * AnnouncedDeletions.WINDOW) is not None
    assert deletions.match("series", 200.0) is not None  # its own event: the window starts
    assert deletions.match("study", 200.0 + AnnouncedDeletions.WINDOW) is not None
    assert deletions.match("study", 200.1 + AnnouncedDeletions.WINDOW) is None
    # Deleted again (re-created meanwhile): announced anew.
    deletions.announce("series", ["series"], ["study"])
    assert deletions.match("study", 300.0) == ("series", ["study"])


def test_nothing_is_remembered_while_paused() -> None:
    clock = [100.0]
    updates = RememberedUpdates(clock=lambda: clock[0])
    updates.remember("studies", "a", "20200101T000000", updates.epoch)
    updates.pause("deletion", 60)
    assert updates.get("studies", "a") is None  # forgotten at once
    updates.remember("studies", "a", "20200101T000000", updates.epoch)
    assert updates.get("studies", "a") is None
    updates.resume("deletion")
    updates.remember("studies", "a", "20200101T000000", updates.epoch)
    assert updates.get("studies", "a") == "20200101T000000"


def test_a_pause_that_is_never_resumed_ends_by_itself() -> None:
    clock = [100.0]
    updates = RememberedUpdates(clock=lambda: clock[0])
    updates.pause("failed deletion", 60)
    clock[0] += 61
    updates.remember("studies", "a", "20200101T000000", updates.epoch)
    assert updates.get("studies", "a") == "20200101T000000"


def test_a_new_base_keeps_the_grace_of_an_announced_touch() -> None:
    generations = Generations()
    generations.announce(["a"], NOW)  # a write in flight, GRACE ahead
    generations.advance_all(NOW)      # then a change of unknown reach
    assert not resource_version("20200101T000000", generations.of("a"),
                                NOW + GRACE + SETTLE - timedelta(seconds=1)).settled
    assert resource_version("20200101T000000", generations.of("a"), NOW + GRACE + SETTLE).settled
