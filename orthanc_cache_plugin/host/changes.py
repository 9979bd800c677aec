"""How this node learns of changes that LastUpdate does not show (see freshness/versions.py).

One of the three modules importing ``orthanc`` (see :mod:`.api`): it
registers the change, incoming-request and stored-instance callbacks.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import orthanc

from ..cluster.bus import RedisBus
from ..core.data import GenerationUpdate
from ..core.routes import Level
from ..freshness.versions import (
    GRACE,
    LOGGED_HIDDEN_CHANGES,
    MARKER_METADATA,
    AnnouncedDeletions,
    Generations,
    Reach,
    RememberedUpdates,
    WriteEffect,
    write_effect,
)
from ..store.facade import Store
from .api import (
    error_without_prefix,
    get,
    get_after_plugins,
    get_json,
    info,
    touch_and_undo,
    warn,
)
from .thread_states import keep_thread_state


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


_PARENT_KEYS = (("ParentSeries", Level.SERIES), ("ParentStudy", Level.STUDY),
                ("ParentPatient", Level.PATIENT))
_CHILD_KEYS = {Level.PATIENT: ("Studies", Level.STUDY), Level.STUDY: ("Series", Level.SERIES),
               Level.SERIES: ("Instances", Level.INSTANCE)}
#: orthanc.ResourceType values, as change events and /changes give them.
_LEVELS = {0: Level.PATIENT, 1: Level.STUDY, 2: Level.SERIES, 3: Level.INSTANCE}
_LEVEL_NAMES = {"Patient": Level.PATIENT, "Study": Level.STUDY, "Series": Level.SERIES,
                "Instance": Level.INSTANCE}


class Lineage:
    """Resources above and below a resource, asked of Orthanc.

    A resource's parent never changes: parents are remembered (a bounded
    dict, emptied when full).
    """

    LIMIT = 100000

    def __init__(self) -> None:
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
        description = _describe(level, resource_id)
        for key, parent_level in _PARENT_KEYS:
            if isinstance(description.get(key), str):
                if len(self._parents) >= self.LIMIT:
                    self._parents.clear()
                parent = (parent_level, description[key])
                self._parents[resource_id] = parent
                return parent
        return None

    @staticmethod
    def descendants(level: Level, resource_id: str) -> List[str]:
        """The ids of every resource below, one request per resource that has children."""
        found: List[str] = []
        pending = [(level, resource_id)]
        while pending:
            level, resource_id = pending.pop()
            if level not in _CHILD_KEYS:
                continue
            key, child_level = _CHILD_KEYS[level]
            children = [child for child in _describe(level, resource_id).get(key, [])
                        if isinstance(child, str)]
            found += children
            pending += [(child_level, child) for child in children]
        return found


def _describe(level: Level, resource_id: str) -> Dict[str, Any]:
    """Orthanc's description of a resource (``/studies/{id}``...); empty when unknown."""
    found = get("/%s/%s" % (level.value, resource_id))
    if not isinstance(found, bytes):
        return {}
    description = json.loads(found)
    return description if isinstance(description, dict) else {}


