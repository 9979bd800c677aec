"""When a stored answer is still current: resource versions and generations.

``LastUpdate`` (instances: ``ReceptionDate``) changes when an instance is
stored below a resource, with a resolution of one second.  It does not change
when a child is deleted (Orthanc before 1.12.1), nor for metadata,
attachments, a rewritten file or ``/reconstruct``.  So a version is made of:

* the resource's ``LastUpdate``;
* the node's **base generation**, replaced only after a change whose reach
  is unknown (a Lua script, another plugin's route, a deletion that no HTTP
  request announced): it outdates every stored answer;
* the resource's own **generation**, replaced after each change that
  ``LastUpdate`` does not show and that touches the resource: the resource
  itself, and its ancestors, whose answers (``shared-tags``, ``archive``...)
  include it.  Untouched resources keep their versions, hence their ETags.

Which write touches what is decided by :func:`write_effect` from the
request alone (a table, tested as one).  Other nodes learn the same changes
through Orthanc's change log (``/changes``, in the shared database), which
every node polls; deletions, which Orthanc does not log, are announced there
by writing and removing a marker metadata on a resource (see
:data:`MARKER_METADATA`).

A generation records when it was made.  A version is **settled** once
``SETTLE`` seconds have passed since the latest of ``LastUpdate`` and its
generations' dates: before that, another change could still come with the
same ``LastUpdate`` (same second) or be in flight, so answers are neither
stored nor validated by version alone (their ETag includes a digest of the
body).  A write announced before it happens dates its generations ``GRACE``
seconds ahead, which covers writes that take that long.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from functools import lru_cache
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from ..core.data import GenerationUpdate, Version
from ..core.routes import Level
from ..http.validators import parse_orthanc_timestamp

#: User-defined metadata written then removed to log a deletion in /changes.
MARKER_METADATA = 65011
#: Changes in /changes that LastUpdate does not show.
LOGGED_HIDDEN_CHANGES = ("UpdatedMetadata", "UpdatedAttachment")

#: Why a patient's, study's or series' attachments touch no stored answer (the one
#: rule for REST writes, change events and the change log).
PARENT_ATTACHMENTS = ("attachment of a patient, study or series: only its list of attachments "
                      "shows it, validated by content")
#: Seconds after a change during which answers are not trusted by version: the
#: one-second resolution of LastUpdate, plus time for the write to commit.
SETTLE = timedelta(seconds=3)
#: How far ahead a write announced before it happens dates its generation.
GRACE = timedelta(seconds=2)

_GENERATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)/[0-9a-f]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def new_generation(moment: datetime) -> str:
    """A generation never seen before, dated ``moment``: ``<epoch seconds>/<random>``."""
    seconds = (moment - _EPOCH).total_seconds()
    return "%.6f/%s" % (seconds, os.urandom(6).hex())


def _seconds(generation: str) -> float:
    """A generation's date as a number, -1 for the empty one: what orders generations
    here and in the shared store's merge script (``store.redis_backend._MERGE``: Lua's numbers
    are the same doubles, which tell microseconds apart for dates of this era)."""
    match = _GENERATION.fullmatch(generation)
    return float(match.group(1)) if match else -1.0


def newer(generation: str, than: str) -> bool:
    """Whether ``generation`` comes after ``than``: a later date, or the same date and a
    greater text.  Every node picks the same winner whatever the order of updates."""
    first, second = _seconds(generation), _seconds(than)
    return first > second if first != second else generation > than


_TICK = timedelta(microseconds=1)


@lru_cache(maxsize=16)  # on every request, for the current generation
def generation_time(generation: str) -> Optional[datetime]:
    """When ``generation`` was dated; None for the empty (initial) generation."""
    match = _GENERATION.fullmatch(generation)
    if not match:
        return None
    return _EPOCH + timedelta(seconds=float(match.group(1)))


def later_generation(current: str, now: datetime) -> str:
    """The generation replacing ``current`` after a change: dated now, or later when
    ``current`` announced a write still in its grace period; always dated after
    ``current``, so that it wins wherever the two meet (:func:`newer`)."""
    current_time = generation_time(current)
    return new_generation(max(now, current_time + _TICK) if current_time else now)


class Generations:
    """The base generation and the generation of each resource touched since.

    Kept as one small JSON text (:meth:`dump`, :meth:`load`) beside the
    store, written before a touch takes effect: a touch forgotten by a
    restart would give a resource its earlier version back, and with it
    answers and ETags from before the change.  Past :attr:`LIMIT` touched
    resources, the base is replaced instead (everything outdated once) and
    the touches are dropped.  Readers take plain dict and string reads
    (atomic in CPython); writers hold a lock.

    Every change returns what it changed (a :class:`.data.GenerationUpdate`),
    for the other nodes of a cluster that share a store; :meth:`merge` takes
    theirs.  Each new generation is :func:`newer` than the one it replaces,
    a touch dated no later than the base is outdated by it, and a merge keeps
    the newest of each: nodes that saw the same updates, in any order, hold
    the same generations, hence the same versions and entity-tags.
    """

    #: Touched resources kept at most.
    LIMIT = 5000

    def __init__(self, base: str = "", touched: Optional[Dict[str, str]] = None):
        self.base = base
        self._touched: Dict[str, str] = dict(touched or {})
        self._lock = threading.Lock()
        #: Until when no version settles, by reason, whatever the generations: while
        #: something may change resources without saying which (Orthanc's Housekeeper),
        #: or while this node may not hear of other nodes' changes.  Unlike a new base,
        #: a hold outdates nothing: validators stay what they were.
        self._holds: Dict[str, datetime] = {}

    def hold(self, until: Optional[datetime], reason: str = "Orthanc's Housekeeper may be "
             "rewriting files") -> None:
        """Keep every version unsettled until ``until`` (None: until :meth:`release`), for
        ``reason`` (said in the log of each request meanwhile)."""
        self._holds = dict(self._holds, **{
            reason: until if until is not None else datetime.max.replace(tzinfo=timezone.utc)})

    def release(self, reason: str) -> None:
        self._holds = {name: end for name, end in self._holds.items() if name != reason}

    def held(self, now: datetime) -> Optional[str]:
        """Why versions are held at ``now``; None when they are not."""
        holds = self._holds  # replaced, never changed: safe to read without the lock
        return next((reason for reason, end in holds.items() if now < end), None)

    @classmethod
    def load(cls, text: Optional[str]) -> Generations:
        """What :meth:`dump` wrote; a text from before per-resource generations (the bare
        node generation) becomes the base; unreadable text gives a new base (nothing
        stored before is trusted)."""
        if not text:
            return cls()
        if _GENERATION.fullmatch(text):
            return cls(text)
        try:
            saved = json.loads(text)
            base, touched = saved["base"], saved["touched"]
            if isinstance(base, str) and isinstance(touched, dict) and all(
                    isinstance(key, str) and isinstance(value, str)
                    for key, value in touched.items()):
                return cls(base, touched)
        except (ValueError, KeyError, TypeError):
            pass
        return cls(new_generation(_EPOCH))

    def dump(self) -> str:
        with self._lock:
            return json.dumps({"base": self.base, "touched": self._touched},
                              separators=(",", ":"))

    def everything(self) -> GenerationUpdate:
        """All of it, as an update: what a node tells the others when it (re)joins them."""
        with self._lock:
            return GenerationUpdate(self.base, dict(self._touched))

    def of(self, resource_id: str) -> str:
        """What versions ``resource_id``'s answers besides ``LastUpdate``: ``base|own``."""
        return self.base + "|" + self._touched.get(resource_id, "")

    def touched(self, resource_id: str) -> bool:
        return resource_id in self._touched

    def announce(self, resource_ids: Iterable[str], now: datetime) -> GenerationUpdate:
        """Before a write to these resources: generations dated GRACE ahead."""
        return self._replace(resource_ids, lambda current: later_generation(current, now + GRACE))

    def advance(self, resource_ids: Iterable[str], now: datetime) -> GenerationUpdate:
        """After a change of these resources: new generations (keeping an announced grace)."""
        return self._replace(resource_ids, lambda current: later_generation(current, now))

    def announce_all(self, now: datetime) -> GenerationUpdate:
        """Before a write whose reach is unknown: a new base dated GRACE ahead."""
        with self._lock:
            return self._replace_base(now + GRACE)

    def advance_all(self, now: datetime) -> GenerationUpdate:
        """After a change whose reach is unknown: a new base (keeping an announced grace)."""
        with self._lock:
            return self._replace_base(now)

    def merge(self, update: GenerationUpdate) -> bool:
        """Take another node's update: the newer of each generation; whether any changed."""
        changed = False
        with self._lock:
            if update.base and newer(update.base, self.base):
                self.base, changed = update.base, True
                self._drop_outdated_touches()
            floor = _seconds(self.base)
            for resource_id, generation in update.touched.items():
                if _seconds(generation) > floor and newer(
                        generation, self._touched.get(resource_id, "")):
                    self._touched[resource_id], changed = generation, True
        return changed

    def _replace(self, resource_ids: Iterable[str],
                 make: Callable[[str], str]) -> GenerationUpdate:
        with self._lock:
            touched = {resource_id: make(self._touched.get(resource_id, ""))
                       for resource_id in resource_ids}
            self._touched.update(touched)
            if len(self._touched) > self.LIMIT:
                newest = max(self._touched.values(), key=_seconds)
                return self._replace_base(generation_time(newest) or _EPOCH)
            return GenerationUpdate(touched=touched)

    def _replace_base(self, moment: datetime) -> GenerationUpdate:
        """A new base, dated ``moment`` or later: after the current base and every
        touch, whose announced grace periods it keeps.  It outdates what the touches
        did, which are dropped.  Holds the lock."""
        dates = [generation_time(generation) or _EPOCH
                 for generation in [self.base, *self._touched.values()]]
        self.base = new_generation(max([moment] + [date + _TICK for date in dates]))
        self._drop_outdated_touches()
        return GenerationUpdate(base=self.base)

    def _drop_outdated_touches(self) -> None:
        floor = _seconds(self.base)
        self._touched = {resource_id: generation
                         for resource_id, generation in self._touched.items()
                         if _seconds(generation) > floor}


