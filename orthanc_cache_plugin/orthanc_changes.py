"""How this node learns of changes that LastUpdate does not show (see freshness.py).

With :mod:`.orthanc_adapter`, the only module importing ``orthanc``.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Union

import orthanc

from .freshness import (LOGGED_HIDDEN_CHANGES, MARKER_METADATA, Generation,
                        deleted_resource, may_change_stored_answers)
from .store import Store

LOG_PREFIX = "cache plugin: "


def warn(message: str) -> None:
    orthanc.LogWarning(LOG_PREFIX + message)


def get(uri: str) -> Union[bytes, int]:
    """Orthanc's built-in answer to a GET: the body, or the error code."""
    try:
        return orthanc.RestApiGet(uri)
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
        self._parents: Dict[str, str] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cache-changes", daemon=True)

    def _save(self) -> None:
        self._store.set_value("generation", self.generation.value)

    def before_write(self, method: str, uri: str) -> None:
        if not may_change_stored_answers(method, uri):
            return
        self.generation.announce(_utcnow())
        self._save()
        deleted = deleted_resource(method, uri)
        if deleted is not None:
            resource = "/%s/%s" % deleted
            parent = _parent_of(resource)
            if parent is not None:
                self._parents[deleted[1]] = parent
            _log_marker(resource)

    def after_change(self, change_type: int, resource_id: str) -> None:
        self.generation.advance(_utcnow())
        self._save()
        if change_type == orthanc.ChangeType.DELETED:
            parent = self._parents.pop(resource_id, None)
            if parent is not None:
                _log_marker(parent)  # does nothing if the parent went too

    def start(self) -> None:
        """Start polling (Orthanc accepts REST calls only once started)."""
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

    def _read_changes(self, seen: int) -> int:
        """Advance the generation if /changes has hidden changes after ``seen``."""
        changes = json.loads(orthanc.RestApiGet("/changes?since=%d&limit=1000" % seen))
        if any(change["ChangeType"] in LOGGED_HIDDEN_CHANGES for change in changes["Changes"]):
            self.generation.advance(_utcnow())
            self._save()
        if changes["Last"] != seen:
            self._store.set_value("changes-seen", str(changes["Last"]))
        return changes["Last"]


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


def watch_writes(changes: ChangeWatch) -> None:
    """Announce HTTP writes before Orthanc runs them, through the incoming-request filter.

    The Python plugin accepts one such filter per process: ours stays
    registered and calls the one a startup script registers after
    enable_cache_plugin(), whose answer decides.
    """
    chained: List[Callable[..., bool]] = []

    def on_incoming_request(uri: str, **request: Any) -> bool:
        allowed = bool(chained[0](uri, **request)) if chained else True
        method = _HTTP_METHODS.get(request.get("method"), "")
        if allowed and method != "GET":
            changes.before_write(method, uri)
        return allowed

    try:
        orthanc.RegisterIncomingHttpRequestFilter(on_incoming_request)
    except RuntimeError as error:
        warn("cannot watch HTTP writes (%s): register your incoming-request filter after "
              "enable_cache_plugin(); until then, changes are seen through Orthanc's change "
              "events, a moment after they happen" % error)
        return

    def chain(user_filter: Callable[..., bool]) -> None:
        chained[:] = [user_filter]

    orthanc.RegisterIncomingHttpRequestFilter = chain
