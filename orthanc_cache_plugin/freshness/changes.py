"""What each kind of change does to versions, as decisions on what was read (pure).

Four sources tell a node that stored answers may be outdated in ways that
``LastUpdate`` does not show (see :mod:`.versions`):

* an HTTP write, announced by the incoming-request filter before Orthanc runs
  it (:func:`on_write`);
* a change event of Orthanc, after the change (:func:`on_event`);
* a page of Orthanc's change log, ``/changes``, which shows what other nodes
  sharing the index changed (:func:`on_logged`);
* the status of Orthanc's Housekeeper, which rewrites files without any event
  (:func:`on_housekeeper`).

Each function returns a value that says what to do (announce or advance the
generations of some resources or of all, remember a deletion, log a marker,
ignore) and why; :mod:`..cache.changes` carries it out, asking Orthanc's index
for the ancestors and descendants that a decision names by their resource.
Nothing here reads or writes anything, so each rule is tested as a table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from ..core.routes import Level
from .versions import GRACE, LOGGED_HIDDEN_CHANGES, PARENT_ATTACHMENTS, Reach, write_effect


class Event(Enum):
    """The change events of Orthanc that ``LastUpdate`` does not show."""

    DELETED = "deleted"
    METADATA = "metadata updated"
    ATTACHMENT = "attachment updated"


class Step(Enum):
    """What happens to the generations."""

    #: Nothing: what changed shows in LastUpdate, or was handled already.
    IGNORE = "ignore"
    #: A write is about to run: the targets' answers are unsettled until it is done.
    ANNOUNCE = "announce"
    ANNOUNCE_ALL = "announce all"
    #: A change happened: the targets' answers are outdated.
    ADVANCE = "advance"
    ADVANCE_ALL = "advance all"


class Marker(Enum):
    """Where a deletion is logged in /changes for the nodes that share Orthanc's index
    (Orthanc does not log deletions), when the cluster bus could not tell them."""

    NONE = "none"
    #: On the resource itself, before it is deleted.
    ON_RESOURCE = "on the resource"
    #: On the nearest ancestor that the deletion left (the others went with it).
    ON_NEAREST_ANCESTOR = "on the nearest ancestor left"


@dataclass(frozen=True)
class Target:
    """A resource whose answers, and its ancestors', a decision touches."""

    level: Level
    resource_id: str


@dataclass(frozen=True)
class Decision:
    """What one change does; carried out by :class:`..cache.changes.ChangeWatch`."""

    step: Step
    #: Why (logged).
    reason: str
    #: Resources touched with their ancestors (asked of Orthanc's index).
    targets: Tuple[Target, ...] = ()
    #: Resources touched as they are (known without asking).
    known: Tuple[str, ...] = ()
    #: The targets' descendants are touched too (a reconstruction rewrites them).
    below: bool = False
    #: The target is about to be deleted: if it exists, remember what goes with it, to
    #: recognize its DELETED events, and trust no remembered LastUpdate of it meanwhile.
    deletion: bool = False
    #: Where the change is logged for other nodes, unless the cluster bus told them.
    marker: Marker = Marker.NONE
    #: The level of the deleted resource, whose ancestors are ``known[1:]`` (for
    #: ``Marker.ON_NEAREST_ANCESTOR``).
    deleted_level: Optional[Level] = None
    #: The deleted resource whose deletion was reported: its LastUpdate may be remembered.
    resume: Optional[str] = None
    #: Remembered LastUpdates may be outdated.
    forget_updates: bool = False


#: How Orthanc's change log and the Python plugin name levels.
LEVEL_NAMES = {"Patient": Level.PATIENT, "Study": Level.STUDY, "Series": Level.SERIES,
               "Instance": Level.INSTANCE}
_ABOVE = {Level.INSTANCE: (Level.SERIES, Level.STUDY, Level.PATIENT),
          Level.SERIES: (Level.STUDY, Level.PATIENT), Level.STUDY: (Level.PATIENT,)}


def _of_a_parent(level: Optional[Level]) -> bool:
    """Whether ``level`` is a patient's, study's or series' (PARENT_ATTACHMENTS)."""
    return level is not None and level is not Level.INSTANCE


def levels_above(level: Level) -> Tuple[Level, ...]:
    """The levels above ``level``, nearest first."""
    return _ABOVE.get(level, ())


def on_write(method: str, uri: str, admin_prefix: str) -> Decision:
    """An HTTP write that Orthanc is about to run (``admin_prefix``: the plugin's own API)."""
    prefix = admin_prefix.rstrip("/")
    if prefix and (uri == prefix or uri.startswith(prefix + "/")):
        return Decision(Step.IGNORE, "the plugin's own admin API changes nothing in Orthanc")
    effect = write_effect(method, uri)
    if effect.reach is Reach.NOTHING:
        # Reads, uploads (seen by the stored-instance callback), network...
        return Decision(Step.IGNORE, effect.reason)
    if effect.level is None:
        return Decision(Step.ANNOUNCE_ALL, effect.reason, forget_updates=True)
    deletion = effect.reach is Reach.DELETION
    return Decision(Step.ANNOUNCE, effect.reason, (Target(effect.level, effect.resource_id),),
                    below=effect.reach is Reach.SUBTREE, deletion=deletion,
                    marker=Marker.ON_RESOURCE if deletion else Marker.NONE,
                    forget_updates=True)


