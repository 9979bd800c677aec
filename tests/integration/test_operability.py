"""What an administrator sees: the status header, Prometheus metrics, the admin API."""

from __future__ import annotations

import re
import time
from typing import Callable, Dict

from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer

NO_GZIP = {"Accept-Encoding": "identity"}
SETTLE = 3.1
METRICS_PERIOD = 0.6  # metrics are published every 0.25 s


def upload(server: OrthancServer, seed: str):
    uploaded = [server.upload(dicom) for dicom in make_study("PAT-" + seed, 2, 2, seed=seed)]
    time.sleep(SETTLE)
    return uploaded


def metrics(server: OrthancServer) -> Dict[str, float]:
    time.sleep(METRICS_PERIOD)
    text = server.get("/tools/metrics-prometheus").text
    return {name: float(value) for name, value in
            re.findall(r"^(orthanc_cache_\w+) (\S+)", text, re.MULTILINE)}


def test_the_status_header_says_what_the_cache_did(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc()
    study = upload(server, "status")[0]["ParentStudy"]
    path = "/studies/%s/shared-tags" % study
    statuses = [server.get(path, headers=NO_GZIP).headers["X-Cache-Status"] for _ in range(2)]
    etag = server.get(path).headers["ETag"]
    statuses.append(server.get(path, headers={"If-None-Match": etag}).headers["X-Cache-Status"])
    statuses.append(server.get("/studies/unknown/shared-tags").headers["X-Cache-Status"])
    assert server.put("/studies/%s/metadata/1024" % study, data="x").status_code == 200
    time.sleep(5.2)  # the write's grace and settling
    statuses.append(server.get(path).headers["X-Cache-Status"])
    assert statuses == ["MISS", "HIT", "REVALIDATED", "PASS", "STALE-REFRESHED"]
    log = server.log_text()
    assert re.search(r"cache plugin: HIT GET %s: stored at this version" % re.escape(path), log)
    assert re.search(r"cache plugin: STALE-REFRESHED GET %s: outdated" % re.escape(path), log)


def test_the_status_header_can_be_turned_off(cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc({"CacheStatusHeader": ""})
    study = upload(server, "quiet")[0]["ParentStudy"]
    answer = server.get("/studies/%s/shared-tags" % study)
    assert "ETag" in answer.headers and "X-Cache-Status" not in answer.headers


def test_metrics_follow_the_requests(cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc()
    study = upload(server, "metrics")[0]["ParentStudy"]
    path = "/studies/%s/instances-tags" % study
    before = metrics(server)
    first = server.get(path)
    server.get(path)
    server.get(path, headers={"If-None-Match": first.headers["ETag"]})
    after = metrics(server)
    assert after["orthanc_cache_misses"] == before["orthanc_cache_misses"] + 1
    assert after["orthanc_cache_hits"] == before["orthanc_cache_hits"] + 1
    assert after["orthanc_cache_not_modified"] == before["orthanc_cache_not_modified"] + 1
    assert after["orthanc_cache_entries"] >= 1 and after["orthanc_cache_size_bytes"] > 0
    for name in ("orthanc_cache_bypasses", "orthanc_cache_warm_up_queue", "orthanc_cache_warm_ups"):
        assert name in after


def test_bypasses_are_counted(cached_orthanc: Callable[..., OrthancServer], tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    server = cached_orthanc({"Directory": str(blocker / "cache")})
    study = upload(server, "bypass")[0]["ParentStudy"]
    for _ in range(3):
        assert server.get("/studies/%s/shared-tags" % study).headers["X-Cache-Status"] == "BYPASS"
    assert metrics(server)["orthanc_cache_bypasses"] == 3


def test_warm_ups_are_counted(cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc(config={"StableAge": 1})
    study = upload(server, "warm-metrics")[0]["ParentStudy"]
    server.wait_for_log(r"warm-up of studies %s: " % study, timeout=20)
    assert metrics(server)["orthanc_cache_warm_ups"] >= 1


def test_admin_api(cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc()
    instances = upload(server, "admin")
    study, series = instances[0]["ParentStudy"], instances[0]["ParentSeries"]
    paths = ["/studies/%s/shared-tags" % study, "/series/%s/shared-tags" % series,
             "/instances/%s/tags" % instances[0]["ID"]]
    for path in paths:
        server.get(path)
    statistics = server.get("/cache/statistics").json()
    assert statistics["Entries"] == 3 and statistics["Misses"] == 3
    for key in ("Hits", "NotModified", "Size", "Directory", "Configuration"):
        assert key in statistics
    assert statistics["Configuration"]["CacheControl"] == "no-cache"

    # Dropping a study drops its series' and instances' entries too.
    assert server.delete("/cache/studies/%s" % study).json() == {"Removed": 3}
    assert [server.get(path).headers["X-Cache-Status"] for path in paths] == ["MISS"] * 3
    assert server.delete("/cache/studies/unknown").status_code == 404
    assert server.post("/cache/series/unknown/warm-up").status_code == 404

    assert server.post("/cache/studies/%s/warm-up" % study).json()["Stored"] >= 1
    assert server.get(paths[0] + "?short").headers["X-Cache-Status"] == "HIT"

    assert server.delete("/cache").json()["Removed"] >= 1
    assert server.get("/cache/statistics").json()["Entries"] == 0
    assert server.get(paths[0]).headers["X-Cache-Status"] == "MISS"


def test_admin_api_prefix_and_authentication(cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc({"AdminPrefix": "/admin/cache"},
                            config={"AuthenticationEnabled": True,
                                    "RegisteredUsers": {"admin": "secret"}}, start=False)
    server.session.auth = ("admin", "secret")
    server.start()
    assert server.get("/admin/cache/statistics", auth=("admin", "wrong")).status_code == 401
    answer = server.get("/admin/cache/statistics")
    assert answer.status_code == 200 and answer.json()["Entries"] == 0
    assert server.get("/cache/statistics").status_code == 404


def test_with_authentication_answers_vary_on_authorization(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc(config={"AuthenticationEnabled": True,
                                    "RegisteredUsers": {"alice": "a"}}, start=False)
    server.session.auth = ("alice", "a")
    server.start()
    study = upload(server, "vary")[0]["ParentStudy"]
    vary = server.get("/studies/%s/shared-tags" % study).headers["Vary"]
    assert "Authorization" in [name.strip() for name in vary.split(",")]
