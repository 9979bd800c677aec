"""How this node keeps its generations up to date: the decisions of
:mod:`..freshness.changes`, carried out.

* :class:`ChangeWatch` holds the generations, keeps them in the store, and
  carries out each decision (asking Orthanc's :class:`Index` for ancestors
  and descendants);
* :class:`ClusterSync` tells the nodes that share a Redis store of each
  change, and merges theirs (:mod:`..cluster.bus`);
* :class:`ChangePoller` reads Orthanc's change log, ``/changes``, for what
  other nodes sharing Orthanc's index changed;
* :class:`HousekeeperWatch` looks at Orthanc's Housekeeper;
* :class:`Ticker` is the one thread that runs the periodic work.

Orthanc itself is reached only through the :class:`Index` port (the host
layer implements it), so all of this runs in unit tests with a fake index.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from ..cluster.bus import RedisBus
from ..core.data import GenerationUpdate
from ..core.routes import Level
from ..freshness.changes import (
    Decision,
    Event,
    Marker,
    Step,
    marker_places,
    on_event,
    on_housekeeper,
    on_logged,
    on_write,
)
from ..freshness.versions import AnnouncedDeletions, Generations, RememberedUpdates
from ..store.facade import Store
from ..store.redis_connection import RedisConnection

Log = Callable[[str], None]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Index(Protocol):
    """What the change watch asks of Orthanc's index (implemented by the host layer)."""

    def describe(self, level: Level, resource_id: str) -> Dict[str, Any]:
        """Orthanc's description of a resource (``/studies/{id}``...); empty when unknown."""

    def changes(self, since: int, limit: int) -> Dict[str, Any]:
        """A page of ``/changes`` (``Changes``, ``Last``)."""

    def last_change(self) -> int:
        """The number of the last change logged."""

    def housekeeper_status(self) -> Optional[Dict[str, Any]]:
        """The Housekeeper plugin's status; None when it is not loaded."""

    def log_marker(self, level: Level, resource_id: str) -> bool:
        """Put a change of the resource in /changes, leaving nothing behind; False when
        the resource is gone."""

    def shares_database(self) -> bool:
        """Whether other nodes may share the index (a database backend plugin)."""


_PARENT_KEYS = (("ParentSeries", Level.SERIES), ("ParentStudy", Level.STUDY),
                ("ParentPatient", Level.PATIENT))
_CHILD_KEYS = {Level.PATIENT: ("Studies", Level.STUDY), Level.STUDY: ("Series", Level.SERIES),
               Level.SERIES: ("Instances", Level.INSTANCE)}


class Lineage:
    """Resources above and below a resource, asked of the index.

    A resource's parent never changes: parents are remembered (a bounded
    dict, emptied when full).
    """

    LIMIT = 100000

    def __init__(self, index: Index) -> None:
        self._index = index
        self._parents: Dict[str, Tuple[Level, str]] = {}

    def ancestors(self, level: Level, resource_id: str) -> List[str]:
        """The ids of the resource's parent, grandparent...; those found while it exists."""
        found: List[str] = []
        while level is not Level.PATIENT:
            parent = self._parents.get(resource_id)
            if parent is None:
                parent = self._ask_parent(level, resource_id)
                if parent is None:
                    break
            level, resource_id = parent
            found.append(resource_id)
        return found

    def _ask_parent(self, level: Level, resource_id: str) -> Optional[Tuple[Level, str]]:
        description = self._index.describe(level, resource_id)
        for key, parent_level in _PARENT_KEYS:
            if isinstance(description.get(key), str):
                if len(self._parents) >= self.LIMIT:
                    self._parents.clear()
                parent = (parent_level, description[key])
                self._parents[resource_id] = parent
                return parent
        return None

    def descendants(self, level: Level, resource_id: str) -> List[str]:
        """The ids of every resource below, one request per resource that has children."""
        found: List[str] = []
        pending = [(level, resource_id)]
        while pending:
            level, resource_id = pending.pop()
            if level not in _CHILD_KEYS:
                continue
            key, child_level = _CHILD_KEYS[level]
            children = [child for child in self._index.describe(level, resource_id).get(key, [])
                        if isinstance(child, str)]
            found += children
            pending += [(child_level, child) for child in children]
        return found