class AnnouncedDeletions:
    """Deletions announced by the incoming-request filter, to tell their DELETED events
    from those of deletions whose reach is unknown.

    A deletion's events name the deleted resource, each resource below it and each
    ancestor it left empty (Orthanc deletes those too), in an order that varies:
    Orthanc 1.13 with PostgreSQL reports the emptied parents *after* the deleted
    resource.  So a deletion keeps matching events for :attr:`WINDOW` seconds after
    the deleted resource's own event (the events of one transaction come together).
    """

    #: Seconds a deletion keeps matching events after the deleted resource's own event.
    WINDOW = 10.0
    #: Deletions kept at most (a DELETE that fails is never reported).
    LIMIT = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: By the id of the resource deleted: what goes, and the ancestors that may stay.
        self._pending: Dict[str, Tuple[FrozenSet[str], List[str]]] = {}
        #: When (a monotonic clock) the deleted resource's own event came.
        self._reported: Dict[str, float] = {}

    def announce(self, deleted_id: str, gone: Iterable[str], ancestors: List[str]) -> None:
        with self._lock:
            if len(self._pending) >= self.LIMIT:
                self._pending.clear()  # failed DELETEs leave theirs behind
                self._reported.clear()
            self._pending[deleted_id] = (frozenset(gone), list(ancestors))
            self._reported.pop(deleted_id, None)

    def match(self, resource_id: str, now: float) -> Optional[Tuple[str, List[str]]]:
        """The announced deletion that the DELETED event of ``resource_id``, received at
        ``now``, is part of, as (deleted id, ancestors); None when none is."""
        with self._lock:
            for deleted_id, reported in list(self._reported.items()):
                if now - reported > self.WINDOW:
                    del self._reported[deleted_id]
                    self._pending.pop(deleted_id, None)
            for deleted_id, (gone, ancestors) in self._pending.items():
                if resource_id in gone or resource_id in ancestors:
                    if resource_id == deleted_id:
                        self._reported.setdefault(deleted_id, now)
                    return deleted_id, ancestors
        return None


