"""Fixtures shared by the unit tests: an injected clock, collected warnings, a store."""

from __future__ import annotations

from typing import Iterator, List

import pytest

from orthanc_cache_plugin.store.facade import Store
from support.clock import Clock

MB = 1024 * 1024


@pytest.fixture
def warnings() -> List[str]:
    """What the code under test logged as warnings (pass ``warnings.append``)."""
    return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, warnings, clock) -> Iterator[Store]:
    """A 64 MB store in the test's own folder, on the injected clock."""
    opened = Store(str(tmp_path / "store"), 64 * MB, 3600, warn=warnings.append, clock=clock)
    yield opened
    opened.close()
