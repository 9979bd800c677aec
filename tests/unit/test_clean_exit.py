"""clean_exit.avoid_plugin_teardown: only where it is needed, never an exception.

That it keeps Orthanc 1.13.0 from crashing at stop is shown with a real
Orthanc (tests/integration/test_stacks.py); here, the cases where it must do
nothing.  It is never called for real in this process: that would end the
test run with ``_exit``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orthanc_cache_plugin.host.clean_exit import AFFECTED_PYTHON, avoid_plugin_teardown

LIBRARY = "7f21c4150000-7f21c4200000 r-xp 00000000 fe:01 1234 /usr/lib/orthanc/%s\n"


def maps(tmp_path: Path, *names: str) -> str:
    path = tmp_path / "maps"
    path.write_text("".join(LIBRARY % name for name in names), encoding="utf-8")
    return str(path)


def test_nothing_is_done_before_python_3_14(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "version_info", (3, 13, 5, "final", 0))
    assert avoid_plugin_teardown(maps(tmp_path, "libOrthancPython.so.7.1")) is None


@pytest.mark.parametrize("names", [
    (),                                                      # not inside Orthanc
    ("libOrthancPython.so.7.1", "libOrthancPython.so.6.0"),  # which one?
    ("libOrthancPython.so.7.1",),                            # listed, but not loaded here
])
def test_without_exactly_one_loaded_plugin_library_nothing_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: tuple) -> None:
    monkeypatch.setattr(sys, "version_info", AFFECTED_PYTHON + (0, "final", 0))
    assert avoid_plugin_teardown(maps(tmp_path, *names)) is None


def test_an_unreadable_memory_map_does_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "version_info", AFFECTED_PYTHON + (0, "final", 0))
    assert avoid_plugin_teardown(str(tmp_path / "missing")) is None