class ChangeWatch:
    """Keeps this node's generations up to date (see freshness/versions.py).

    Three sources: the incoming-request filter announces HTTP writes before
    they run, for the resources each one touches (:func:`.freshness.write_effect`);
    Orthanc's change events report changes after they happen; a thread polls
    the shared change log for what other nodes changed.  Deletions, which
    Orthanc does not log, are logged by writing and removing a marker metadata
    (before the deletion on the resource itself, after it on its parent), so
    other nodes see them too.

    With a store that nodes share (Redis), a fourth: every change of the
    generations is published to the other nodes, and theirs merged
    (:mod:`..cluster.bus`); markers are then written only when a publication
    failed.
    """

    #: Seconds between two reads of /changes (bounds what other nodes miss),
    #: which is also when metrics are published.
    POLL = 0.25
    #: Seconds at most that an announced deletion keeps LastUpdates from being remembered
    #: (until its DELETED event).
    DELETION_PAUSE = 300.0
    #: Seconds at most that Orthanc's start waits for the first attempt to join the other
    #: nodes sharing the store (an attempt fails within a few RedisTimeouts).
    JOIN_WAIT = 2.0
    def __init__(self, store: Store, on_tick: Callable[[], None], admin_prefix: str = "",
                 housekeeper: bool = False):
        self._store = store
        self._on_tick = on_tick
        self._admin_prefix = admin_prefix.rstrip("/")
        self.generations = Generations.load(store.get_value("generations")
                                            or store.get_value("generation"))
        #: None until every change that moves LastUpdate is sure to be seen.
        self.updates: Optional[RememberedUpdates] = None
        self.lineage = Lineage()
        #: Deletions announced by the filter, to recognize their DELETED events.
        self._deletions = AnnouncedDeletions()
        #: Whether other nodes may share Orthanc's index, and so need deletions logged
        #: in /changes: only with a database backend plugin (see start()).
        self.index_shared = True
        #: Whether Orthanc's Housekeeper may rewrite files and main tags (see
        #: _watch_housekeeper); until start() has looked, nothing settles.
        self.housekeeper = housekeeper
        self._housekeeping = False
        self._housekeeper_seen = False
        if housekeeper:
            self.generations.hold(None)
        #: Hears and tells the other nodes sharing the store; until it has joined them,
        #: nothing settles (their changes are unknown).
        shared = store.shared_connection
        self._bus = RedisBus(shared, self._heard, self._lost, self._joined) \
            if shared is not None else None
        self._hearing = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cache-changes", daemon=True)
        if self._bus is not None:
            self.generations.hold(None, _CLUSTER)
            # Joined before Orthanc's HTTP server answers (it needs Redis, not Orthanc's
            # REST API): a load balancer sends requests as soon as it does, and until the
            # node has joined they would be answered without the store.
            if not self._bus.start(self.JOIN_WAIT):
                warn("the other nodes' changes are not heard yet through %s: answers are "
                     "not served from the store until then" % store.location)

    def _save(self) -> None:
        self._store.set_value("generations", self.generations.dump())

    def _changed(self, update: GenerationUpdate) -> bool:
        """Keep what changed, and tell the other nodes sharing the store; whether they
        were told (False without a shared store)."""
        self._save()
        return self._bus is not None and bool(update) and self._bus.publish(update)

    def _heard(self, update: GenerationUpdate) -> None:
        """Another node's change (on the bus's thread)."""
        if self.generations.merge(update):
            self._save()
        self.forget_updates()

    def _lost(self, reason: str) -> None:
        """Other nodes' changes may go unheard: nothing settles until the bus joins again."""
        self.generations.hold(None, _CLUSTER)
        self.forget_updates()
        if self._hearing:
            warn("cannot hear the other nodes' changes through %s (%s): answers are not "
                 "served from the store until it works again" % (self._store.location, reason))
        self._hearing = False

    def _joined(self, shared: GenerationUpdate) -> bool:
        """Subscribed: take what the nodes know, tell them what this node knows (changes
        it made while it could not tell them), then serve from the store again."""
        self.generations.merge(shared)
        if not self.generations.base:  # the first node: entries of no earlier base match
            self.generations.advance_all(_utcnow())
        assert self._bus is not None
        if not self._bus.publish(self.generations.everything()):
            return False
        self._save()
        self.forget_updates()
        self.generations.release(_CLUSTER)
        info("hears the other nodes' changes through %s" % self._store.location)
        self._hearing = True
        return True

    def instance_stored(self) -> None:
        """A new instance moves LastUpdates: read them again, here and on the other nodes."""
        self.forget_updates()
        if self._bus is not None and self._hearing:
            self._bus.tell_forget()

    def forget_updates(self) -> None:
        """Something may have moved a LastUpdate: stop trusting the remembered ones."""
        if self.updates is not None:
            self.updates.forget_all()

    def before_write(self, method: str, uri: str) -> None:
        """Announce what an HTTP write may change, before Orthanc runs it."""
        prefix = self._admin_prefix
        if prefix and (uri == prefix or uri.startswith(prefix + "/")):
            return  # the plugin's own admin API changes nothing in Orthanc
        effect = write_effect(method, uri)
        if effect.reach is Reach.NOTHING:
            return  # reads, uploads (seen by watch_stored_instances), network...
        self.forget_updates()
        if effect.level is None:
            update = self.generations.announce_all(_utcnow())
            info("%s: every stored answer outdated" % effect.reason)
        else:
            touched = self._touched_by(effect)
            update = self.generations.announce(touched, _utcnow())
            info("%s %s (%s): %d resources touched" % (method, uri, effect.reason, len(touched)))
        told = self._changed(update)
        if effect.reach is Reach.DELETION and effect.level is not None and self.index_shared \
                and not told:
            _log_marker("/%s/%s" % (effect.level.value, effect.resource_id))

    def _touched_by(self, effect: WriteEffect) -> List[str]:
        """The resource and its ancestors; for a reconstruction, the resources below too.

        The resources below a deleted one are not touched (their answers become 404):
        they are recorded, to recognize their DELETED events, and no LastUpdate is
        remembered until the deletion is reported, so that none read before it
        commits outlives it.  A deletion of an unknown resource (Orthanc answers
        404) is neither recorded nor paused."""
        assert effect.level is not None
        ancestors = self.lineage.ancestors(effect.level, effect.resource_id)
        touched = [effect.resource_id] + ancestors
        if effect.reach is Reach.SUBTREE:
            touched += self.lineage.descendants(effect.level, effect.resource_id)
        elif effect.reach is Reach.DELETION and _describe(effect.level, effect.resource_id):
            below = self.lineage.descendants(effect.level, effect.resource_id)
            self._deletions.announce(effect.resource_id, [effect.resource_id] + below,
                                     ancestors)
            if self.updates is not None:
                self.updates.pause(effect.resource_id, self.DELETION_PAUSE)
        return touched

    def after_change(self, change_type: int, level: int, resource_id: str) -> None:
        """A change that LastUpdate does not show has happened (a change event)."""
        now = _utcnow()
        if change_type == orthanc.ChangeType.DELETED:
            deletion = self._deletions.match(resource_id, time.monotonic())
            kind = _LEVELS.get(level)
            if deletion is None and kind is not None and _describe(kind, resource_id):
                # It exists again: an overwrite (OverwriteInstances) deletes the instance,
                # and the parents it empties, and stores it anew in one transaction.  What
                # changed is the resource and its ancestors, as for a metadata write.
                self._changed(self._advance_resource(kind, resource_id, now))
            elif deletion is None:  # not announced (Lua, a job, recycling): reach unknown
                self._changed(self.generations.advance_all(now))
                info("deletion of %s that no request announced: every stored answer "
                     "outdated" % resource_id)
            else:
                deleted_id, ancestors = deletion
                if resource_id != deleted_id:
                    # Below the deleted resource, or a parent it emptied: gone, and every
                    # remembered LastUpdate was forgotten on this event.  Nothing to save,
                    # which matters for a study of thousands of instances.
                    return
                if self.updates is not None:
                    self.updates.resume(deleted_id)
                told = self._changed(self.generations.advance([resource_id] + ancestors, now))
                if self.index_shared and not told:
                    _log_marker_above(level, ancestors)
        else:  # metadata or attachment of an existing resource
            self._changed(self._advance_resource(_LEVELS.get(level), resource_id, now))

    def _advance_resource(self, level: Optional[Level], resource_id: str,
                          now: datetime) -> GenerationUpdate:
        if level is None:
            return self.generations.advance_all(now)
        return self.generations.advance(
            [resource_id] + self.lineage.ancestors(level, resource_id), now)

    def start(self) -> None:
        """Start polling (Orthanc accepts REST calls only once started).

        With Orthanc's own SQLite index no other node shares the database:
        deletions are then not logged, and /changes stays what Orthanc alone
        writes (Orthanc's test_changes_2 counts them).
        """
        system = get_json("/system")
        self.index_shared = system.get("DatabaseBackendPlugin") is not None
        if self.housekeeper:
            self._watch_housekeeper()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._bus is not None:
            self._bus.stop()
        if self._thread.is_alive():
            self._thread.join(5)

    def _poll(self) -> None:
        saved = self._store.get_value("changes-seen")
        seen: Optional[int] = int(saved) if saved and saved.isdigit() else None
        if seen is None and self._bus is None:
            # What happened while we were not watching is unknown.  With a shared store,
            # the other nodes were watching: joining them gives what they know.
            self._changed(self.generations.advance_all(_utcnow()))
        failing = False
        while not self._stopping.wait(self.POLL):
            try:
                self._on_tick()
                if self.housekeeper:
                    self._watch_housekeeper()
                if seen is None:
                    seen = get_json("/changes?last")["Last"]
                    self._store.set_value("changes-seen", str(seen))
                seen = self._read_changes(seen)
                failing = False
            except Exception as error:  # the watch must outlive any failure
                if not failing:
                    warn("cannot follow /changes (%s: %s): nothing is stored until it works "
                          "again" % (type(error).__name__, error))
                failing = True
                # Keeps every version unsettled (a new base each time).
                self._changed(self.generations.advance_all(_utcnow()))
                self.forget_updates()

    def _read_changes(self, seen: int) -> int:
        """Advance the generations of the resources that /changes shows changed in ways
        LastUpdate does not show; forget remembered LastUpdates after any change (another
        node's new instance moves them)."""
        changes = get_json("/changes?since=%d&limit=1000" % seen)
        # Orthanc drops the logged changes of a resource when it is deleted: a deletion
        # that emptied a patient (no parent left for the marker) shows only as ``Last``
        # moving, and a LastUpdate remembered since is then of a deleted resource.
        if changes["Changes"] or changes["Last"] != seen:
            self.forget_updates()
        hidden = [change for change in changes["Changes"]
                  if change["ChangeType"] in LOGGED_HIDDEN_CHANGES]
        touched: List[str] = []
        for change in hidden:
            level = _LEVEL_NAMES.get(change.get("ResourceType", ""))
            resource_id = str(change.get("ID", ""))
            touched += [resource_id] + (self.lineage.ancestors(level, resource_id)
                                        if level is not None else [])
        if any(_LEVEL_NAMES.get(change.get("ResourceType", "")) is None for change in hidden):
            self._changed(self.generations.advance_all(_utcnow()))
        elif touched:
            self._changed(self.generations.advance(touched, _utcnow()))
        if changes["Last"] != seen:
            self._store.set_value("changes-seen", str(changes["Last"]))
        last: int = changes["Last"]
        return last


    def _watch_housekeeper(self) -> None:
        """Keep versions unsettled while Orthanc's Housekeeper works; outdate everything
        once it has finished a processing.

        The Housekeeper (Orthanc 1.11+) reconstructs studies after a change of
        ``StorageCompression``, ``IngestTranscoding`` or the main DICOM tags:
        it rewrites files and tags but fires no event, moves no ``LastUpdate``
        and logs nothing in /changes.  Its status tells whether it is
        processing, and which configuration it last finished processing: a
        processing that begins and ends between two looks still changes the
        latter.  Each look holds versions for GRACE, covering a processing that
        begins just after it.
        """
        now = _utcnow()
        # A plugin's route: not in RestApiGet's built-in API.
        found = get_after_plugins("/plugins/housekeeper/status")
        if not isinstance(found, bytes):  # not loaded after all
            self.housekeeper = False
            self.generations.hold(now)
            return
        status = json.loads(found)
        working = status.get("CurrentlyProcessingConfiguration") is not None
        if working or not self._housekeeper_seen:
            self.generations.hold(now + GRACE)
        self._housekeeper_seen = True
        finished = json.dumps(status.get("LastProcessedConfiguration"), sort_keys=True)
        if finished != self._store.get_value("housekeeper-finished"):
            self._changed(self.generations.advance_all(now))
            self._store.set_value("housekeeper-finished", finished)
        if working != self._housekeeping:
            warn("Orthanc's Housekeeper %s: %s" % (
                ("is rewriting files", "answers are not served from the store until it is done")
                if working else ("is done", "every answer stored before is outdated")))
            self._housekeeping = working


