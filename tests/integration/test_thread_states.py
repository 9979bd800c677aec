"""Orthanc's Python plugin and thread states: what host.thread_states relies on.

The Python plugin gives every callback a fresh Python thread state, so
``threading.local`` data is lost between two requests served by the same
Orthanc thread; after ``keep_thread_state()`` it survives (and no state is
allocated per callback any more, the speed-up measured in
bench/HISTORY.md).  A probe route counts its calls in a
``threading.local``: one keep-alive connection is served by one thread.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, List, Tuple

import pytest
import requests

from support.orthanc_server import OrthancServer

#: Also run on Debian 12's Orthanc 1.10.1 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

PROBE = '''
import json
import sys
import threading
sys.path.insert(0, {repo!r})

import orthanc
from orthanc_cache_plugin.host.thread_states import keep_thread_state

counted = threading.local()


def probe(output, uri, **request):
    if uri.endswith("/kept"):
        keep_thread_state()
    counted.calls = getattr(counted, "calls", 0) + 1
    output.AnswerBuffer(json.dumps([threading.get_ident(), counted.calls]), "application/json")


orthanc.RegisterRestCallback("/probe/(fresh|kept)", probe)
'''


def calls(server: OrthancServer, kind: str) -> List[Tuple[int, int]]:
    with requests.Session() as session:  # one connection, so one Orthanc thread
        return [tuple(session.get(server.url + "/probe/" + kind, timeout=10).json())
                for _ in range(5)]


def test_a_kept_thread_state_keeps_thread_local_data_between_callbacks(
        orthanc_factory: Callable[..., OrthancServer], repo_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE.format(repo=str(repo_root))))
    server = orthanc_factory(python_script=script)
    fresh = calls(server, "fresh")
    assert len({thread for thread, _ in fresh}) == 1
    assert [count for _, count in fresh] == [1] * 5  # a new thread state every time
    kept = calls(server, "kept")
    assert len({thread for thread, _ in kept}) == 1
    assert [count for _, count in kept] == [1, 2, 3, 4, 5]
