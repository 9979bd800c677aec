"""Orthanc's side of the change watch (:mod:`..cache.changes`): its port to
Orthanc's index, and the change, incoming-request and stored-instance
callbacks that feed it.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Dict, List, Optional, TypeVar

import orthanc

from ..cache.changes import ChangeWatch
from ..core.routes import Level
from ..freshness.changes import Event
from ..freshness.versions import MARKER_METADATA, RememberedUpdates
from .api import error_without_prefix, get, get_after_plugins, get_json, touch_and_undo, warn
from .registration import REGISTRATION
from .thread_states import keep_thread_state

_Callback = TypeVar("_Callback", bound=Callable[..., Any])

#: orthanc.ResourceType values, as change events give them.
LEVELS = {0: Level.PATIENT, 1: Level.STUDY, 2: Level.SERIES, 3: Level.INSTANCE}


class OrthancIndex:
    """The change watch's port to Orthanc's index (:class:`..cache.changes.Index`),
    through the REST API."""

    @staticmethod
    def describe(level: Level, resource_id: str) -> Dict[str, Any]:
        found = get("/%s/%s" % (level.value, resource_id))
        if not isinstance(found, bytes):
            return {}
        description = json.loads(found)
        return description if isinstance(description, dict) else {}

    @staticmethod
    def changes(since: int, limit: int) -> Dict[str, Any]:
        page: Dict[str, Any] = get_json("/changes?since=%d&limit=%d" % (since, limit))
        return page

    @staticmethod
    def last_change() -> int:
        return int(get_json("/changes?last")["Last"])

    @staticmethod
    def housekeeper_status() -> Optional[Dict[str, Any]]:
        # A plugin's route: not in RestApiGet's built-in API.
        found = get_after_plugins("/plugins/housekeeper/status")
        if not isinstance(found, bytes):  # not loaded after all
            return None
        status = json.loads(found)
        return status if isinstance(status, dict) else {}

    @staticmethod
    def log_marker(level: Level, resource_id: str) -> bool:
        return touch_and_undo("/%s/%s/metadata/%d" % (level.value, resource_id,
                                                      MARKER_METADATA))

    @staticmethod
    def shares_database() -> bool:
        return get_json("/system").get("DatabaseBackendPlugin") is not None


#: Changes that leave LastUpdate as it is (a child's deletion before Orthanc 1.12.1).
HIDDEN_CHANGE_EVENTS = {
    orthanc.ChangeType.DELETED: Event.DELETED,
    orthanc.ChangeType.UPDATED_METADATA: Event.METADATA,
    orthanc.ChangeType.UPDATED_ATTACHMENT: Event.ATTACHMENT,
}

_HTTP_METHODS = {
    orthanc.HttpMethod.GET: "GET", orthanc.HttpMethod.POST: "POST",
    orthanc.HttpMethod.PUT: "PUT", orthanc.HttpMethod.DELETE: "DELETE",
}


def keep_alive(callback: _Callback) -> _Callback:
    """``callback``, referenced for good: hand only such callables to Orthanc."""
    return REGISTRATION.keep_alive(callback)


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


def _enqueue_change(change_type: int, level: int, resource_id: str) -> None:
    """What Orthanc calls for each change: queue it and return at once.

    The Python plugin 7.1 runs its change callback on a thread that it stops
    when Orthanc stops; a callback still busy then (any work, a closure) made
    Orthanc 1.13.0 end with a corrupted heap or a segmentation fault in most
    stops.  A module function that only queues does not.
    """
    REGISTRATION.events.put((change_type, level, resource_id))


def stop_watching_changes() -> None:
    """End the delivery thread once the events queued before are delivered."""
    REGISTRATION.events.put(None)


def watch_changes(on_change: Callable[[int, int, str], None]) -> bool:
    """Deliver Orthanc's change events to ``on_change``, in order, on a thread of the
    plugin; a callback that a startup script registers after enable_cache_plugin()
    is called after it, for every event.  False when a script registered one
    before: the cache cannot work without events."""
    def build(chained: List[Callable[..., Any]]) -> Callable[[int, int, str], None]:
        def deliver() -> None:
            while True:
                event = REGISTRATION.events.get()
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