#: The reason of the hold while the other nodes' changes may go unheard.
_CLUSTER = "the other nodes' changes may go unheard"

#: The levels above each change event's level, nearest first.
_LEVELS_ABOVE = {3: (Level.SERIES, Level.STUDY, Level.PATIENT),
                 2: (Level.STUDY, Level.PATIENT), 1: (Level.PATIENT,)}


def _log_marker_above(level: int, ancestors: List[str]) -> None:
    """Log a deletion on the nearest ancestor that it left (the others went with it)."""
    for ancestor, ancestor_level in zip(ancestors, _LEVELS_ABOVE.get(level, ())):
        if _log_marker("/%s/%s" % (ancestor_level.value, ancestor)):
            return


def _log_marker(resource: str) -> bool:
    """Put a change of ``resource`` in /changes, leaving nothing behind; False when the
    resource is gone (nothing of it can be stale)."""
    return touch_and_undo("%s/metadata/%d" % (resource, MARKER_METADATA))


#: Changes that leave LastUpdate as it is (a child's deletion before Orthanc 1.12.1).
HIDDEN_CHANGE_EVENTS = (
    orthanc.ChangeType.DELETED,
    orthanc.ChangeType.UPDATED_METADATA,
    orthanc.ChangeType.UPDATED_ATTACHMENT,
)