class ChangeWatch:
    """Keeps this node's generations up to date (see freshness/versions.py).

    The incoming-request filter announces HTTP writes before they run
    (:meth:`before_write`); Orthanc's change events report changes after
    they happen (:meth:`after_change`); :class:`ChangePoller` and
    :class:`HousekeeperWatch` report what the change log and the
    Housekeeper show.  Deletions, which Orthanc does not log, are logged by
    writing and removing a marker metadata (before the deletion on the
    resource itself, after it on its parent), so other nodes sharing the
    index see them too, unless :class:`ClusterSync` told them.
    """

    #: Seconds at most that an announced deletion keeps LastUpdates from being remembered
    #: (until its DELETED event).
    DELETION_PAUSE = 300.0

    def __init__(self, store: Store, index: Index, info: Log, warn: Log,
                 admin_prefix: str = ""):
        self._store = store
        self._index = index
        self._info = info
        self._warn = warn
        self._admin_prefix = admin_prefix
        self.generations = Generations.load(store.get_value("generations")
                                            or store.get_value("generation"))
        #: None until every change that moves LastUpdate is sure to be seen.
        self.updates: Optional[RememberedUpdates] = None
        self.lineage = Lineage(index)
        #: Deletions announced by the filter, to recognize their DELETED events.
        self._deletions = AnnouncedDeletions()
        #: Whether other nodes may share Orthanc's index, and so need deletions logged
        #: in /changes: only with a database backend plugin (learnt by start()).
        self.index_shared = True
        #: Tell the other nodes sharing the store of a change, and to forget remembered
        #: LastUpdates (set by ClusterSync; without one, no other node shares it).
        self.publish: Callable[[GenerationUpdate], bool] = lambda update: False
        self.tell_forget: Callable[[], None] = lambda: None

    def start(self) -> None:
        """Learn what Orthanc's index is (Orthanc accepts REST calls only once started).

        With Orthanc's own SQLite index no other node shares the database:
        deletions are then not logged, and /changes stays what Orthanc alone
        writes (Orthanc's test_changes_2 counts them).
        """
        self.index_shared = self._index.shares_database()

    def save(self) -> None:
        self._store.set_value("generations", self.generations.dump())

    def changed(self, update: GenerationUpdate) -> bool:
        """Keep what changed, and tell the other nodes sharing the store; whether they
        were told (False without a shared store)."""
        self.save()
        return bool(update) and self.publish(update)

    def forget_updates(self) -> None:
        """Something may have moved a LastUpdate: stop trusting the remembered ones."""
        if self.updates is not None:
            self.updates.forget_all()

    def instance_stored(self) -> None:
        """A new instance moves LastUpdates: read them again, here and on the other nodes."""
        self.forget_updates()
        self.tell_forget()

    def unsure(self) -> None:
        """Changes may have gone unseen: every stored answer is outdated, and stays
        unsettled while this lasts (a new base each time)."""
        self.changed(self.generations.advance_all(_utcnow()))
        self.forget_updates()

    def before_write(self, method: str, uri: str) -> None:
        """Announce what an HTTP write may change, before Orthanc runs it."""
        decision = on_write(method, uri, self._admin_prefix)
        if decision.step is not Step.IGNORE:
            self.carry_out(decision, "%s %s" % (method, uri))

    def after_change(self, event: Event, level: Optional[Level], resource_id: str) -> None:
        """A change that LastUpdate does not show has happened (a change event)."""
        announced = self._deletions.match(resource_id, time.monotonic()) \
            if event is Event.DELETED else None
        decision = on_event(event, level, resource_id, announced, exists=lambda: (
            level is not None and bool(self._index.describe(level, resource_id))))
        if decision.step is not Step.IGNORE:
            self.carry_out(decision, "%s of %s" % (event.value, resource_id))

    def carry_out(self, decision: Decision, subject: str) -> None:
        """Do what ``decision`` says (``subject``: what it is about, for the log)."""
        if decision.forget_updates:
            self.forget_updates()
        if decision.resume is not None and self.updates is not None:
            self.updates.resume(decision.resume)
        now = _utcnow()
        if decision.step is Step.ANNOUNCE_ALL:
            told = self.changed(self.generations.announce_all(now))
            self._info("%s (%s): every stored answer outdated" % (subject, decision.reason))
        elif decision.step is Step.ADVANCE_ALL:
            told = self.changed(self.generations.advance_all(now))
            self._info("%s (%s): every stored answer outdated" % (subject, decision.reason))
        elif decision.step is Step.IGNORE:
            return
        else:
            touched = list(decision.known) + self._touched_by(decision)
            if decision.step is Step.ANNOUNCE:
                told = self.changed(self.generations.announce(touched, now))
            else:
                told = self.changed(self.generations.advance(touched, now))
            self._info("%s (%s): %d resources touched" % (subject, decision.reason,
                                                          len(touched)))
        if decision.marker is not Marker.NONE and self.index_shared and not told:
            self._log_marker(decision)

    def _touched_by(self, decision: Decision) -> List[str]:
        """The targets and their ancestors; for a reconstruction, the resources below too.

        The resources below a deleted one are not touched (their answers become 404):
        they are recorded, to recognize their DELETED events, and no LastUpdate is
        remembered until the deletion is reported, so that none read before it
        commits outlives it.  A deletion of an unknown resource (Orthanc answers
        404) is neither recorded nor paused."""
        touched: List[str] = []
        for target in decision.targets:
            ancestors = self.lineage.ancestors(target.level, target.resource_id)
            touched += [target.resource_id] + ancestors
            if decision.below:
                touched += self.lineage.descendants(target.level, target.resource_id)
            elif decision.deletion and self._index.describe(target.level, target.resource_id):
                below = self.lineage.descendants(target.level, target.resource_id)
                self._deletions.announce(target.resource_id, [target.resource_id] + below,
                                         ancestors)
                if self.updates is not None:
                    self.updates.pause(target.resource_id, self.DELETION_PAUSE)
        return touched

    def _log_marker(self, decision: Decision) -> None:
        for level, resource_id in marker_places(decision):
            if self._index.log_marker(level, resource_id):
                return


