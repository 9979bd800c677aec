"""The DICOMweb answers the cache keeps, behind the nginx block of docs/deployment.md.

A real Orthanc runs the Python plugin (the cache) and its DICOMweb plugin; the
documented nginx sends the viewers' metadata and QIDO lists of one study to the
cache's copies below ``/cache/dicom-web/``, everything else to DICOMweb. The
oracle is the DICOMweb plugin itself, asked directly with the headers nginx
sends it (``Host`` without the port): through nginx, every answer must have
its status, content type and (decoded) body, whatever ``Accept``, forwarding
headers, UIDs and changes; only headers are added, and 304s.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest
import requests

from orthanc_cache_plugin.http.dicomweb_urls import DicomWebSite, base_url
from support.deployment_doc import documented_site
from support.dicom_factory import make_instance, make_study
from support.nginx import NginxServer
from support.orthanc_server import OrthancServer
from support.stacks import DICOMWEB_PLUGIN, PYTHON_PLUGIN

#: Also run on Debian 12's Orthanc 1.10.1 and Debian 13's 1.12.7 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

#: Seconds after a change before the plugin stores answers (freshness.versions.SETTLE).
SETTLE = 3.2
#: Seconds after an HTTP write (a deletion) before answers are stored again.
AFTER_WRITE = 5.5
DICOMWEB = {"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True}}
STATUS = "X-Cache-Status"
#: What the viewers and HTTP libraries send; the first four are served from the copies.
JSON_ACCEPTS = ["", "*/*", "application/json", "application/dicom+json"]
OTHER_ACCEPTS = ['multipart/related; type="application/dicom+xml"',
                 "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"]
FORWARDING = [{}, {"X-Forwarded-Host": "viewer.example", "X-Forwarded-Proto": "https"},
              {"Forwarded": "host=fwd.example:8443;proto=https"}]


class Site(NamedTuple):
    orthanc: OrthancServer
    proxy: NginxServer
    study_uid: str
    series_uids: List[str]
    study_id: str


@pytest.fixture
def site(cached_orthanc: Callable[..., OrthancServer]) -> Iterator[Site]:
    orthanc = cached_orthanc(config=DICOMWEB)
    uploaded = [orthanc.upload(dicom) for dicom in make_study("PAT-dw-routes", 2, 3, seed="dwr")]
    study_id = uploaded[0]["ParentStudy"]
    study_uid = orthanc.get("/studies/%s" % study_id).json()["MainDicomTags"]["StudyInstanceUID"]
    series_uids = sorted({orthanc.get("/series/%s" % item["ParentSeries"]).json()
                          ["MainDicomTags"]["SeriesInstanceUID"] for item in uploaded})
    with NginxServer(documented_site("test_dicomweb_routes.py", "dicomweb", orthanc.port)) \
            as proxy:
        yield Site(orthanc, proxy, study_uid, series_uids, study_id)


def cached_paths(site: Site) -> List[str]:
    """The cached routes of the site's study (some with QIDO arguments)."""
    study, series = site.study_uid, site.series_uids[0]
    return ["/dicom-web/studies?StudyInstanceUID=%s" % study,
            "/dicom-web/studies?StudyInstanceUID=%s&includefield=00081030" % study,
            "/dicom-web/studies/%s/metadata" % study,
            "/dicom-web/studies/%s/series" % study,
            "/dicom-web/studies/%s/series?limit=1&includefield=00080021" % study,
            "/dicom-web/studies/%s/series/%s/metadata" % (study, series),
            "/dicom-web/studies/%s/series/%s/instances" % (study, series)]


def dicomweb_version(orthanc: OrthancServer) -> Tuple[int, ...]:
    version = orthanc.get("/plugins/dicom-web").json()["Version"]
    return tuple(int(part) for part in version.split(".")[:2])


