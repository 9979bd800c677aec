"""The admin API (orthanc_cache_plugin.cache.admin) as a table: method and URI in, status and
JSON out, with a real store and the Orthanc-side callables faked."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest

from orthanc_cache_plugin.cache.admin import ADMIN_ROUTES, AdminApi
from orthanc_cache_plugin.core.data import Entry, Figures, Outcome
from orthanc_cache_plugin.core.routes import Level
from orthanc_cache_plugin.core.statistics import Statistics

#: What Orthanc holds in these tests: one study with one series below it.
KNOWN = {(Level.STUDY, "st"), (Level.SERIES, "se")}
BELOW = {(Level.STUDY, "st"): ["se"]}


class Calls:
    """Records the warm-ups asked for; stores what a warm-up would."""

    def __init__(self) -> None:
        self.warmed: List[Tuple[Level, str]] = []

    def warm(self, level: Level, resource_id: str) -> int:
        self.warmed.append((level, resource_id))
        return 3


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def api(store, warnings, calls) -> AdminApi:
    store.set("a", Entry("v", "t", b"1"), tag="st")
    store.set("b", Entry("v", "t", b"2"), tag="se")
    store.set("c", Entry("v", "t", b"3"), tag="other")
    statistics = Statistics()
    statistics.count(Outcome.HIT)
    return AdminApi("/cache/", store, statistics, figures=lambda: Figures(3, 300, 1, 2),
                    configuration=lambda: {"MaximumSize": 64},
                    exists=lambda level, resource_id: (level, resource_id) in KNOWN,
                    descendants=lambda level, resource_id: BELOW.get((level, resource_id), []),
                    warm=calls.warm, warn=warnings.append)


@pytest.mark.parametrize("method, uri, status, body, allow", [
    ("GET", "/cache/statistics", 200, {"Hits": 1, "Entries": 3, "Size": 300,
                                       "WarmUpQueue": 1, "WarmUpsDone": 2,
                                       "Configuration": {"MaximumSize": 64}}, None),
    ("DELETE", "/cache/statistics", 405, None, "GET"),
    ("DELETE", "/cache", 200, {"Removed": 3}, None),
    ("GET", "/cache", 405, None, "DELETE"),
    # A study's eviction takes its series' answers too, and nothing else.
    ("DELETE", "/cache/studies/st", 200, {"Removed": 2}, None),
    ("DELETE", "/cache/series/se", 200, {"Removed": 1}, None),
    ("POST", "/cache/studies/st", 405, None, "DELETE"),
    ("POST", "/cache/studies/st/warm-up", 200, {"Stored": 3}, None),
    ("GET", "/cache/studies/st/warm-up", 405, None, "POST"),
    # Unknown resources are Orthanc's 404, whatever the method.
    ("DELETE", "/cache/studies/nope", 404, None, None),
    ("POST", "/cache/patients/nope/warm-up", 404, None, None),
    ("GET", "/cache/patients/nope", 404, None, None),
    ("GET", "/elsewhere", 404, None, None),
])
def test_every_admin_route(api: AdminApi, method: str, uri: str, status: int,
                           body: Optional[Dict[str, Any]], allow: Optional[str]) -> None:
    reply = api.answer(method, uri)
    assert reply.status == status
    assert reply.headers.get("Allow") == allow
    if body is None:
        assert reply.body == b""
    else:
        assert reply.content_type == "application/json; charset=utf-8"
        answered = json.loads(reply.body)
        assert {name: answered[name] for name in body} == body


def test_writes_happen_only_on_their_own_method(api: AdminApi, store, calls: Calls,
                                                warnings: List[str]) -> None:
    for method in ("GET", "POST", "PUT"):
        api.answer(method, "/cache")
        api.answer(method, "/cache/studies/st")
    assert store.count() == 3 and calls.warmed == [] and warnings == []
    api.answer("POST", "/cache/studies/st/warm-up")
    assert calls.warmed == [(Level.STUDY, "st")]
    api.answer("DELETE", "/cache")
    assert store.count() == 0
    assert warnings == ["store emptied through the admin API"]


def test_the_registered_patterns_are_the_route_table_under_the_prefix(api: AdminApi) -> None:
    patterns = api.patterns()
    assert len(patterns) == len(ADMIN_ROUTES)
    assert patterns[:2] == ["/cache/statistics", "/cache"]
    assert all(pattern.startswith("/cache") for pattern in patterns)