_HTTP_METHODS = {
    orthanc.HttpMethod.GET: "GET", orthanc.HttpMethod.POST: "POST",
    orthanc.HttpMethod.PUT: "PUT", orthanc.HttpMethod.DELETE: "DELETE",
}


#: Every callable handed to Orthanc, referenced until the process ends.  When
#: Orthanc stops, the Python plugin 7.1 drops its references to callbacks where
#: Python 3.14 cannot free them: a callback that nothing else references (a
#: closure, a bound method) is then freed there, and Orthanc ends with a
#: segmentation fault or a corrupted heap instead of exiting cleanly.
_KEPT: List[Callable[..., Any]] = []

_Callback = TypeVar("_Callback", bound=Callable[..., Any])


def keep_alive(callback: _Callback) -> _Callback:
    """``callback``, referenced for good: hand only such callables to Orthanc."""
    _KEPT.append(callback)
    return callback


def _register_first(name: str, ours: Callable[[List[Callable[..., Any]]], Callable[..., Any]],
                    consequence: str, on_chained: Callable[[], None] = lambda: None) -> bool:
    """Register our callback with ``orthanc.<name>``, of which the Python plugin accepts
    one per process, and let a startup script register its own after ours.

    ``ours(chained)`` builds our callback; ``chained`` then holds the script's
    callback, if any, for ours to call; ``on_chained()`` is called when the script
    registers it.  False (with a warning saying the ``consequence``) when a script
    registered one before us.
    """
    chained: List[Callable[..., Any]] = []
    try:
        getattr(orthanc, name)(keep_alive(ours(chained)))
    except RuntimeError as error:
        warn("cannot register orthanc.%s (%s): call it after enable_cache_plugin() in your "
             "script; until then, %s" % (name, error, consequence))
        return False

    def chain(callback: Callable[..., Any]) -> None:
        chained[:] = [callback]
        on_chained()

    setattr(orthanc, name, chain)
    return True