def asked_each_time(version: Tuple[int, ...], path: str) -> bool:
    """Metadata that DICOMweb 1.15+ answers from its attachment 4301, which it rewrites
    when a series becomes stable: asked of it at each request, never stored."""
    return version >= (1, 15) and path.endswith("/metadata")


def oracle(site: Site, path: str, headers: Dict[str, str]) -> requests.Response:
    """DICOMweb's own answer, asked as nginx asks it (Host without the port)."""
    return site.orthanc.get(path, headers=dict(headers, Host="127.0.0.1"))


def assert_same(got: requests.Response, expected: requests.Response, context: object) -> None:
    assert got.status_code == expected.status_code, (context, got.content[:300])
    media = got.headers.get("Content-Type", "").split(";")[0]
    assert media == expected.headers.get("Content-Type", "").split(";")[0], context
    if media.startswith("multipart/"):  # a random boundary in each answer
        assert len(got.content) == len(expected.content), context
    else:
        assert got.content == expected.content, context


def test_answers_are_dicomwebs_own(site: Site) -> None:
    time.sleep(SETTLE)  # the study has settled: answers are stored
    study, series = site.study_uid, site.series_uids[0]
    # Unknown UIDs: DICOMweb's errors (left to it), and the empty lists of a known study
    # (kept: they follow that study).
    unknown = {"/dicom-web/studies?StudyInstanceUID=1.2.3": False,
               "/dicom-web/studies?PatientID=PAT-dw-routes": False,
               "/dicom-web/studies?StudyInstanceUID=%s*" % study[:-3]: False,
               "/dicom-web/studies": False,
               "/dicom-web/studies/1.2.3/metadata": False,
               "/dicom-web/studies/1.2.3/series": False,
               "/dicom-web/studies/%s/series/1.2.3/metadata" % study: False,
               "/dicom-web/studies/%s/series/1.2.3/instances" % study: True,
               "/dicom-web/studies/1.2.3/series/%s/metadata" % series: False,
               "/dicom-web/studies/%s/series/%s/instances" % (study, study): True,
               "/dicom-web/studies/%s/series/x/metadata" % study: False}
    paths = dict({path: True for path in cached_paths(site)}, **unknown)
    dicomweb = DicomWebSite(dicomweb_version(site.orthanc))
    checked, computed = 0, set()
    for path, kept in paths.items():
        for accept in JSON_ACCEPTS + OTHER_ACCEPTS:
            for forwarding in FORWARDING:
                headers = dict(forwarding, **({"Accept": accept} if accept else {}))
                expected = oracle(site, path, headers)
                for attempt in range(2):
                    got = site.proxy.get(path, headers=headers)
                    context = (path, headers, attempt)
                    assert_same(got, expected, context)
                    served = kept and accept in JSON_ACCEPTS
                    if not served:  # DICOMweb's own answer, from @dicomweb
                        assert STATUS not in got.headers, context
                    else:  # one copy per base of the URLs, whatever JSON Accept
                        base = base_url(dicomweb, dict(forwarding, host="127.0.0.1"))
                        first = (path, base) not in computed
                        computed.add((path, base))
                        stored = not asked_each_time(dicomweb.version, path)
                        assert got.headers[STATUS] == ("HIT" if stored and not first
                                                       else "MISS"), context
                        assert got.headers["ETag"].startswith('W/"'), context
                    checked += 1
    assert checked == 2 * len(paths) * 6 * 3 and len(paths) == 18