class RememberedUpdates:
    """Each resource's ``LastUpdate`` as last read, kept until anything may have changed it.

    Asking Orthanc on every request costs more than the rest of a hit (the
    Python plugin holds the GIL through ``RestApiGet``).  ``LastUpdate``
    changes only when an instance is stored below a resource (and, from
    Orthanc 1.12.1, when a child is deleted), so a value read once stays
    right until :meth:`forget_all` is called on any such change: after
    every stored instance (Orthanc's stored-instance callback, which runs
    before the upload or C-STORE is answered), before every HTTP write, on
    every change event, and whenever the change log shows a change (other
    nodes).

    A value read before a change but remembered after it would outlive the
    change: each value is remembered with the epoch taken before it was
    read, and only if no change came in between.
    """

    #: Resources remembered at most; beyond, everything is forgotten at once.
    LIMIT = 50000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._values: Dict[Tuple[str, str], str] = {}
        #: Counts calls to forget_all.
        self.epoch = 0
        self._clock = clock
        #: Pauses by name, until when (``clock`` seconds).
        self._paused: Dict[str, float] = {}

    def pause(self, name: str, seconds: float) -> None:
        """Forget everything and remember nothing until :meth:`resume` of ``name``, or for
        ``seconds`` at most.  While a deletion runs, a resource below the deleted one
        read before the deletion commits would be remembered past it."""
        with self._lock:
            self._paused[name] = self._clock() + seconds
            self.epoch += 1
            self._values.clear()

    def resume(self, name: str) -> None:
        with self._lock:
            self._paused.pop(name, None)

    def get(self, level: str, resource_id: str) -> Optional[str]:
        """The remembered ``LastUpdate``, or None."""
        return self._values.get((level, resource_id))

    def remember(self, level: str, resource_id: str, last_update: str, epoch: int) -> None:
        """Keep ``last_update``, read after :attr:`epoch` was ``epoch``, if nothing changed
        since."""
        with self._lock:
            if epoch != self.epoch:
                return
            if self._paused:
                now = self._clock()
                self._paused = {name: end for name, end in self._paused.items() if end > now}
                if self._paused:
                    return
            if len(self._values) >= self.LIMIT:
                self._values.clear()
            self._values[(level, resource_id)] = last_update

    def forget_all(self) -> None:
        """Something may have changed: read every ``LastUpdate`` again."""
        with self._lock:
            self.epoch += 1
            self._values.clear()