#: Change events, as Orthanc reported them, waiting for the delivery thread.
_events: queue.SimpleQueue[Optional[Tuple[int, int, str]]] = queue.SimpleQueue()


def _enqueue_change(change_type: int, level: int, resource_id: str) -> None:
    """What Orthanc calls for each change: queue it and return at once.

    The Python plugin 7.1 runs its change callback on a thread that it stops
    when Orthanc stops; a callback still busy then (any work, a closure) made
    Orthanc 1.13.0 end with a corrupted heap or a segmentation fault in most
    stops.  A module function that only queues does not.
    """
    _events.put((change_type, level, resource_id))


def stop_watching_changes() -> None:
    """End the delivery thread once the events queued before are delivered."""
    _events.put(None)


def watch_changes(on_change: Callable[[int, int, str], None]) -> bool:
    """Deliver Orthanc's change events to ``on_change``, in order, on a thread of the
    plugin; a callback that a startup script registers after enable_cache_plugin()
    is called after it, for every event.  False when a script registered one
    before: the cache cannot work without events."""
    def build(chained: List[Callable[..., Any]]) -> Callable[[int, int, str], None]:
        def deliver() -> None:
            while True:
                event = _events.get()
                if event is None:
                    return
                for callback in [on_change] + chained[:1]:
                    try:
                        callback(*event)
                    except Exception as error:  # as the Python plugin does: log, go on
                        # (in its words, without the cache's prefix: it may be the script's)
                        error_without_prefix("error in the change callback %s: %s: %s" % (
                            getattr(callback, "__qualname__", callback),
                            type(error).__name__, error))
                if event[0] == orthanc.ChangeType.ORTHANC_STOPPED:
                    return

        threading.Thread(target=deliver, name="cache-events", daemon=True).start()
        return _enqueue_change

    return _register_first("RegisterOnChangeCallback", build,
                           "the cache plugin cannot see changes and stays off")