def test_a_returning_viewer_gets_304s(site: Site) -> None:
    time.sleep(SETTLE)
    browser = {"Accept": "application/dicom+json", "Accept-Encoding": "gzip, deflate, br"}
    for path in cached_paths(site):
        first = site.proxy.get(path, headers=browser)
        assert first.status_code == 200 and first.content == oracle(site, path, {}).content
        again = site.proxy.get(path, headers=dict(browser, **{
            "If-None-Match": first.headers["ETag"]}))
        assert again.status_code == 304, path
        assert again.headers[STATUS] == "REVALIDATED" and not again.content
        # Another client's base is another answer where its URLs name another host
        # (DICOMweb 1.14 and later read X-Forwarded-*).
        forwarded = {"X-Forwarded-Host": "other.example", "X-Forwarded-Proto": "https"}
        expected = oracle(site, path, forwarded).content
        other = site.proxy.get(path, headers=dict(browser, **forwarded, **{
            "If-None-Match": first.headers["ETag"]}))
        if expected == first.content:
            assert other.status_code == 304, path
        else:
            assert other.status_code == 200 and other.content == expected, path


def test_changes_show_at_once(site: Site) -> None:
    time.sleep(SETTLE)
    paths = cached_paths(site)
    version = dicomweb_version(site.orthanc)

    def check(moment: str, stored: Optional[bool] = None) -> None:
        """Every answer is DICOMweb's current one; ``stored``: the first of each path is a
        hit (True), or is not (False: computed again after a change; the version may
        settle during the check, and the next request be a hit of what it stored)."""
        for path in paths:
            for index, forwarding in enumerate(FORWARDING[:2]):
                got = site.proxy.get(path, headers=forwarding)
                assert_same(got, oracle(site, path, forwarding), (moment, path, forwarding))
                if stored is not None and index == 0:
                    expected = stored and not asked_each_time(version, path)
                    assert (got.headers[STATUS] == "HIT") is expected, (moment, path)

    check("before")
    check("stored", stored=True)
    # A late image of the first series.
    late = site.orthanc.upload(make_instance(
        "PAT-dw-routes", study_uid=site.study_uid, series_uid=site.series_uids[0],
        sop_uid="1.2.826.0.1.3680043.8.498.4242"))
    check("after a new instance", stored=False)
    # A deleted image.
    assert site.orthanc.delete("/instances/%s" % late["ID"]).status_code == 200
    check("after a deletion", stored=False)
    # A modified tag, written in place (the instance keeps its id).
    victim = site.orthanc.get("/series/%s" % site.orthanc.get(
        "/studies/%s/series" % site.study_id).json()[0]["ID"]).json()["Instances"][0]
    modified = site.orthanc.post("/instances/%s/modify" % victim, json={
        "Replace": {"SeriesDescription": "changed"}, "Force": True})
    assert modified.status_code == 200
    site.orthanc.delete("/instances/%s" % victim)
    site.orthanc.post("/instances", data=modified.content)
    check("after a modification", stored=False)
    time.sleep(AFTER_WRITE)
    check("settled again")
    check("stored again", stored=True)


def test_other_methods_are_dicomwebs_answers(site: Site) -> None:
    for path in cached_paths(site)[2:5] + ["/dicom-web/studies"]:
        for method in ("PUT", "DELETE", "HEAD", "OPTIONS"):
            got = site.proxy.request(method, path, data=b"{}")
            expected = site.orthanc.request(method, path, data=b"{}")
            assert got.status_code == expected.status_code, (method, path)
    # STOW-RS uploads go to DICOMweb, through nginx, as ever.
    boundary = "stow-boundary"
    for number, proxied in ((41, True), (42, False)):
        dicom = make_instance("PAT-dw-routes", study_uid=site.study_uid,
                              series_uid=site.series_uids[1], instance_number=number)
        body = (b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n--%s--\r\n"
                % (boundary.encode(), dicom, boundary.encode()))
        headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=%s'
                   % boundary, "Accept": "application/dicom+json"}
        target = site.proxy if proxied else site.orthanc
        stored = target.request("POST", "/dicom-web/studies/%s" % site.study_uid, data=body,
                                headers=headers)
        assert stored.status_code == 200, stored.content[:300]
        assert "00081199" in stored.json(), stored.json()  # ReferencedSOPSequence
    assert len(site.orthanc.get("/studies/%s/instances" % site.study_id).json()) == 8
    stow = site.proxy.request("POST", "/dicom-web/studies", data=b"not multipart",
                              headers={"Content-Type": "application/dicom"})
    assert stow.status_code == site.orthanc.request(
        "POST", "/dicom-web/studies", data=b"not multipart",
        headers={"Content-Type": "application/dicom"}).status_code