def resource_version(last_update: str, generations: str, now: datetime) -> Version:
    """Combine a resource's ``LastUpdate`` and its generations (:meth:`Generations.of`)."""
    modified = _last_change(last_update, generations)
    settled = modified is not None and now >= modified + SETTLE
    return Version(last_update + "|" + generations, modified, settled)


@lru_cache(maxsize=4096)  # on every request
def _last_change(last_update: str, generations: str) -> Optional[datetime]:
    """The latest of ``LastUpdate`` and the generations' dates, in whole seconds."""
    times = [parse_orthanc_timestamp(last_update)]
    times += [generation_time(generation) for generation in generations.split("|")]
    known = [moment for moment in times if moment is not None]
    return max(known).replace(microsecond=0) if known else None


class Reach(Enum):
    """Which stored answers a write may change (see :func:`write_effect`)."""

    #: None: what it adds, LastUpdate and the stored-instance callback show.
    NOTHING = "nothing"
    #: The resource's own answers and its ancestors'.
    RESOURCE = "resource"
    #: Those, and the answers of every resource below it.
    SUBTREE = "subtree"
    #: The resource and everything below go; its ancestors' answers change.
    DELETION = "deletion"
    #: Unknown: every stored answer.
    EVERYTHING = "everything"


@dataclass(frozen=True)
class WriteEffect:
    """What a write may change, and why (logged)."""

    reach: Reach
    reason: str
    level: Optional[Level] = None
    resource_id: str = ""


