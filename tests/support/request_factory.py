"""Requests of cached routes, as the adapter builds them from Orthanc's callback, for unit tests."""

from __future__ import annotations

from typing import Dict, Optional

from orthanc_cache_plugin.core.data import Request
from orthanc_cache_plugin.core.routes import match


def make_request(uri: str, arguments: Optional[Dict[str, str]] = None,
                 headers: Optional[Dict[str, str]] = None) -> Request:
    """A GET of ``uri`` (a cached route) with these arguments and lower-case headers."""
    found = match(uri)
    assert found is not None, uri
    route, groups = found
    return Request(route, groups, uri, dict(arguments or {}), dict(headers or {}))
