"""Unit tests of orthanc_cache_plugin.store.state_files (named strings in state-NAME files)."""

from __future__ import annotations

import threading
from pathlib import Path

from orthanc_cache_plugin.store.state_files import StateFiles


def test_values_are_kept_in_state_files(tmp_path):
    state = StateFiles(str(tmp_path))
    assert state.get("generations") is None
    state.set("generations", '{"base": "x"}\nsecond line')
    assert state.get("generations") == '{"base": "x"}\nsecond line'
    assert (tmp_path / "state-generations").read_text(encoding="utf-8") == \
        '{"base": "x"}\nsecond line'
    state.set("generations", "replaced")
    assert state.get("generations") == "replaced"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["state-generations"]


def test_a_broken_directory_is_ignored(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"a regular file")
    state = StateFiles(str(blocker / "store"))
    state.set("name", "value")  # no error
    assert state.get("name") is None


def test_an_undecodable_file_reads_as_absent(tmp_path):
    (tmp_path / "state-name").write_bytes(b"\xff\xfe\x00")
    assert StateFiles(str(tmp_path)).get("name") is None


def test_concurrent_writers_leave_one_whole_value(tmp_path):
    state = StateFiles(str(tmp_path))
    values = ["%d" % index * 10000 for index in range(8)]
    threads = [threading.Thread(target=lambda value=value: [state.set("name", value)
                                                            for _ in range(20)])
               for value in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state.get("name") in values
    assert [path.name for path in Path(tmp_path).iterdir()] == ["state-name"]