#: The reason of the hold while the other nodes' changes may go unheard.
_CLUSTER = "the other nodes' changes may go unheard"


class ClusterSync:
    """Tells the nodes that share a Redis store of each change of the generations,
    and merges theirs; until it has joined them, nothing settles (their changes
    are unknown), and markers are written only when a publication failed."""

    #: Seconds at most that Orthanc's start waits for the first attempt to join the other
    #: nodes sharing the store (an attempt fails within a few RedisTimeouts).
    JOIN_WAIT = 2.0

    def __init__(self, watch: ChangeWatch, shared: RedisConnection, location: str, info: Log,
                 warn: Log):
        self._watch = watch
        self._location = location
        self._info = info
        self._warn = warn
        self._hearing = False
        self._bus = RedisBus(shared, self._heard, self._lost, self._joined)
        watch.generations.hold(None, _CLUSTER)
        watch.publish = self._bus.publish
        watch.tell_forget = self._tell_forget
        # Joined before Orthanc's HTTP server answers (it needs Redis, not Orthanc's REST
        # API): a load balancer sends requests as soon as it does, and until the node has
        # joined they would be answered without the store.
        if not self._bus.start(self.JOIN_WAIT):
            warn("the other nodes' changes are not heard yet through %s: answers are not "
                 "served from the store until then" % self._location)

    def stop(self) -> None:
        self._bus.stop()

    def _tell_forget(self) -> None:
        if self._hearing:
            self._bus.tell_forget()

    def _heard(self, update: GenerationUpdate) -> None:
        """Another node's change (on the bus's thread)."""
        if self._watch.generations.merge(update):
            self._watch.save()
        self._watch.forget_updates()

    def _lost(self, reason: str) -> None:
        """Other nodes' changes may go unheard: nothing settles until the bus joins again."""
        self._watch.generations.hold(None, _CLUSTER)
        self._watch.forget_updates()
        if self._hearing:
            self._warn("cannot hear the other nodes' changes through %s (%s): answers are not "
                       "served from the store until it works again" % (self._location, reason))
        self._hearing = False

    def _joined(self, shared: GenerationUpdate) -> bool:
        """Subscribed: take what the nodes know, tell them what this node knows (changes
        it made while it could not tell them), then serve from the store again."""
        generations = self._watch.generations
        generations.merge(shared)
        if not generations.base:  # the first node: entries of no earlier base match
            generations.advance_all(_utcnow())
        if not self._bus.publish(generations.everything()):
            return False
        self._watch.save()
        self._watch.forget_updates()
        generations.release(_CLUSTER)
        self._info("hears the other nodes' changes through %s" % self._location)
        self._hearing = True
        return True


