"""How this node learns of changes that LastUpdate does not show (see freshness.py).

With :mod:`.orthanc_adapter`, the only module importing ``orthanc``.
"""

from __future__ import annotations

import json
import queue
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

import orthanc

from .freshness import (
    LOGGED_HIDDEN_CHANGES,
    MARKER_METADATA,
    Generation,
    RememberedUpdates,
    deleted_resource,
    may_change_stored_answers,
)
from .store import Store
from .thread_states import keep_thread_state

LOG_PREFIX = "cache plugin: "


def warn(message: str) -> None:
    orthanc.LogWarning(LOG_PREFIX + message)


def get(uri: str) -> Union[bytes, int]:
    """Orthanc's built-in answer to a GET: the body, or the error code."""
    try:
        answer: bytes = orthanc.RestApiGet(uri)
        return answer
    except orthanc.OrthancException as error:
        return error.args[0] if error.args and isinstance(error.args[0], int) else -1


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ChangeWatch:
    """Keeps this node's store generation up to date.

    Three sources: the incoming-request filter announces HTTP writes before
    they run; Orthanc's change events report changes after they happen; a
    thread polls the shared change log for what other nodes changed.
    Deletions, which Orthanc does not log, are logged by writing and removing
    a marker metadata (before the deletion on the resource itself, after it
    on its parent), so other nodes see them too.
    """

    #: Seconds between two reads of /changes (bounds what other nodes miss),
    #: which is also when metrics are published.
    POLL = 0.25

    def __init__(self, store: Store, on_tick: Callable[[], None]):
        self._store = store
        self._on_tick = on_tick
        self.generation = Generation(store.get_value("generation") or "")
        #: None until every change that moves LastUpdate is sure to be seen.
        self.updates: Optional[RememberedUpdates] = None
        self._parents: Dict[str, str] = {}
        #: Whether other nodes may share Orthanc's index, and so need deletions logged
        #: in /changes: only with a database backend plugin (see start()).
        self.index_shared = True
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cache-changes", daemon=True)

    def _save(self) -> None:
        self._store.set_value("generation", self.generation.value)

    def forget_updates(self) -> None:
        """Something may have moved a LastUpdate: stop trusting the remembered ones."""
        if self.updates is not None:
            self.updates.forget_all()

    def before_write(self, method: str, uri: str) -> None:
        if not may_change_stored_answers(method, uri):
            return  # reads, and uploads (seen by watch_stored_instances)
        self.forget_updates()
        self.generation.announce(_utcnow())
        self._save()
        deleted = deleted_resource(method, uri)
        if deleted is not None:
            resource = "/%s/%s" % deleted
            parent = _parent_of(resource)
            if parent is not None:
                self._parents[deleted[1]] = parent
            if self.index_shared:
                _log_marker(resource)

    def after_change(self, change_type: int, resource_id: str) -> None:
        self.generation.advance(_utcnow())
        self._save()
        if change_type == orthanc.ChangeType.DELETED:
            parent = self._parents.pop(resource_id, None)
            if parent is not None and self.index_shared:
                _log_marker(parent)  # does nothing if the parent went too

    def start(self) -> None:
        """Start polling (Orthanc accepts REST calls only once started).

        With Orthanc's own SQLite index no other node shares the database:
        deletions are then not logged, and /changes stays what Orthanc alone
        writes (Orthanc's test_changes_2 counts them).
        """
        system = json.loads(orthanc.RestApiGet("/system"))
        self.index_shared = system.get("DatabaseBackendPlugin") is not None
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _poll(self) -> None:
        saved = self._store.get_value("changes-seen")
        seen: Optional[int] = int(saved) if saved and saved.isdigit() else None
        if seen is None:  # what happened while we were not watching is unknown
            self.generation.advance(_utcnow())
            self._save()
        failing = False
        while not self._stopping.wait(self.POLL):
            try:
                self._on_tick()
                if seen is None:
                    seen = json.loads(orthanc.RestApiGet("/changes?last"))["Last"]
                    self._store.set_value("changes-seen", str(seen))
                seen = self._read_changes(seen)
                failing = False
            except Exception as error:  # the watch must outlive any failure
                if not failing:
                    warn("cannot follow /changes (%s: %s): nothing is stored until it works "
                          "again" % (type(error).__name__, error))
                failing = True
                self.generation.advance(_utcnow())  # keeps every version unsettled
                self.forget_updates()

    def _read_changes(self, seen: int) -> int:
        """Advance the generation if /changes has hidden changes after ``seen``; forget
        remembered LastUpdates after any change (another node's new instance moves them)."""
        changes = json.loads(orthanc.RestApiGet("/changes?since=%d&limit=1000" % seen))
        if changes["Changes"]:
            self.forget_updates()
        if any(change["ChangeType"] in LOGGED_HIDDEN_CHANGES for change in changes["Changes"]):
            self.generation.advance(_utcnow())
            self._save()
        if changes["Last"] != seen:
            self._store.set_value("changes-seen", str(changes["Last"]))
        last: int = changes["Last"]
        return last


def _parent_of(resource: str) -> Optional[str]:
    """``/series/{id}`` for an instance, and so on; None for a patient or an unknown id."""
    found = get(resource)
    if not isinstance(found, bytes):
        return None
    description = json.loads(found)
    for key, level in (("ParentSeries", "series"), ("ParentStudy", "studies"),
                       ("ParentPatient", "patients")):
        if key in description:
            return "/%s/%s" % (level, description[key])
    return None


def _log_marker(resource: str) -> None:
    """Put a change of ``resource`` in /changes, leaving nothing behind."""
    uri = "%s/metadata/%d" % (resource, MARKER_METADATA)
    try:
        orthanc.RestApiPut(uri, b"")
        orthanc.RestApiDelete(uri)
    except orthanc.OrthancException:
        pass  # the resource is gone: nothing of it can be stale


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
                    consequence: str) -> bool:
    """Register our callback with ``orthanc.<name>``, of which the Python plugin accepts
    one per process, and let a startup script register its own after ours.

    ``ours(chained)`` builds our callback; ``chained`` then holds the script's
    callback, if any, for ours to call.  False (with a warning saying the
    ``consequence``) when a script registered one before us.
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
                        orthanc.LogError("error in the change callback %s: %s: %s" % (
                            getattr(callback, "__qualname__", callback),
                            type(error).__name__, error))
                if event[0] == orthanc.ChangeType.ORTHANC_STOPPED:
                    return

        threading.Thread(target=deliver, name="cache-events", daemon=True).start()
        return _enqueue_change

    return _register_first("RegisterOnChangeCallback", build,
                           "the cache plugin cannot see changes and stays off")


def watch_writes(changes: ChangeWatch) -> bool:
    """Announce HTTP writes before Orthanc runs them, through the incoming-request filter.

    A filter that a startup script registers after enable_cache_plugin() is
    called by ours, and its answer decides.  False when it cannot be registered.
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
                           "they happen")


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
            changes.forget_updates()
            return chained[0](dicom, instance_id) if chained else None
        return on_stored_instance

    if _register_first("RegisterOnStoredInstanceCallback", build,
                       "every request asks Orthanc for its resource's LastUpdate"):
        changes.updates = RememberedUpdates()