def watch_writes(changes: ChangeWatch,
                 on_script_filter: Callable[[], None] = lambda: None) -> bool:
    """Announce HTTP writes before Orthanc runs them, through the incoming-request filter.

    A filter that a startup script registers after enable_cache_plugin() is
    called by ours, and its answer decides; ``on_script_filter()`` is called when
    it is registered.  False when ours cannot be registered (a script registered
    one before).
    """
    def build(chained: List[Callable[..., Any]]) -> Callable[..., bool]:
        def on_incoming_request(uri: str, **request: Any) -> bool:
            keep_thread_state()
            allowed = bool(chained[0](uri, **request)) if chained else True
            method = _HTTP_METHODS.get(request.get("method"), "")
            if allowed and method != "GET":
                changes.before_write(method, uri)
            return allowed
        return on_incoming_request

    return _register_first("RegisterIncomingHttpRequestFilter", build,
                           "changes are seen through Orthanc's change events, a moment after "
                           "they happen", on_script_filter)


def notice_filters(on_registered: Callable[[], None]) -> None:
    """Call ``on_registered()`` when a startup script registers an incoming-request filter
    (once registered, as without the plugin): for when the plugin has none of its own."""
    register = getattr(orthanc, "RegisterIncomingHttpRequestFilter", None)
    if register is None:
        return

    def registering(callback: Callable[..., Any]) -> None:
        register(callback)  # raises as it would without the plugin
        on_registered()

    orthanc.RegisterIncomingHttpRequestFilter = registering


def watch_stored_instances(changes: ChangeWatch) -> None:
    """Remember resources' LastUpdate between changes, once every stored instance is seen.

    Orthanc calls the stored-instance callback in the thread that stored the
    instance, before it answers the upload or the C-STORE: remembered values
    are forgotten before anyone can learn of the new instance.  HTTP
    deletions must be watched too (:func:`watch_writes`): a deleted resource's
    remembered value is forgotten before the deletion, and its answers are
    not trusted by version until the DELETED event.  A callback that a
    startup script registers after enable_cache_plugin() is called by ours.
    """
    def build(chained: List[Callable[..., Any]]) -> Callable[..., Any]:
        def on_stored_instance(dicom: Any, instance_id: str) -> Any:
            keep_thread_state()
            changes.instance_stored()
            return chained[0](dicom, instance_id) if chained else None
        return on_stored_instance

    if _register_first("RegisterOnStoredInstanceCallback", build,
                       "every request asks Orthanc for its resource's LastUpdate"):
        changes.updates = RememberedUpdates()
