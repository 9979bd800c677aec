"""The cache beside Orthanc's DICOMweb plugin, as the orthancteam image runs them.

DICOMweb 1.15 and later keeps each series' WADO-RS metadata in attachment 4301,
written when the series becomes stable and at the first metadata request
(docs/dicomweb.md); the write is an ``UpdatedAttachment`` change of the series.
What the warm-up stored at that same moment must stay a hit, and the answers
that show attachments must show it.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest

from orthanc_cache_plugin.core.data import Outcome
from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer
from support.stacks import DICOMWEB_PLUGIN, PYTHON_PLUGIN

#: Also run on Debian 12's Orthanc 1.10.1 and Debian 13's 1.12.7 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

NO_GZIP = {"Accept-Encoding": "identity"}


def test_dicomwebs_metadata_cache_keeps_warmed_answers(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc(config={"StableAge": 1, "Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN],
                                    "DicomWeb": {"Enable": True}})
    version = tuple(int(part) for part in
                    server.get("/plugins/dicom-web").json()["Version"].split(".")[:2])
    writes_4301 = version >= (1, 15)
    uploaded = [server.upload(dicom) for dicom in make_study("PAT-beside", 1, 3, seed="beside")]
    series, study = uploaded[0]["ParentSeries"], uploaded[0]["ParentStudy"]
    server.wait_for_log(r"warm-up of patients %s: \d+ answers stored"
                        % uploaded[0]["ParentPatient"], timeout=30)
    attachments = "/series/%s/attachments" % series
    if writes_4301:
        wait_for_attachment(server, attachments, "4301")
    before = server.get(attachments, headers=NO_GZIP)
    assert before.status_code == 200 and ("4301" in before.json()) is writes_4301

    # After the warm-up: DICOMweb writes 4301 again (its first metadata request since
    # the attachment went), and a client adds an attachment to the series.
    if writes_4301:
        assert server.delete(attachments + "/4301").status_code == 200
        study_uid = server.get("/studies/%s" % study).json()["MainDicomTags"]["StudyInstanceUID"]
        series_uid = server.get("/series/%s" % series).json()["MainDicomTags"]["SeriesInstanceUID"]
        metadata = server.get("/dicom-web/studies/%s/series/%s/metadata" % (study_uid, series_uid))
        assert metadata.status_code == 200
        wait_for_attachment(server, attachments, "4301")
    assert server.put(attachments + "/9999", data=b"report").status_code == 200
    time.sleep(1.5)  # the change events of both writes have reached the plugin

    for path in ("/series/%s/shared-tags" % series, "/studies/%s/shared-tags" % study,
                 "/studies/%s/instances-tags?short" % study):
        assert server.get(path, headers=NO_GZIP).status_code == 200
        assert server.outcomes(path) == [Outcome.HIT], path
    # The series' list of attachments shows both, and its old ETag validates it no more.
    after = server.get(attachments,
                       headers=dict(NO_GZIP, **{"If-None-Match": before.headers["ETag"]}))
    assert after.status_code == 200
    assert set(after.json()) == set(before.json()) | {"9999"}
    assert server.outcomes(attachments)[-1] == Outcome.MISS


def wait_for_attachment(server: OrthancServer, path: str, name: str) -> None:
    deadline = time.monotonic() + 20
    while name not in server.get(path, headers=NO_GZIP).json():
        assert time.monotonic() < deadline, "no attachment %s at %s" % (name, path)
        time.sleep(0.2)