_ID = r"(?P<level>patients|studies|series|instances)/(?P<id>[^/]+)"

#: Writes by (methods, URI pattern), first match wins; a write that none
#: matches may change anything.  docs/freshness.md lists them with the reasons.
_WRITES: Tuple[Tuple[str, str, Reach, str], ...] = (
    ("DELETE", _ID, Reach.DELETION, "deletion"),
    ("PUT DELETE", _ID + r"/metadata/[^/]+", Reach.RESOURCE, "metadata"),
    ("PUT DELETE POST", r"(?P<level>instances)/(?P<id>[^/]+)/attachments/[^/]+(/.*)?",
     Reach.RESOURCE, "attachment"),
    ("PUT DELETE POST", r"(patients|studies|series)/[^/]+/attachments/[^/]+(/.*)?", Reach.NOTHING,
     PARENT_ATTACHMENTS),
    ("POST", _ID + r"/reconstruct", Reach.SUBTREE, "reconstruction"),
    ("POST", _ID + r"/(modify|anonymize)", Reach.SUBTREE,
     "modification (with KeepSource false or kept UIDs, it replaces the resource)"),
    ("PUT DELETE", _ID + r"/labels/[^/]+", Reach.NOTHING, "labels: no cached answer holds them"),
    ("PUT", r"patients/[^/]+/protected", Reach.NOTHING, "protection: in no cached answer"),
    ("POST", _ID + r"/(archive|media|export)", Reach.NOTHING, "reads the resource"),
    ("POST", r"instances", Reach.NOTHING, "upload: the stored-instance callback sees it"),
    ("POST", r"dicom-web/studies(/[^/]+)?", Reach.NOTHING,
     "STOW-RS: the stored-instance callback sees it"),
    ("POST", r"tools/(find|lookup|count-resources|create-archive|create-media"
             r"|create-media-extended|create-dicom|bulk-content)", Reach.NOTHING,
     "a read, or an upload that the stored-instance callback sees"),
    ("POST", r"(modalities|peers)/[^/]+/(echo|find|find-patient|find-study|find-series"
             r"|find-instance|find-worklist|query|store|store-straight|move|get|system)",
     Reach.NOTHING, "network: retrieved instances go through the stored-instance callback"),
    ("POST PUT DELETE", r"queries/.*", Reach.NOTHING,
     "query and retrieve: retrieved instances go through the stored-instance callback"),
    ("PUT DELETE", r"(modalities|peers)/[^/]+", Reach.NOTHING, "network settings"),
    ("POST DELETE", r"jobs/[^/]+(/(cancel|pause|resume|resubmit))?", Reach.NOTHING,
     "job control: what a job changes, change events report"),
    ("DELETE", r"(changes|exports)", Reach.NOTHING, "the change log"),
    ("PUT", r"tools/(log-level.*|metrics|metrics-prometheus)", Reach.NOTHING, "logging"),
)
_COMPILED_WRITES = tuple((methods.split(), re.compile(pattern), reach, reason)
                         for methods, pattern, reach, reason in _WRITES)


def write_effect(method: str, uri: str) -> WriteEffect:
    """What a request may change among stored answers, from its method and URI alone."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return WriteEffect(Reach.NOTHING, "a read")
    path = uri.strip("/")
    for methods, pattern, reach, reason in _COMPILED_WRITES:
        if method not in methods:
            continue
        found = pattern.fullmatch(path)
        if found is None:
            continue
        resource = found.groupdict()
        if reach is Reach.NOTHING or not resource.get("id"):
            return WriteEffect(reach, reason)
        return WriteEffect(reach, reason, Level(resource["level"]), resource["id"])
    return WriteEffect(Reach.EVERYTHING, "%s %s: its effect is unknown" % (method, uri))