def on_event(event: Event, level: Optional[Level], resource_id: str,
             announced: Optional[Tuple[str, Sequence[str]]],
             exists: Callable[[], bool]) -> Decision:
    """A change event of ``resource_id`` (at ``level``, None when unknown).

    ``announced`` is the announced deletion that a DELETED event belongs to,
    as (deleted id, its ancestors), None when no request announced it;
    ``exists()`` tells whether the resource exists now (called only for a
    DELETED event that no request announced).
    """
    if event is not Event.DELETED:  # metadata or attachment of an existing resource
        if event is Event.ATTACHMENT and _of_a_parent(level):
            return Decision(Step.IGNORE, PARENT_ATTACHMENTS)
        if level is None:
            return Decision(Step.ADVANCE_ALL, "%s of a resource of unknown level" % event.value)
        return Decision(Step.ADVANCE, event.value, (Target(level, resource_id),))
    if announced is None:
        if level is not None and exists():
            # It exists again: an overwrite (OverwriteInstances) deletes the instance, and
            # the parents it empties, and stores it anew in one transaction.  What changed
            # is the resource and its ancestors, as for a metadata write.
            return Decision(Step.ADVANCE, "overwritten", (Target(level, resource_id),))
        # Lua, a job, recycling: which answers it changed is unknown.
        return Decision(Step.ADVANCE_ALL, "deletion of %s that no request announced"
                        % resource_id)
    deleted_id, ancestors = announced
    if resource_id != deleted_id:
        # Below the deleted resource, or a parent it emptied: gone, and every remembered
        # LastUpdate was forgotten on this event.  Nothing to save, which matters for a
        # study of thousands of instances.
        return Decision(Step.IGNORE, "goes with the deletion of %s" % deleted_id)
    return Decision(Step.ADVANCE, "announced deletion reported", known=(deleted_id, *ancestors),
                    marker=Marker.ON_NEAREST_ANCESTOR, deleted_level=level, resume=deleted_id)


def on_logged(changes: Sequence[Mapping[str, Any]], last: int, seen: int) -> Decision:
    """A page of Orthanc's change log: ``changes`` after ``seen``, up to ``last``.

    Orthanc drops the logged changes of a resource when it is deleted: a
    deletion that emptied a patient (no parent left for the marker) shows
    only as ``last`` moving, and a LastUpdate remembered since is then of a
    deleted resource.  Any change, or ``last`` moving, may also be another
    node's new instance: remembered LastUpdates are forgotten.
    """
    forget = bool(changes) or last != seen
    hidden = [change for change in changes if change.get("ChangeType") in LOGGED_HIDDEN_CHANGES
              and not (change.get("ChangeType") == "UpdatedAttachment"
                       and _of_a_parent(LEVEL_NAMES.get(str(change.get("ResourceType", "")))))]
    levels = [LEVEL_NAMES.get(str(change.get("ResourceType", ""))) for change in hidden]
    if any(level is None for level in levels):
        return Decision(Step.ADVANCE_ALL, "a logged change of a resource of unknown level",
                        forget_updates=forget)
    targets = tuple(Target(level, str(change.get("ID", "")))
                    for level, change in zip(levels, hidden) if level is not None)
    if targets:
        return Decision(Step.ADVANCE, "%d logged changes of metadata or attachments"
                        % len(targets), targets, forget_updates=forget)
    return Decision(Step.IGNORE, "no logged change that LastUpdate does not show",
                    forget_updates=forget)


@dataclass(frozen=True)
class HousekeeperLook:
    """What a look at the Housekeeper's status decides."""

    #: False: the plugin is not loaded after all; stop looking, and hold nothing.
    loaded: bool
    #: Versions stay unsettled until then (None: no new hold).
    hold_until: Optional[datetime] = None
    #: It finished a processing since the last look: every stored answer is outdated.
    advance_all: bool = False
    #: The configuration it last finished processing, to compare at the next look.
    finished: str = ""
    #: Whether it is processing now.
    working: bool = False
    #: What to warn about (its work began or ended), if anything.
    news: Optional[str] = None


def on_housekeeper(status: Optional[Mapping[str, Any]], now: datetime, seen_before: bool,
                   finished_before: Optional[str], working_before: bool) -> HousekeeperLook:
    """A look at ``/plugins/housekeeper/status`` (None when the route is missing).

    The Housekeeper (Orthanc 1.11+) reconstructs studies after a change of
    ``StorageCompression``, ``IngestTranscoding`` or the main DICOM tags: it
    rewrites files and tags but fires no event, moves no ``LastUpdate`` and
    logs nothing in /changes.  Its status tells whether it is processing,
    and which configuration it last finished processing: a processing that
    begins and ends between two looks still changes the latter.  Each look
    (and the first) holds versions for GRACE, covering a processing that
    begins just after it.
    """
    if status is None:
        return HousekeeperLook(loaded=False)
    working = status.get("CurrentlyProcessingConfiguration") is not None
    finished = json.dumps(status.get("LastProcessedConfiguration"), sort_keys=True)
    news = None
    if working != working_before:
        news = ("Orthanc's Housekeeper is rewriting files: answers are not served from the "
                "store until it is done" if working else
                "Orthanc's Housekeeper is done: every answer stored before is outdated")
    return HousekeeperLook(
        loaded=True,
        hold_until=now + GRACE if working or not seen_before else None,
        advance_all=finished != finished_before, finished=finished, working=working, news=news)


def marker_places(decision: Decision) -> List[Tuple[Level, str]]:
    """Where the marker of ``decision`` may be logged, in order: the first that
    exists takes it."""
    if decision.marker is Marker.ON_RESOURCE:
        return [(target.level, target.resource_id) for target in decision.targets]
    if decision.marker is Marker.ON_NEAREST_ANCESTOR and decision.deleted_level is not None:
        return list(zip(levels_above(decision.deleted_level), decision.known[1:]))
    return []
