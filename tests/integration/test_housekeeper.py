"""Orthanc's Housekeeper rewrites stored files and tells no one: never a stale answer or 304.

The Housekeeper plugin (Orthanc 1.11 and later; not in Debian 12's 1.10.1, so
this module runs on the modern stack only) reconstructs every study after a
change of ``IngestTranscoding`` or ``StorageCompression``: files are
rewritten (here transcoded from explicit to implicit little endian, so their
bytes change), without a change event, a new ``LastUpdate`` or an entry in
``/changes``.  The truth at any moment is the stored file itself,
``/instances/{id}/attachments/dicom/data``, which the plugin does not cache.
"""

from __future__ import annotations

import time
from typing import Dict, List

import requests

from orthanc_cache_plugin.core.data import Outcome
from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer
from support.stacks import HOUSEKEEPER_PLUGIN, PYTHON_PLUGIN

IMPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2"
NO_GZIP = {"Accept-Encoding": "identity"}
#: freshness.SETTLE + freshness.GRACE, and a margin.
QUIET = 5.5


def get(server: OrthancServer, path: str, **headers: str) -> requests.Response:
    return server.get(path, headers=dict(NO_GZIP, **headers))


def housekeeper_busy(server: OrthancServer) -> bool:
    status = server.get("/plugins/housekeeper/status").json()
    return status["CurrentlyProcessingConfiguration"] is not None


def test_files_rewritten_by_the_housekeeper_are_never_served_stale(cached_orthanc) -> None:
    server = cached_orthanc(settings={"StoreBinary": True}, config={
        "Plugins": [PYTHON_PLUGIN, HOUSEKEEPER_PLUGIN],
        "Housekeeper": {"Enable": True, "ThrottleDelay": 1},
    })
    instances = [server.upload(dicom) for dicom in make_study("PAT-HK", 2, 2, seed="hk")]
    time.sleep(QUIET)
    files = ["/instances/%s/file" % instance["ID"] for instance in instances]
    before: Dict[str, requests.Response] = {}
    for path in files:
        get(server, path)
        before[path] = get(server, path)
        assert server.outcomes(path)[-1] == Outcome.HIT

    server.stop()
    server.config["IngestTranscoding"] = IMPLICIT_LITTLE_ENDIAN
    server.start()
    # From the start, while the Housekeeper rewrites the files one study after the
    # other, and after: every answer is the stored file, and a 304 only while the file
    # is still the one the client holds.  The stored file is read just before and just
    # after each request: when the Housekeeper rewrote it in between, either is right.
    answers: List[str] = []
    deadline = time.monotonic() + 60
    while True:
        busy = housekeeper_busy(server)
        for path in files:
            old = before[path]
            stored_file = path.replace("/file", "/attachments/dicom/data")
            truth_before = server.get(stored_file).content
            answer = get(server, path, **{"If-None-Match": old.headers["ETag"]})
            truths = (truth_before, server.get(stored_file).content)
            if answer.status_code == 304:
                assert old.content in truths, "304 for a rewritten file: " + path
            else:
                assert answer.status_code == 200 and answer.content in truths, path
            answers.append("%d%s" % (answer.status_code, " (busy)" if busy else ""))
        if not busy and len(answers) > 4 * len(files):
            break
        assert time.monotonic() < deadline, "the Housekeeper never finished"
        time.sleep(0.2)
    rewritten = [path for path in files
                 if server.get(path.replace("/file", "/attachments/dicom/data")).content
                 != before[path].content]
    assert rewritten == files, "the Housekeeper did not transcode the files: nothing was proven"
    server.wait_for_log("Orthanc's Housekeeper is rewriting files")
    server.wait_for_log("Orthanc's Housekeeper is done", timeout=5)

    # Once it is done, the cache serves again, at the new files.
    time.sleep(QUIET)
    for path in files:
        get(server, path)
        again = get(server, path)
        assert server.outcomes(path)[-1] == Outcome.HIT
        assert again.headers["ETag"] != before[path].headers["ETag"]
        assert get(server, path, **{"If-None-Match": again.headers["ETag"]}).status_code == 304