def test_without_the_dicomweb_plugin(cached_orthanc: Callable[..., OrthancServer]) -> None:
    orthanc = cached_orthanc()
    orthanc.wait_for_log("DICOMweb is not cached: the DICOMweb plugin is not loaded")
    left = orthanc.get("/cache/dicom-web/studies/1.2.3/series")
    assert left.status_code == 406 and left.headers[STATUS] == "PASS"
    with NginxServer(documented_site("test_dicomweb_routes.py", "dicomweb", orthanc.port)) \
            as proxy:
        for path in ("/dicom-web/studies/1.2.3/series", "/dicom-web/studies/1.2.3/metadata"):
            assert proxy.get(path).status_code == orthanc.get(path).status_code == 404


def test_dicomwebs_root_on_the_caches_never_loops(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    orthanc = cached_orthanc(config=dict(DICOMWEB, DicomWeb={"Enable": True,
                                                             "Root": "/cache/dicom-web/"}))
    orthanc.wait_for_log("DICOMweb is not cached: its Root is the cache's own")
    study = make_study("PAT-dw-clash", 1, 1, seed="clash")
    uploaded = orthanc.upload(study[0])
    uid = orthanc.get("/studies/%s" % uploaded["ParentStudy"]).json()["MainDicomTags"][
        "StudyInstanceUID"]
    answer = orthanc.get("/cache/dicom-web/studies/%s/series" % uid, timeout=10)
    # Whichever plugin registered the route first answers it, once.
    assert answer.status_code in (200, 406)


def test_metadata_follows_dicomwebs_own_copy_after_an_overwrite(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    """DICOMweb 1.15+ keeps a series' metadata in attachment 4301 and writes it again when
    the series becomes stable: after an instance is overwritten, DICOMweb answers the old
    metadata until then, the new one after.  The cache must follow it (found by the model
    test's helper: a copy stored in between was served after DICOMweb had moved on)."""
    orthanc = cached_orthanc(config=dict(DICOMWEB, StableAge=4, OverwriteInstances=True))
    study_uid, series_uid = "1.2.826.0.1.3680043.8.498.7001", "1.2.826.0.1.3680043.8.498.7002"
    for number in (1, 2):
        orthanc.upload(make_instance("PAT-overwrite", study_uid=study_uid, series_uid=series_uid,
                                     sop_uid="1.2.826.0.1.3680043.8.498.700%d" % (2 + number),
                                     instance_number=number))
    path = "studies/%s/series/%s/metadata" % (study_uid, series_uid)
    host = {"Host": "viewer.example"}

    def both() -> Tuple[bytes, bytes]:
        cached = orthanc.get("/cache/dicom-web/" + path, headers=host)
        assert cached.status_code == 200, cached.content[:300]
        return cached.content, orthanc.get("/dicom-web/" + path, headers=host).content

    time.sleep(4 + SETTLE)  # stable (4301 written), and settled
    before = both()
    assert before[0] == before[1] and b'"00200013"' in before[0]
    orthanc.upload(make_instance("PAT-overwrite", study_uid=study_uid, series_uid=series_uid,
                                 sop_uid="1.2.826.0.1.3680043.8.498.7004", instance_number=10))
    deadline = time.monotonic() + 4 + SETTLE + 8
    while time.monotonic() < deadline:
        cached, dicomweb = both()
        assert cached in (dicomweb, both()[1]), "the cache served another metadata than DICOMweb"
        time.sleep(0.5)
    cached, dicomweb = both()
    numbers = sorted(item["00200013"]["Value"][0] for item in json.loads(dicomweb))
    assert cached == dicomweb and numbers == [1, 10], numbers
