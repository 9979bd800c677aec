"""Unit tests of freshness.changes: what each change does to versions, as tables."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from orthanc_cache_plugin.core.routes import Level
from orthanc_cache_plugin.freshness.changes import (
    PARENT_ATTACHMENTS,
    Decision,
    Event,
    Marker,
    Step,
    Target,
    marker_places,
    on_event,
    on_housekeeper,
    on_logged,
    on_write,
)
from orthanc_cache_plugin.freshness.versions import GRACE

STUDY = Target(Level.STUDY, "s1")
SERIES = Target(Level.SERIES, "r1")
INSTANCE = Target(Level.INSTANCE, "i1")


# --- HTTP writes, before Orthanc runs them ----------------------------------------------------

@pytest.mark.parametrize("method, uri, step, targets, below, deletion, marker", [
    # Reads and uploads: what they add shows in LastUpdate and the stored-instance callback.
    ("POST", "/instances", Step.IGNORE, (), False, False, Marker.NONE),
    ("POST", "/tools/find", Step.IGNORE, (), False, False, Marker.NONE),
    # Metadata: the resource and its ancestors.
    ("PUT", "/studies/s1/metadata/1024", Step.ANNOUNCE, (STUDY,), False, False, Marker.NONE),
    ("DELETE", "/series/r1/metadata/1024", Step.ANNOUNCE, (SERIES,), False, False,
     Marker.NONE),
    # A reconstruction rewrites every resource below.
    ("POST", "/studies/s1/reconstruct", Step.ANNOUNCE, (STUDY,), True, False, Marker.NONE),
    # A deletion: remembered, and logged on the resource for nodes sharing the index.
    ("DELETE", "/instances/i1", Step.ANNOUNCE, (INSTANCE,), False, True, Marker.ON_RESOURCE),
    # Unknown reach: every answer.
    ("POST", "/tools/execute-script", Step.ANNOUNCE_ALL, (), False, False, Marker.NONE),
])
def test_a_write(method, uri, step, targets, below, deletion, marker):
    decision = on_write(method, uri, admin_prefix="/cache")
    assert (decision.step, decision.targets, decision.below, decision.deletion,
            decision.marker) == (step, targets, below, deletion, marker)
    assert decision.forget_updates is (step is not Step.IGNORE)
    assert decision.reason


@pytest.mark.parametrize("uri", ["/cache", "/cache/clear", "/cache/studies/s1"])
def test_the_plugins_own_admin_api_changes_nothing(uri):
    assert on_write("DELETE", uri, admin_prefix="/cache/").step is Step.IGNORE
    # Without an admin prefix, or for a path that only starts alike, the rules apply.
    assert on_write("DELETE", uri, admin_prefix="").step is Step.ANNOUNCE_ALL
    assert on_write("DELETE", "/cachet/x", admin_prefix="/cache").step is Step.ANNOUNCE_ALL


# --- Change events, after the change ----------------------------------------------------------

def _never_asked() -> bool:
    raise AssertionError("existence asked when not needed")


@pytest.mark.parametrize("event, level, resource, announced, exists, expected", [
    # Metadata or attachment of an existing resource: it and its ancestors.
    (Event.METADATA, Level.SERIES, "r1", None, _never_asked,
     Decision(Step.ADVANCE, "metadata updated", (SERIES,))),
    (Event.ATTACHMENT, Level.INSTANCE, "i1", None, _never_asked,
     Decision(Step.ADVANCE, "attachment updated", (INSTANCE,))),
    # A parent's attachment (the DICOMweb plugin's 4301 of a series): no stored answer.
    (Event.ATTACHMENT, Level.SERIES, "r1", None, _never_asked,
     Decision(Step.IGNORE, PARENT_ATTACHMENTS)),
    (Event.ATTACHMENT, Level.PATIENT, "p1", None, _never_asked,
     Decision(Step.IGNORE, PARENT_ATTACHMENTS)),
    (Event.ATTACHMENT, None, "x", None, _never_asked,
     Decision(Step.ADVANCE_ALL, "attachment updated of a resource of unknown level")),
    (Event.METADATA, None, "x", None, _never_asked,
     Decision(Step.ADVANCE_ALL, "metadata updated of a resource of unknown level")),
    # A deletion that no request announced, of a resource that exists again: an overwrite.
    (Event.DELETED, Level.INSTANCE, "i1", None, lambda: True,
     Decision(Step.ADVANCE, "overwritten", (INSTANCE,))),
    # ... and one that is gone: Lua, a job, recycling; reach unknown.
    (Event.DELETED, Level.INSTANCE, "i1", None, lambda: False,
     Decision(Step.ADVANCE_ALL, "deletion of i1 that no request announced")),
    (Event.DELETED, None, "i1", None, _never_asked,
     Decision(Step.ADVANCE_ALL, "deletion of i1 that no request announced")),
    # The announced deletion's own event: it and the ancestors known when announced.
    (Event.DELETED, Level.SERIES, "r1", ("r1", ["s1", "p1"]), _never_asked,
     Decision(Step.ADVANCE, "announced deletion reported", known=("r1", "s1", "p1"),
              marker=Marker.ON_NEAREST_ANCESTOR, deleted_level=Level.SERIES, resume="r1")),
    # Events of what went with it (below, or an emptied parent): nothing more.
    (Event.DELETED, Level.INSTANCE, "i1", ("r1", ["s1", "p1"]), _never_asked,
     Decision(Step.IGNORE, "goes with the deletion of r1")),
    (Event.DELETED, Level.STUDY, "s1", ("r1", ["s1", "p1"]), _never_asked,
     Decision(Step.IGNORE, "goes with the deletion of r1")),
])
def test_an_event(event, level, resource, announced, exists, expected):
    assert on_event(event, level, resource, announced, exists) == expected


@pytest.mark.parametrize("decision, places", [
    (on_write("DELETE", "/series/r1", ""), [(Level.SERIES, "r1")]),
    # After the deletion: the nearest ancestor first, then the next ones (emptied too).
    (on_event(Event.DELETED, Level.SERIES, "r1", ("r1", ["s1", "p1"]), _never_asked),
     [(Level.STUDY, "s1"), (Level.PATIENT, "p1")]),
    (on_event(Event.DELETED, Level.PATIENT, "p1", ("p1", []), _never_asked), []),
    (on_event(Event.DELETED, None, "x", ("x", ["a"]), _never_asked), []),
    (on_write("PUT", "/studies/s1/metadata/1024", ""), []),
])
def test_where_a_deletion_is_logged(decision, places):
    assert marker_places(decision) == places


# --- Orthanc's change log ---------------------------------------------------------------------

def _change(kind: str, level: str, resource: str) -> dict:
    return {"ChangeType": kind, "ResourceType": level, "ID": resource}


@pytest.mark.parametrize("changes, last, seen, step, targets, forget", [
    # Nothing new.
    ([], 10, 10, Step.IGNORE, (), False),
    # Last moved without a change left in the log (a deletion that emptied a patient).
    ([], 12, 10, Step.IGNORE, (), True),
    # New instances show in LastUpdate; remembered values are forgotten.
    ([_change("NewInstance", "Instance", "i1")], 11, 10, Step.IGNORE, (), True),
    # Metadata and attachments of other nodes: those resources and their ancestors.
    ([_change("UpdatedMetadata", "Series", "r1"), _change("NewInstance", "Instance", "i2"),
      _change("UpdatedAttachment", "Instance", "i1")], 13, 10, Step.ADVANCE,
     (SERIES, INSTANCE), True),
    # A parent's attachment shows only in its list of attachments (validated by content).
    ([_change("UpdatedAttachment", "Series", "r1"), _change("UpdatedAttachment", "Study", "s1")],
     12, 10, Step.IGNORE, (), True),
    ([_change("UpdatedAttachment", "Series", "r1"), _change("UpdatedMetadata", "Series", "r1")],
     12, 10, Step.ADVANCE, (SERIES,), True),
    # A level this version does not know: every answer.
    ([_change("UpdatedMetadata", "Other", "x")], 11, 10, Step.ADVANCE_ALL, (), True),
])
def test_a_page_of_the_change_log(changes, last, seen, step, targets, forget):
    decision = on_logged(changes, last, seen)
    assert (decision.step, decision.targets, decision.forget_updates) == (step, targets, forget)


# --- Orthanc's Housekeeper --------------------------------------------------------------------

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
DONE_A = {"LastProcessedConfiguration": {"IngestTranscoding": "a"}}
DONE_B = {"LastProcessedConfiguration": {"IngestTranscoding": "b"}}
WORKING = dict(DONE_A, CurrentlyProcessingConfiguration={"IngestTranscoding": "b"})
FINISHED_A = json.dumps(DONE_A["LastProcessedConfiguration"], sort_keys=True)


@pytest.mark.parametrize("status, seen, finished, working, hold, advance, news", [
    # The first look holds for GRACE and outdates what an unknown processing may have left.
    (DONE_A, False, None, False, NOW + GRACE, True, None),
    # Idle, nothing new: no hold, nothing outdated.
    (DONE_A, True, FINISHED_A, False, None, False, None),
    # At work: hold, and say so once.
    (WORKING, True, FINISHED_A, False, NOW + GRACE, False, "is rewriting files"),
    (WORKING, True, FINISHED_A, True, NOW + GRACE, False, None),
    # Done with another configuration: everything outdated, and said.
    (DONE_B, True, FINISHED_A, True, None, True, "is done"),
    # Begun and ended between two looks: the finished configuration still changed.
    (DONE_B, True, FINISHED_A, False, None, True, None),
])
def test_a_look_at_the_housekeeper(status, seen, finished, working, hold, advance, news):
    look = on_housekeeper(status, NOW, seen, finished, working)
    assert look.loaded
    assert (look.hold_until, look.advance_all) == (hold, advance)
    assert look.working is ("CurrentlyProcessingConfiguration" in status)
    assert look.finished == json.dumps(status["LastProcessedConfiguration"], sort_keys=True)
    assert (look.news is None) if news is None else (news in look.news)


def test_a_housekeeper_that_is_not_loaded_is_no_longer_watched():
    look = on_housekeeper(None, NOW, False, None, False)
    assert not look.loaded and look.hold_until is None and not look.advance_all
