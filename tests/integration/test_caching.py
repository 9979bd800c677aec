"""The cache's own behaviour inside a real Orthanc: validators, 304s, store, warm-up."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable, Dict, List

import pytest

from orthanc_cache_plugin.core.data import Outcome
from orthanc_cache_plugin.core.routes import ROUTES, match
from support import stacks
from support.dicom_factory import make_instance, make_pdf_instance, make_study
from support.orthanc_server import OrthancServer

#: Also run on Debian 12's Orthanc 1.10.1 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

NO_GZIP = {"Accept-Encoding": "identity"}
SPEC_CACHE_CONTROL = "max-age=604800, s-maxage=604800, public"
ENTITY_TAG = re.compile(r'^(W/)?"[\x21\x23-\x7e]*"$')


#: Seconds after a change before answers are stored and validated by version
#: (freshness.SETTLE, 3 s).
SETTLE = 3.1


def upload_study(server: OrthancServer, seed: str = "caching", series: int = 2,
                 instances: int = 3, settle: bool = True) -> List[Dict[str, Any]]:
    """Upload a study; by default, wait until the plugin trusts its version."""
    uploaded = [server.upload(dicom) for dicom in make_study("PAT-" + seed, series, instances,
                                                             seed=seed)]
    if settle:
        time.sleep(SETTLE)
    return uploaded


def get(server: OrthancServer, path: str, **headers: str):
    return server.get(path, headers=dict(NO_GZIP, **headers))


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def parse_http_date(text: str) -> datetime:
    return datetime.strptime(text, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=timezone.utc)


@pytest.fixture
def server(cached_orthanc: Callable[..., OrthancServer]) -> OrthancServer:
    return cached_orthanc()


def test_a_200_carries_every_validator(server: OrthancServer) -> None:
    study = upload_study(server)[0]["ParentStudy"]
    answer = get(server, "/studies/%s/shared-tags" % study)
    assert answer.status_code == 200
    headers = answer.headers
    assert ENTITY_TAG.match(headers["ETag"])
    assert headers["Cache-Control"] == "no-cache"  # keep, but revalidate before each use
    date = parse_http_date(headers["Date"])
    assert abs((date - datetime.now(timezone.utc)).total_seconds()) < 5
    assert headers["Expires"] == headers["Date"]
    last_update = server.get("/studies/%s/metadata/LastUpdate" % study).text
    expected = datetime.strptime(last_update, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    assert parse_http_date(headers["Last-Modified"]) == expected
    assert headers["Vary"] == "Accept-Encoding"  # no Authorization: authentication is off
    assert re.search(r"cache plugin: Cache-Control 'no-cache', Vary 'Accept-Encoding': access "
                     r"is the same for every request", server.log_text()), server.log_tail()


def test_the_specifications_cache_control_is_a_setting(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    """For archives whose studies never change: kept a week without asking Orthanc."""
    server = cached_orthanc({"CacheControl": SPEC_CACHE_CONTROL})
    study = upload_study(server)[0]["ParentStudy"]
    for headers in ({}, {"If-None-Match": "*"}):
        answer = get(server, "/studies/%s/shared-tags" % study, **headers)
        assert answer.headers["Cache-Control"] == SPEC_CACHE_CONTROL
        assert parse_http_date(answer.headers["Expires"]) == \
            parse_http_date(answer.headers["Date"]) + timedelta(seconds=604800)


def every_cached_route(ids: Dict[str, str]) -> List[str]:
    """One path per row of routes.ROUTES that this Orthanc lets the plugin serve."""
    paths = []
    for route in ROUTES:
        if route.name in ("archive", "media") and not stacks.plugin_caches_archives():
            continue  # left to Orthanc from 1.12.8 on (no validators at all)
        resource = ids["pdf"] if route.name == "pdf" else ids[route.level.value]
        suffix = {"frame-image": "/frames/0/preview", "frame-data": "/frames/0/raw",
                  "study": ""}.get(route.name, "/" + route.name)
        paths.append("/%s/%s%s" % (route.level.value, resource, suffix))
    return paths


def test_every_cached_route_tells_clients_to_revalidate_by_default(
        server: OrthancServer) -> None:
    """Issue #17: the default keeps clients as fresh as the store, on every cached route,
    computed, stored and in 304s: no-cache, and Expires no later than Date."""
    instance = upload_study(server, seed="every-route", series=1, instances=1,
                            settle=False)[0]
    pdf = server.upload(make_pdf_instance("PAT-every-route", seed="every-route"))
    time.sleep(SETTLE)
    ids = {"patients": instance["ParentPatient"], "studies": instance["ParentStudy"],
           "series": instance["ParentSeries"], "instances": instance["ID"], "pdf": pdf["ID"]}
    paths = every_cached_route(ids)
    expected = {(route.level, route.name) for route in ROUTES
                if stacks.plugin_caches_archives() or route.name not in ("archive", "media")}
    assert {(found[0].level, found[0].name) for found in map(match, paths) if found} == expected
    for path in paths:
        for _ in range(2):  # computed, then stored (or validated again)
            answer = get(server, path)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
            assert answer.headers["Cache-Control"] == "no-cache", (path, dict(answer.headers))
            assert parse_http_date(answer.headers["Expires"]) <= \
                parse_http_date(answer.headers["Date"]), path
            assert "X-Cache-Status" in answer.headers and "ETag" in answer.headers, path
        revalidated = get(server, path, **{"If-None-Match": answer.headers["ETag"]})
        assert revalidated.status_code == 304, path
        assert revalidated.headers["Cache-Control"] == "no-cache", path
        assert revalidated.headers["Expires"] == revalidated.headers["Date"], path


def test_second_get_is_a_hit_with_the_same_body_and_etag(server: OrthancServer) -> None:
    study = upload_study(server)[0]["ParentStudy"]
    path = "/studies/%s/instances-tags" % study
    first, second = get(server, path), get(server, path)
    assert first.content == second.content and first.headers["ETag"] == second.headers["ETag"]
    assert server.outcomes(path) == [Outcome.MISS, Outcome.HIT]


def test_if_none_match_rules(server: OrthancServer) -> None:
    study = upload_study(server)[0]["ParentStudy"]
    path = "/studies/%s/shared-tags" % study
    first = get(server, path)
    etag = first.headers["ETag"]
    opaque = etag[2:] if etag.startswith("W/") else etag
    for value in (etag, opaque, '"other", %s' % etag, 'W/"a,b", %s, "c"' % opaque, "*"):
        answer = get(server, path, **{"If-None-Match": value})
        assert answer.status_code == 304, value
        assert answer.content == b""
        for name in ("ETag", "Cache-Control", "Expires", "Last-Modified", "Date"):
            assert name in answer.headers, (value, name)
        assert answer.headers["ETag"] == etag
        assert answer.headers["Last-Modified"] == first.headers["Last-Modified"]
    for value in ('"other"', "W/\"nope\"", "not-an-etag", '"unterminated'):
        answer = get(server, path, **{"If-None-Match": value})
        assert answer.status_code == 200 and answer.content == first.content, value


def test_if_modified_since_in_the_three_date_formats(server: OrthancServer) -> None:
    study = upload_study(server)[0]["ParentStudy"]
    path = "/studies/%s/shared-tags" % study
    first = get(server, path)
    modified = parse_http_date(first.headers["Last-Modified"])
    formats = (
        lambda moment: http_date(moment),
        lambda moment: moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
        lambda moment: (moment.strftime("%a %b ") + ("%2d" % moment.day)
                        + moment.strftime(" %H:%M:%S %Y")),
    )
    for render in formats:
        assert get(server, path, **{"If-Modified-Since": render(modified)}).status_code == 304
        earlier = get(server, path,
                      **{"If-Modified-Since": render(modified - timedelta(seconds=1))})
        assert earlier.status_code == 200 and earlier.content == first.content
    for invalid in ("yesterday", "Mon, 32 Feb 2023 10:00:00 GMT", ""):
        assert get(server, path, **{"If-Modified-Since": invalid}).status_code == 200
    # If-None-Match wins over a matching If-Modified-Since.
    both = get(server, path, **{"If-None-Match": '"other"',
                                "If-Modified-Since": http_date(modified)})
    assert both.status_code == 200


def test_no_304_for_what_orthanc_does_not_have(server: OrthancServer) -> None:
    upload_study(server, settle=False)
    for path in ("/studies/unknown/shared-tags", "/instances/unknown/preview"):
        answer = get(server, path, **{"If-None-Match": "*",
                                      "If-Modified-Since": http_date(datetime.now(timezone.utc))})
        assert answer.status_code == 404
        assert "ETag" not in answer.headers


def test_binary_routes_are_validated_but_not_stored_by_default(server: OrthancServer) -> None:
    instance = upload_study(server)[0]["ID"]
    path = "/instances/%s/preview" % instance
    first, second = get(server, path), get(server, path)
    assert first.headers["Content-Type"] == "image/png" and first.content == second.content
    assert server.outcomes(path) == [Outcome.MISS, Outcome.MISS]
    assert get(server, path, **{"If-None-Match": first.headers["ETag"]}).status_code == 304
    assert "Accept" in first.headers["Vary"]


def test_store_binary_keeps_each_representation_apart(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc({"StoreBinary": True})
    instance = upload_study(server)[0]["ID"]
    path = "/instances/%s/preview" % instance
    png = [get(server, path) for _ in range(2)]
    jpeg = [get(server, path, Accept="image/jpeg") for _ in range(2)]
    assert server.outcomes(path) == [Outcome.MISS, Outcome.HIT, Outcome.MISS, Outcome.HIT]
    assert ([answer.headers["Content-Type"] for answer in png + jpeg]
            == ["image/png"] * 2 + ["image/jpeg"] * 2)
    assert png[0].content == png[1].content and jpeg[0].content == jpeg[1].content
    assert png[0].headers["ETag"] != jpeg[0].headers["ETag"]
    assert get(server, path, Accept="image/jpeg",
               **{"If-None-Match": png[0].headers["ETag"]}).status_code == 200


def test_a_new_instance_replaces_the_stored_answer(server: OrthancServer) -> None:
    instances = upload_study(server, series=1, instances=2)
    series = instances[0]["ParentSeries"]
    path = "/series/%s/instances-tags" % series
    before = get(server, path)
    assert len(before.json()) == 2
    server.upload(make_instance("PAT-caching", study_uid=None, seed="caching", instance_number=3))
    after = get(server, path, **{"If-None-Match": before.headers["ETag"],
                                 "If-Modified-Since": before.headers["Last-Modified"]})
    assert after.status_code == 200 and len(after.json()) == 3
    assert after.headers["ETag"] != before.headers["ETag"]
    assert server.outcomes(path) == [Outcome.MISS, Outcome.MISS]


def test_warm_up_stores_answers_before_the_first_request(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc(config={"StableAge": 1})
    study = upload_study(server)[0]["ParentStudy"]
    server.wait_for_log(r"warm-up of studies %s: \d+ answers stored" % study, timeout=20)
    for variant in ("", "?short", "?simplify"):
        get(server, "/studies/%s/shared-tags%s" % (study, variant))
    assert server.outcomes("/studies/%s/shared-tags" % study) == [Outcome.HIT] * 3
    # A study's attachments come from Orthanc's index: computed at each request.
    get(server, "/studies/%s/attachments" % study)
    assert server.outcomes("/studies/%s/attachments" % study) == [Outcome.MISS]


def test_the_store_survives_a_restart(server: OrthancServer) -> None:
    study = upload_study(server)[0]["ParentStudy"]
    path = "/studies/%s/shared-tags" % study
    first = get(server, path)
    server.restart()
    again = get(server, path)
    assert again.content == first.content and again.headers["ETag"] == first.headers["ETag"]
    assert server.outcomes(path)[-1] == Outcome.HIT


def test_an_unusable_cache_directory_leaves_the_api_working(
        cached_orthanc: Callable[..., OrthancServer], tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = cached_orthanc({"Directory": str(blocker / "cache")})
    study = upload_study(server)[0]["ParentStudy"]
    path = "/studies/%s/shared-tags" % study
    answers = [get(server, path) for _ in range(3)]
    assert all(answer.status_code == 200 for answer in answers)
    assert answers[0].content == answers[2].content and answers[0].json()
    assert server.outcomes(path) == [Outcome.BYPASS] * 3
    log = server.log_text()
    assert log.count("cache store in %s failed" % (blocker / "cache")) == 1


@pytest.mark.parametrize("section", [
    {"MaximumSize": "big"}, {"Expiration": 0}, {"StoreBinary": "yes"}, {"NoSuchSetting": 1},
])
def test_invalid_settings_leave_orthanc_serving_without_the_cache(
        cached_orthanc: Callable[..., OrthancServer], section: Dict[str, Any]) -> None:
    server = cached_orthanc(section)
    study = upload_study(server, settle=False)[0]["ParentStudy"]
    answer = get(server, "/studies/%s/shared-tags" % study)
    assert answer.status_code == 200 and "ETag" not in answer.headers
    name = next(iter(section))
    assert re.search(r"cache plugin: not started, invalid settings: .*%s" % name, server.log_text())


def test_enable_false_registers_nothing(cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc({"Enable": False})
    study = upload_study(server, settle=False)[0]["ParentStudy"]
    assert "ETag" not in get(server, "/studies/%s/shared-tags" % study).headers


def test_keyword_arguments_override_the_configuration(
        cached_orthanc: Callable[..., OrthancServer], tmp_path, repo_root) -> None:
    script = tmp_path / "startup.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\n"
        "from orthanc_cache_plugin import enable_cache_plugin\n"
        "enable_cache_plugin(cache_control='private, max-age=60')\n" % str(repo_root))
    server = cached_orthanc({"CacheControl": "public, max-age=5"}, python_script=script)
    study = upload_study(server, settle=False)[0]["ParentStudy"]
    answer = get(server, "/studies/%s/shared-tags" % study)
    assert answer.headers["Cache-Control"] == "private, max-age=60"
    assert parse_http_date(answer.headers["Expires"]) == \
        parse_http_date(answer.headers["Date"]) + timedelta(seconds=60)


def test_last_modified_is_utc_whatever_orthancs_time_zone(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc(env={"TZ": "Pacific/Kiritimati"})  # UTC+14
    before = datetime.now(timezone.utc).replace(microsecond=0)
    study = upload_study(server, settle=False)[0]["ParentStudy"]
    after = datetime.now(timezone.utc)
    modified = parse_http_date(get(server,
                                   "/studies/%s/shared-tags" % study).headers["Last-Modified"])
    assert before - timedelta(seconds=1) <= modified <= after


def test_a_corrupt_cache_database_leaves_the_api_working(
        cached_orthanc: Callable[..., OrthancServer], tmp_path) -> None:
    directory = tmp_path / "corrupt-cache"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not an SQLite database" * 100)
    server = cached_orthanc({"Directory": str(directory)})
    study = upload_study(server)[0]["ParentStudy"]
    path = "/studies/%s/shared-tags" % study
    answers = [get(server, path) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json() == answers[1].json() and "ETag" in answers[0].headers
    assert server.outcomes(path) == [Outcome.BYPASS, Outcome.BYPASS]
    assert server.log_text().count("cache store in %s failed" % directory) == 1


def test_orthanc_stops_promptly_with_warm_up_pending(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = cached_orthanc(config={"StableAge": 1})
    for seed in ("stop-a", "stop-b", "stop-c"):
        upload_study(server, seed=seed, series=3, instances=3, settle=False)
    time.sleep(1.5)  # the stable events are being processed
    result = server.stop()
    assert result.returncode == 0 and not result.killed
    assert result.seconds < 8


def test_error_bodies_follow_http_describe_errors(
        cached_orthanc: Callable[..., OrthancServer],
        orthanc_factory: Callable[..., OrthancServer]) -> None:
    quiet = {"HttpDescribeErrors": False}
    servers = [cached_orthanc(config=quiet), orthanc_factory(config=quiet)]
    for path in ("/studies/unknown/shared-tags", "/instances/unknown/tags",
                 "/instances/unknown/preview"):
        answers = [get(server, path) for server in servers]
        assert [(a.status_code, a.content) for a in answers] == [(404, b"")] * 2, path


def test_answers_of_a_resource_changed_under_two_seconds_ago_are_not_stored(
        server: OrthancServer) -> None:
    """LastUpdate has a resolution of one second: a fresh version is not trusted."""
    study = upload_study(server, settle=False)[0]["ParentStudy"]
    path = "/studies/%s/shared-tags" % study
    first, second = get(server, path), get(server, path)
    assert server.outcomes(path) == [Outcome.MISS, Outcome.MISS]
    assert first.headers["ETag"] == second.headers["ETag"]  # same content
    assert get(server, path, **{"If-None-Match": first.headers["ETag"]}).status_code == 304
    last_update = server.get("/studies/%s/metadata/LastUpdate" % study).text
    modified = datetime.strptime(last_update, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    assert parse_http_date(first.headers["Last-Modified"]) == modified - timedelta(seconds=1)
    assert get(server, path, **{"If-Modified-Since": http_date(modified)}).status_code == 200
    time.sleep(SETTLE)
    settled = get(server, path)
    assert parse_http_date(settled.headers["Last-Modified"]) == modified
    assert settled.headers["ETag"] != first.headers["ETag"]
    assert get(server, path).headers["ETag"] == settled.headers["ETag"]
    assert server.outcomes(path)[-2:] == [Outcome.MISS, Outcome.HIT]
