"""The admin API under ``AdminPrefix``: statistics, emptying the store, evicting or
warming up one resource.

Its routes are data (:data:`ADMIN_ROUTES`); :meth:`AdminApi.answer` turns one
request into a :class:`~.data.Reply` that the adapter sends.  Nothing here
calls Orthanc: what the API needs of it (does a resource exist, what lies
below it, warm it up) comes in as callables, so that every answer is tested
without Orthanc (tests/unit/test_admin.py) and the same in the integration
tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Pattern, Tuple

from ..core.data import Figures, Outcome, Reply
from ..core.routes import Level
from ..core.statistics import Statistics
from ..http.plain_answers import JSON_TYPE
from ..store.facade import Store

_LEVELS = "(%s)" % "|".join(level.value for level in Level)


class AdminAction(Enum):
    STATISTICS = "statistics"
    EMPTY = "empty the store"
    EVICT = "evict a resource"
    WARM_UP = "warm up a resource"


@dataclass(frozen=True)
class AdminRoute:
    """One route of the admin API: its path after the prefix (a regular expression,
    as Orthanc registers REST callbacks) and the one method it answers."""

    action: AdminAction
    suffix: str
    method: str

    def pattern(self, prefix: str) -> str:
        return prefix.rstrip("/") + self.suffix


ADMIN_ROUTES: Tuple[AdminRoute, ...] = (
    AdminRoute(AdminAction.STATISTICS, "/statistics", "GET"),
    AdminRoute(AdminAction.EMPTY, "", "DELETE"),
    AdminRoute(AdminAction.EVICT, "/%s/([^/]+)" % _LEVELS, "DELETE"),
    AdminRoute(AdminAction.WARM_UP, "/%s/([^/]+)/warm-up" % _LEVELS, "POST"),
)


class AdminApi:
    """Answers the admin routes; every answer is JSON, an unknown resource Orthanc's 404.

    ``exists(level, id)`` says whether Orthanc has the resource, ``descendants(level,
    id)`` lists what lies below it, ``warm(level, id)`` stores its answers and counts
    them, ``figures()`` and ``configuration()`` feed the statistics.
    """

    def __init__(self, prefix: str, store: Store, statistics: Statistics,
                 figures: Callable[[], Figures], configuration: Callable[[], Dict[str, Any]],
                 exists: Callable[[Level, str], bool],
                 descendants: Callable[[Level, str], List[str]],
                 warm: Callable[[Level, str], int], warn: Callable[[str], None]):
        self._routes: List[Tuple[AdminRoute, Pattern[str]]] = [
            (route, re.compile(route.pattern(prefix) + "$")) for route in ADMIN_ROUTES]
        self._store = store
        self._statistics = statistics
        self._figures = figures
        self._configuration = configuration
        self._exists = exists
        self._descendants = descendants
        self._warm = warm
        self._warn = warn

    def patterns(self) -> List[str]:
        """What to register with Orthanc, one callback per route."""
        return [pattern.pattern[:-1] for _, pattern in self._routes]

    def answer(self, method: str, uri: str) -> Reply:
        """The reply to ``method`` on ``uri`` (one of :meth:`patterns`)."""
        route, groups = self._match(uri)
        if route is None:
            return Reply(404, Outcome.PASS, "not an admin route")
        if groups:  # a resource's route: an unknown one is Orthanc's 404, whatever the method
            level, resource_id = Level(groups[0]), groups[1]
            if not self._exists(level, resource_id):
                return Reply(404, Outcome.PASS, "unknown resource")
        if method != route.method:
            return Reply(405, Outcome.PASS, method + " not allowed",
                         headers={"Allow": route.method})
        body: Dict[str, Any]
        if route.action is AdminAction.STATISTICS:
            body = self._statistics.report(self._figures(), self._store.location,
                                           self._store.available, self._configuration())
        elif route.action is AdminAction.EMPTY:
            body = {"Removed": self._store.clear()}
            self._warn("store emptied through the admin API")
        elif route.action is AdminAction.EVICT:
            tags = [resource_id] + self._descendants(level, resource_id)
            body = {"Removed": sum(self._store.evict(tag) for tag in tags)}
        else:
            body = {"Stored": self._warm(level, resource_id)}
        return Reply(200, Outcome.PASS, route.action.value, JSON_TYPE,
                     json.dumps(body, indent=3).encode("utf-8"))

    def _match(self, uri: str) -> Tuple[Optional[AdminRoute], Tuple[str, ...]]:
        for route, pattern in self._routes:
            found = pattern.match(uri)
            if found:
                return route, found.groups()
        return None, ()