class ChangePoller:
    """Reads Orthanc's change log for what other nodes sharing the index changed in
    ways LastUpdate does not show, and for any change at all (another node's new
    instance moves LastUpdates)."""

    #: Changes read at most at once.
    PAGE = 1000

    def __init__(self, watch: ChangeWatch, store: Store, index: Index, clustered: bool):
        self._watch = watch
        self._store = store
        self._index = index
        saved = store.get_value("changes-seen")
        self._seen: Optional[int] = int(saved) if saved and saved.isdigit() else None
        if self._seen is None and not clustered:
            # What happened while we were not watching is unknown.  With a shared store,
            # the other nodes were watching: joining them gives what they know.
            watch.changed(watch.generations.advance_all(_utcnow()))

    def tick(self) -> None:
        if self._seen is None:
            self._seen = self._index.last_change()
            self._store.set_value("changes-seen", str(self._seen))
        page = self._index.changes(self._seen, self.PAGE)
        last = int(page["Last"])
        self._watch.carry_out(on_logged(page["Changes"], last, self._seen), "/changes")
        if last != self._seen:
            self._store.set_value("changes-seen", str(last))
        self._seen = last


class HousekeeperWatch:
    """Keeps versions unsettled while Orthanc's Housekeeper works, and outdates
    everything once it has finished a processing (see
    :func:`..freshness.changes.on_housekeeper`)."""

    def __init__(self, watch: ChangeWatch, store: Store, index: Index, warn: Log):
        self._watch = watch
        self._store = store
        self._index = index
        self._warn = warn
        self.active = True
        self._seen = False
        self._working = False
        # Until the first look, nothing settles.
        watch.generations.hold(None)

    def tick(self) -> None:
        if not self.active:
            return
        now = _utcnow()
        look = on_housekeeper(self._index.housekeeper_status(), now, self._seen,
                              self._store.get_value("housekeeper-finished"), self._working)
        if not look.loaded:
            self.active = False
            self._watch.generations.hold(now)
            return
        if look.hold_until is not None:
            self._watch.generations.hold(look.hold_until)
        self._seen = True
        if look.advance_all:
            self._watch.changed(self._watch.generations.advance_all(now))
            self._store.set_value("housekeeper-finished", look.finished)
        if look.news is not None:
            self._warn(look.news)
        self._working = look.working


class Ticker:
    """The plugin's one periodic thread: runs ``tasks`` every :attr:`PERIOD` seconds.

    A failure of any task means changes may go unseen: ``on_failure`` is
    called each time (the first with a warning), until a round succeeds.
    """

    #: Seconds between two rounds (bounds what other nodes' changes wait to be seen),
    #: which is also when metrics are published.
    PERIOD = 0.25

    def __init__(self, tasks: Sequence[Callable[[], None]], on_failure: Callable[[], None],
                 warn: Log):
        self._tasks = tasks
        self._on_failure = on_failure
        self._warn = warn
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-changes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        failing = False
        while not self._stopping.wait(self.PERIOD):
            try:
                for task in self._tasks:
                    task()
                failing = False
            except Exception as error:  # the watch must outlive any failure
                if not failing:
                    self._warn("cannot follow /changes (%s: %s): nothing is stored until it "
                               "works again" % (type(error).__name__, error))
                failing = True
                self._on_failure()


class Watchers:
    """Everything that keeps this node's generations up to date, started and stopped
    together: the :class:`ChangeWatch` (``watch``), and around it the cluster sync
    (with a store that nodes share), the change-log poller, the Housekeeper watch
    (when it may run) and the ticker that also runs ``on_tick``."""

    def __init__(self, store: Store, index: Index, on_tick: Callable[[], None], info: Log,
                 warn: Log, admin_prefix: str = "", housekeeper: bool = False):
        self.watch = ChangeWatch(store, index, info, warn, admin_prefix)
        shared = store.shared_connection
        self.sync = ClusterSync(self.watch, shared, store.location, info, warn) \
            if shared is not None else None
        self.poller = ChangePoller(self.watch, store, index, clustered=self.sync is not None)
        self.housekeeper = HousekeeperWatch(self.watch, store, index, warn) \
            if housekeeper else None
        tasks = [on_tick] + ([self.housekeeper.tick] if self.housekeeper else []) \
            + [self.poller.tick]
        self.ticker = Ticker(tasks, self.watch.unsure, warn)

    def start(self) -> None:
        """Once Orthanc accepts REST calls: learn what the index is, look at the
        Housekeeper, and start the ticker."""
        self.watch.start()
        if self.housekeeper is not None:
            self.housekeeper.tick()
        self.ticker.start()

    def stop(self) -> None:
        if self.sync is not None:
            self.sync.stop()
        self.ticker.stop()
