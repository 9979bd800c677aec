"""Unit tests of orthanc_cache_plugin.cache.controller with a fake Origin and a real Store."""

from __future__ import annotations

import gzip
import os
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Tuple

import diskcache
import pytest

from orthanc_cache_plugin.cache.controller import CacheController
from orthanc_cache_plugin.cache.flights import Flights
from orthanc_cache_plugin.core import statistics
from orthanc_cache_plugin.core.data import Fetched, Identity, Outcome, Reply, Request, Version
from orthanc_cache_plugin.core.keys import cache_key, entity_tag
from orthanc_cache_plugin.core.settings import load_settings
from orthanc_cache_plugin.freshness.versions import SETTLE
from orthanc_cache_plugin.http.sharing import Sharing
from orthanc_cache_plugin.http.validators import format_http_date
from orthanc_cache_plugin.store.facade import Store
from support.request_factory import make_request

UTC = timezone.utc
NOW = datetime(2023, 2, 20, 15, 0, 0, tzinfo=UTC)
MODIFIED = datetime(2023, 2, 20, 14, 0, 0, tzinfo=UTC)
SALT = "orthanc 1.10.1, plugin test"
MB = 1024 * 1024
JSON = "application/json; charset=utf-8"
OUTCOMES = set(statistics.OUTCOMES)


class FakeOrigin:
    """Orthanc as the controller sees it: versions per resource, answers per URI."""

    def __init__(self) -> None:
        self.versions: Dict[str, Version] = {}
        self.answers: Dict[str, Tuple[str, bytes]] = {}
        self.failing = False
        #: Digests of Orthanc's index answers, by URI (routes with file arguments).
        self.index: Dict[str, str] = {}
        self.index_reads: List[str] = []
        self.fetches: List[Tuple[str, str, str]] = []
        self.plain: List[Tuple[str, str]] = []

    def set(self, resource: str, token: str, modified: Optional[datetime] = MODIFIED,
            settled: bool = True) -> None:
        self.versions[resource] = Version(token, modified, settled)

    def version(self, request: Request, now: datetime) -> Optional[Version]:
        return self.versions.get(request.resource_id)

    def fetch(self, request: Request, query: str, representation: str) -> Optional[Fetched]:
        self.fetches.append((request.uri, query, representation))
        if self.failing or request.uri not in self.answers:
            return None
        content_type, body = self.answers[request.uri]
        token = self.versions[request.resource_id].token
        return Fetched(representation or content_type,
                       body + ("|%s|%s|%s" % (token, query, representation)).encode(),
                       {"X-Origin": "yes"})

    def plain_answer(self, request: Request, reason: str) -> Reply:
        self.plain.append((request.uri, reason))
        return Reply(404, "PASS", reason, body=b"plain")

    def index_digest(self, request: Request) -> Optional[str]:
        self.index_reads.append(request.uri)
        return self.index.get(request.uri)


@pytest.fixture
def origin() -> FakeOrigin:
    fake = FakeOrigin()
    fake.set("st", "20230220T140000")
    fake.set("in", "20230220T140000")
    fake.answers["/studies/st/shared-tags"] = (JSON, b'{"tags": 1}')
    fake.answers["/studies/st/archive"] = ("application/zip", b"PK-archive")
    fake.answers["/instances/in/preview"] = ("image/png", b"\x89PNG")
    fake.answers["/instances/in/tags"] = (JSON, b'{"0010,0010": "x"}')
    return fake


def make_controller(tmp_path, store, origin, sharing=None, **overrides) -> CacheController:
    settings = load_settings({}, dict({"directory": str(tmp_path / "unused")}, **overrides))
    return CacheController(settings, store, origin, Identity(SALT), sharing=sharing,
                           clock=lambda: NOW)


@pytest.fixture
def controller(tmp_path, store, origin) -> CacheController:
    return make_controller(tmp_path, store, origin)


def our_etag(uri: str, token: str = "20230220T140000", query: str = "",
             representation: str = "") -> str:
    return entity_tag(SALT, cache_key(uri, query, representation), token)


def check_reply(reply: Reply) -> Reply:
    assert reply.reason and reply.reason.strip()
    assert reply.outcome in OUTCOMES
    return reply


# --- Miss, hit, versions ---------------------------------------------------------------------

def test_miss_then_hit(controller, origin, store):
    request = make_request("/studies/st/shared-tags")
    first = check_reply(controller.serve(request))
    assert (first.status, first.outcome) == (200, "MISS")
    assert first.content_type == JSON
    assert first.body == b'{"tags": 1}|20230220T140000||'
    assert origin.fetches == [("/studies/st/shared-tags", "", "")]
    assert store.count() == 1

    second = check_reply(controller.serve(request))
    assert (second.status, second.outcome) == (200, "HIT")
    assert second.body == first.body
    assert second.content_type == JSON
    assert second.headers == first.headers
    assert len(origin.fetches) == 1


def test_caching_headers_on_200(controller):
    """By default caches keep the answer but ask before each use: Expires is Date."""
    reply = controller.serve(make_request("/studies/st/shared-tags"))
    assert reply.headers == {
        "X-Origin": "yes",
        "Date": "Mon, 20 Feb 2023 15:00:00 GMT",
        "ETag": our_etag("/studies/st/shared-tags"),
        "Cache-Control": "no-cache",
        "Expires": "Mon, 20 Feb 2023 15:00:00 GMT",
        "Last-Modified": format_http_date(MODIFIED),
        # JSON may go out gzip-compressed (to clients that accept it).
        "Vary": "Accept-Encoding",
    }


def test_cache_control_setting_is_used(tmp_path, store, origin):
    controller = make_controller(tmp_path, store, origin,
                                 cache_control="max-age=604800, s-maxage=604800, public")
    reply = controller.serve(make_request("/studies/st/shared-tags"))
    assert reply.headers["Cache-Control"] == "max-age=604800, s-maxage=604800, public"
    assert reply.headers["Expires"] == "Mon, 27 Feb 2023 15:00:00 GMT"


def test_the_headers_sent_follow_the_sharing_of_the_moment(tmp_path, store, origin):
    """What the adapter decides (sharing.py), replaced whole when a script registers a filter."""
    controller = make_controller(tmp_path, store, origin,
                                 cache_control="max-age=60, s-maxage=60, public")
    request = make_request("/studies/st/shared-tags")
    assert controller.serve(request).headers["Cache-Control"] == "max-age=60, s-maxage=60, public"
    controller.sharing = Sharing("max-age=60, private", ("Authorization", "token"), ("a filter",))
    for reply in (controller.serve(request),
                  controller.serve(make_request("/studies/st/shared-tags",
                                                {"if-none-match": our_etag(request.uri)}))):
        assert reply.headers["Cache-Control"] == "max-age=60, private"
        assert reply.headers["Vary"] == "Authorization, token, Accept-Encoding"
        assert reply.headers["Expires"] == "Mon, 20 Feb 2023 15:01:00 GMT"


def test_no_last_modified_when_the_version_has_no_date(controller, origin):
    origin.set("st", "opaque-token", modified=None)
    reply = controller.serve(make_request("/studies/st/shared-tags"))
    assert "Last-Modified" not in reply.headers
    assert reply.headers["ETag"] == our_etag("/studies/st/shared-tags", "opaque-token")


def test_vary_headers(tmp_path, store, origin):
    controller = make_controller(tmp_path, store, origin, Sharing("no-cache", ("Accept-Encoding",)))
    assert controller.serve(make_request("/instances/in/preview")).headers["Vary"] == \
        "Accept-Encoding, Accept"
    assert controller.serve(make_request("/instances/in/tags")).headers["Vary"] == "Accept-Encoding"
    plain = make_controller(tmp_path, store, origin)
    # JSON may go out gzip-compressed by the plugin; binaries never.
    assert plain.serve(make_request("/instances/in/tags")).headers["Vary"] == "Accept-Encoding"
    assert plain.serve(make_request("/instances/in/preview")).headers["Vary"] == "Accept"
    plain.gzip_offered = False  # where Orthanc would compress it again
    assert "Vary" not in plain.serve(make_request("/instances/in/tags")).headers


def test_outdated_version_is_refetched_and_replaced(controller, origin, store):
    request = make_request("/studies/st/shared-tags")
    old = controller.serve(request)
    assert controller.serve(request).outcome == "HIT"

    origin.set("st", "20230220T150000")
    new = check_reply(controller.serve(request))
    assert (new.status, new.outcome) == (200, "STALE-REFRESHED")
    assert "outdated" in new.reason
    assert new.body == b'{"tags": 1}|20230220T150000||'
    assert new.headers["ETag"] != old.headers["ETag"]
    assert new.headers["ETag"] == our_etag("/studies/st/shared-tags", "20230220T150000")
    assert len(origin.fetches) == 2
    # the store never holds two versions of one key
    assert store.count() == 1
    assert store.get(cache_key("/studies/st/shared-tags", "", "")).version == \
        controller.identity.salt + "|20230220T150000"

    again = controller.serve(request)
    assert again.outcome == "HIT" and again.body == new.body


def test_old_etag_after_a_change_gets_200(controller, origin):
    request = make_request("/studies/st/shared-tags")
    old_etag = controller.serve(request).headers["ETag"]
    origin.set("st", "20230220T150000")
    reply = check_reply(controller.serve(make_request("/studies/st/shared-tags",
                                                      headers={"if-none-match": old_etag})))
    assert reply.status == 200
    assert reply.body.endswith(b"|20230220T150000||")


def test_query_and_representation_are_part_of_the_key(controller, origin, store):
    controller.serve(make_request("/studies/st/shared-tags"))
    short = controller.serve(make_request("/studies/st/shared-tags", {"short": ""}))
    assert short.outcome == "MISS"
    assert origin.fetches[-1] == ("/studies/st/shared-tags", "short=", "")
    assert short.headers["ETag"] != our_etag("/studies/st/shared-tags")

    png = controller.serve(make_request("/instances/in/preview"))
    jpeg = controller.serve(make_request("/instances/in/preview", headers={"accept": "image/jpeg"}))
    assert origin.fetches[-2:] == [("/instances/in/preview", "", "image/png"),
                                   ("/instances/in/preview", "", "image/jpeg")]
    assert png.content_type == "image/png" and jpeg.content_type == "image/jpeg"
    assert png.headers["ETag"] != jpeg.headers["ETag"]


def test_arguments_are_normalized(controller, origin):
    controller.serve(make_request("/studies/st/shared-tags", {"short": "", "a": "1"}))
    reply = controller.serve(make_request("/studies/st/shared-tags", {"a": "1", "short": ""}))
    assert reply.outcome == "HIT"
    assert origin.fetches == [("/studies/st/shared-tags", "a=1&short=", "")]


# --- 304 -------------------------------------------------------------------------------------

def test_304_with_our_etag_without_a_stored_entry(controller, origin, store):
    uri = "/studies/st/shared-tags"
    reply = check_reply(controller.serve(make_request(uri,
                                                      headers={"if-none-match": our_etag(uri)})))
    assert (reply.status, reply.outcome) == (304, "REVALIDATED")
    assert reply.body == b""
    assert reply.headers["ETag"] == our_etag(uri)
    assert reply.headers["Cache-Control"] and reply.headers["Expires"] and reply.headers["Date"]
    assert origin.fetches == []
    assert store.count() == 0


def test_304_with_our_etag_in_a_list_and_in_strong_form(controller, origin):
    uri = "/studies/st/shared-tags"
    strong = our_etag(uri)[2:]
    for value in ('"other", ' + our_etag(uri), strong, 'W/"a", ' + strong + ', "b"'):
        reply = controller.serve(make_request(uri, headers={"if-none-match": value}))
        assert reply.status == 304, value
    assert origin.fetches == []


def test_etag_of_another_representation_gives_200(controller, origin):
    uri = "/instances/in/preview"
    png_etag = controller.serve(make_request(uri)).headers["ETag"]
    assert png_etag == our_etag(uri, representation="image/png")
    jpeg = controller.serve(make_request(uri, headers={"accept": "image/jpeg",
                                                       "if-none-match": png_etag}))
    assert jpeg.status == 200 and jpeg.content_type == "image/jpeg"
    png = controller.serve(make_request(uri, headers={"accept": "image/png",
                                                      "if-none-match": png_etag}))
    assert png.status == 304


def test_304_after_a_stored_answer(controller, origin):
    uri = "/studies/st/shared-tags"
    etag = controller.serve(make_request(uri)).headers["ETag"]
    reply = check_reply(controller.serve(make_request(uri, headers={"if-none-match": etag})))
    assert reply.status == 304
    assert len(origin.fetches) == 1


def test_non_matching_if_none_match_gets_200(controller, origin):
    reply = controller.serve(make_request("/studies/st/shared-tags",
                                          headers={"if-none-match": '"something-else"'}))
    assert reply.status == 200 and reply.outcome == "MISS"


def test_our_etag_is_not_enough_for_an_unknown_resource(controller, origin):
    uri = "/studies/st/shared-tags"
    etag = our_etag(uri)
    del origin.versions["st"]
    reply = controller.serve(make_request(uri, headers={"if-none-match": etag}))
    assert reply.status == 404 and reply.body == b"plain"
    assert origin.plain == [(uri, "unknown resource")]


def test_star_gives_304_when_stored(controller, origin):
    uri = "/studies/st/shared-tags"
    controller.serve(make_request(uri))
    reply = check_reply(controller.serve(make_request(uri, headers={"if-none-match": "*"})))
    assert reply.status == 304
    assert len(origin.fetches) == 1


def test_star_gives_304_when_fetched(controller, origin, store):
    uri = "/studies/st/shared-tags"
    reply = check_reply(controller.serve(make_request(uri, headers={"if-none-match": "*"})))
    assert (reply.status, reply.outcome) == (304, "REVALIDATED")
    assert "Orthanc" in reply.reason
    assert len(origin.fetches) == 1
    assert store.count() == 1   # what was fetched is kept
    assert controller.serve(make_request(uri)).outcome == "HIT"


def test_star_never_gives_304_when_the_origin_fails(controller, origin):
    origin.failing = True
    uri = "/studies/st/shared-tags"
    reply = check_reply(controller.serve(make_request(uri, headers={"if-none-match": "*"})))
    assert reply.status == 404 and reply.body == b"plain"
    assert origin.plain == [(uri, "Orthanc answered an error")]


def test_star_never_gives_304_for_a_missing_representation(controller, origin):
    uri = "/studies/st/archive"
    del origin.answers[uri]
    reply = controller.serve(make_request(uri, headers={"if-none-match": "*"}))
    assert reply.status != 304


def test_star_with_an_outdated_stored_entry_asks_the_origin(controller, origin):
    uri = "/studies/st/shared-tags"
    controller.serve(make_request(uri))
    origin.set("st", "20230220T150000")
    origin.failing = True
    reply = controller.serve(make_request(uri, headers={"if-none-match": "*"}))
    assert reply.status == 404
    assert len(origin.fetches) == 2


SINCE_LATER = "Mon, 20 Feb 2023 14:30:00 GMT"


def test_if_modified_since_gives_304_when_stored(controller, origin):
    uri = "/studies/st/shared-tags"
    controller.serve(make_request(uri))
    reply = check_reply(controller.serve(make_request(uri,
                                                      headers={"if-modified-since": SINCE_LATER})))
    assert reply.status == 304
    assert len(origin.fetches) == 1


def test_if_modified_since_gives_304_when_fetched(controller, origin):
    uri = "/studies/st/shared-tags"
    reply = check_reply(controller.serve(make_request(uri,
                                                      headers={"if-modified-since": SINCE_LATER})))
    assert reply.status == 304
    assert len(origin.fetches) == 1


def test_if_modified_since_never_gives_304_when_the_origin_fails(controller, origin):
    origin.failing = True
    uri = "/studies/st/shared-tags"
    reply = check_reply(controller.serve(make_request(uri,
                                                      headers={"if-modified-since": SINCE_LATER})))
    assert reply.status == 404 and reply.body == b"plain"


def test_if_modified_since_older_gives_200(controller, origin):
    uri = "/studies/st/shared-tags"
    controller.serve(make_request(uri))
    earlier = {"if-modified-since": "Mon, 20 Feb 2023 13:59:59 GMT"}
    reply = controller.serve(make_request(uri, headers=earlier))
    assert (reply.status, reply.outcome) == (200, "HIT")


def test_if_modified_since_in_the_future_gives_200(controller, origin):
    uri = "/studies/st/shared-tags"
    controller.serve(make_request(uri))
    future = {"if-modified-since": "Mon, 20 Feb 2023 15:00:01 GMT"}
    reply = controller.serve(make_request(uri, headers=future))
    assert reply.status == 200


def test_if_none_match_takes_precedence(controller, origin):
    uri = "/studies/st/shared-tags"
    controller.serve(make_request(uri))
    reply = controller.serve(make_request(uri, headers={"if-none-match": '"other"',
                                                        "if-modified-since": SINCE_LATER}))
    assert reply.status == 200


# --- Binary routes, sizes --------------------------------------------------------------------

def test_an_answer_stored_by_another_orthanc_version_is_not_served(controller, origin):
    """Output formats change between Orthanc versions: the salt names the version."""
    request = make_request("/studies/st/shared-tags")
    controller.serve(request)
    assert controller.serve(request).outcome == "HIT"
    controller.identity = Identity(controller.identity.salt.replace("1.10.1", "1.13.0"))
    again = check_reply(controller.serve(request))
    assert (again.outcome, len(origin.fetches)) == ("STALE-REFRESHED", 2)
    assert controller.serve(request).outcome == "HIT"


def test_binary_not_stored_when_store_binary_is_off(controller, origin, store):
    uri = "/studies/st/archive"
    first = check_reply(controller.serve(make_request(uri)))
    assert (first.status, first.outcome) == (200, "MISS")
    assert "StoreBinary" in first.reason
    marker = store.get(cache_key(uri, "", ""))
    assert marker is not None and marker.body is None
    assert marker.version == controller.identity.salt + "|20230220T140000"
    assert marker.content_type == "application/zip"

    second = check_reply(controller.serve(make_request(uri)))
    assert (second.status, second.outcome) == (200, "MISS")
    assert second.body == first.body
    assert len(origin.fetches) == 2
    assert store.count() == 1


def test_binary_without_body_is_still_validated(controller, origin):
    uri = "/studies/st/archive"
    etag = controller.serve(make_request(uri)).headers["ETag"]
    assert controller.serve(make_request(uri, headers={"if-none-match": etag})).status == 304
    assert controller.serve(make_request(uri, headers={"if-none-match": "*"})).status == 304
    assert controller.serve(make_request(uri,
                                         headers={"if-modified-since": SINCE_LATER})).status == 304
    assert len(origin.fetches) == 1


def test_reason_of_a_refetch_behind_a_marker_entry(controller, origin):
    uri = "/studies/st/archive"
    controller.serve(make_request(uri))
    second = controller.serve(make_request(uri))
    assert "outdated" not in second.reason


def test_binary_stored_when_store_binary_is_on(tmp_path, store, origin):
    controller = make_controller(tmp_path, store, origin, store_binary=True)
    uri = "/instances/in/preview"
    first = controller.serve(make_request(uri))
    second = check_reply(controller.serve(make_request(uri)))
    assert (second.status, second.outcome) == (200, "HIT")
    assert second.body == first.body and second.content_type == "image/png"
    assert len(origin.fetches) == 1


def test_json_always_stored_even_with_store_binary_off(controller, origin):
    controller.serve(make_request("/instances/in/tags"))
    assert controller.serve(make_request("/instances/in/tags")).outcome == "HIT"


def test_maximum_entry_size(tmp_path, store, origin):
    controller = make_controller(tmp_path, store, origin, maximum_entry_size=1)
    suffix = len(b"|20230220T140000||")
    # The size that counts is the stored one: incompressible bodies are kept as they are.
    origin.answers["/studies/st/shared-tags"] = (JSON, os.urandom(MB + 1 - suffix))
    origin.answers["/instances/in/tags"] = (JSON, os.urandom(MB - suffix))

    big = check_reply(controller.serve(make_request("/studies/st/shared-tags")))
    assert big.status == 200 and len(big.body) == MB + 1
    assert "MaximumEntrySize" in big.reason
    assert store.get(cache_key("/studies/st/shared-tags", "", "")).body is None
    again = controller.serve(make_request("/studies/st/shared-tags"))
    assert again.outcome == "MISS" and again.body == big.body

    fits = controller.serve(make_request("/instances/in/tags"))
    assert len(fits.body) == MB and "not kept" not in fits.reason
    assert controller.serve(make_request("/instances/in/tags")).outcome == "HIT"


# --- Store failures --------------------------------------------------------------------------

def test_unavailable_store_gives_bypass_and_the_right_body(tmp_path, origin):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    warnings: List[str] = []
    broken = Store(str(blocker / "store"), 64 * MB, 3600, warn=warnings.append)
    assert not broken.available
    controller = make_controller(tmp_path, broken, origin)

    uri = "/studies/st/shared-tags"
    for _ in range(2):
        reply = check_reply(controller.serve(make_request(uri)))
        assert (reply.status, reply.outcome) == (200, "BYPASS")
        assert reply.body == b'{"tags": 1}|20230220T140000||'
        assert reply.content_type == JSON
        assert "store unavailable" in reply.reason
        assert reply.headers["ETag"] == our_etag(uri)
    assert len(origin.fetches) == 2
    # validators still work without a store
    assert controller.serve(make_request(uri,
                                         headers={"if-none-match": our_etag(uri)})).status == 304
    assert controller.serve(make_request(uri,
                                         headers={"if-modified-since": SINCE_LATER})).status == 304
    assert len(warnings) == 1


def test_store_failing_while_serving(controller, origin, store, warnings, monkeypatch):
    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("database disk image is malformed")

    monkeypatch.setattr(diskcache.Cache, "set", broken)
    reply = check_reply(controller.serve(make_request("/studies/st/shared-tags")))
    assert (reply.status, reply.outcome) == (200, "BYPASS")
    assert reply.body == b'{"tags": 1}|20230220T140000||'
    assert len(warnings) == 1


def test_store_failing_on_read(controller, origin, store, monkeypatch):
    controller.serve(make_request("/studies/st/shared-tags"))

    def broken(*args, **kwargs):
        raise OSError("I/O error")

    monkeypatch.setattr(diskcache.Cache, "get", broken)
    reply = check_reply(controller.serve(make_request("/studies/st/shared-tags")))
    assert (reply.status, reply.outcome) == (200, "BYPASS")
    assert reply.body == b'{"tags": 1}|20230220T140000||'


# --- Refusals and plain answers --------------------------------------------------------------

def test_unknown_resource_goes_to_plain_answer(controller, origin, store):
    reply = check_reply(controller.serve(make_request("/studies/nope/shared-tags")))
    assert reply.status == 404 and reply.outcome == "PASS" and reply.body == b"plain"
    assert origin.plain == [("/studies/nope/shared-tags", "unknown resource")]
    assert origin.fetches == []
    assert store.count() == 0


def test_origin_error_goes_to_plain_answer_and_is_not_stored(controller, origin, store):
    origin.failing = True
    reply = check_reply(controller.serve(make_request("/instances/in/tags")))
    assert reply.body == b"plain"
    assert store.count() == 0
    origin.failing = False
    assert controller.serve(make_request("/instances/in/tags")).outcome == "MISS"


@pytest.mark.parametrize("accept", ["text/html", "image/jpeg;q=5", ""])
def test_refused_accept_goes_to_plain_answer(controller, origin, accept):
    reply = check_reply(controller.serve(make_request("/instances/in/preview",
                                                      headers={"accept": accept})))
    assert reply.body == b"plain"
    assert origin.fetches == []
    assert len(origin.plain) == 1


def test_dicomweb_file_goes_to_plain_answer(controller, origin):
    origin.answers["/instances/in/file"] = ("application/dicom", b"DICM")
    reply = controller.serve(make_request("/instances/in/file",
                                          headers={"accept": "application/dicom+json"}))
    assert reply.body == b"plain" and origin.fetches == []
    dicom = controller.serve(make_request("/instances/in/file"))
    assert dicom.status == 200 and dicom.content_type == "application/dicom"


@pytest.mark.parametrize("uri, arguments, headers, failing, known, store_binary", [
    (uri, arguments, headers, failing, known, store_binary)
    for uri in ("/studies/st/shared-tags", "/studies/st/archive", "/instances/in/preview")
    for arguments in ({}, {"short": ""})
    for headers in ({}, {"if-none-match": "*"}, {"if-modified-since": SINCE_LATER},
                    {"if-none-match": "garbage"}, {"accept": "image/gif;q=9"})
    for failing in (False, True)
    for known in (False, True)
    for store_binary in (False, True)
])
def test_every_reply_has_a_reason(tmp_path, store, origin, uri, arguments, headers, failing,
                                  known, store_binary):
    """Two identical requests in a row, in every combination: each reply has a reason,
    and the status and outcome that the policy gives (stated again here, plainly)."""
    controller = make_controller(tmp_path, store, origin, store_binary=store_binary)
    origin.failing = failing
    if not known:
        origin.versions.clear()
    replies = [check_reply(controller.serve(make_request(uri, arguments, headers)))
               for _ in range(2)]
    assert [(reply.status, reply.outcome) for reply in replies] == \
        expected_replies(uri, headers, failing, known, store_binary)


def expected_replies(uri: str, headers: Dict[str, str], failing: bool, known: bool,
                     store_binary: bool) -> List[Tuple[int, Outcome]]:
    """(status, outcome) of two identical requests in a row."""
    refused = uri.endswith("/preview") and "accept" in headers  # image/gif: not an image we make
    if not known or refused or failing:
        return [(404, Outcome.PASS)] * 2  # Orthanc's own answer (the fake's plain 404)
    if headers.get("if-none-match") == "*" or "if-modified-since" in headers:
        return [(304, Outcome.REVALIDATED)] * 2  # it exists: Orthanc said so, then the store
    kept_whole = uri.endswith("/shared-tags") or store_binary
    return [(200, Outcome.MISS), (200, Outcome.HIT if kept_whole else Outcome.MISS)]


# --- Warm-up ---------------------------------------------------------------------------------

def test_warm_stores_then_serve_hits(controller, origin, store):
    request = make_request("/studies/st/shared-tags", {"short": ""})
    assert controller.warm(request) is True
    assert controller.warm(request) is False          # already stored at this version
    assert len(origin.fetches) == 1
    reply = controller.serve(make_request("/studies/st/shared-tags", {"short": ""}))
    assert reply.outcome == "HIT"
    origin.set("st", "20230220T150000")
    assert controller.warm(request) is True
    assert store.count() == 1


def test_warm_unknown_or_failing(controller, origin, store):
    assert controller.warm(make_request("/studies/nope/shared-tags")) is False
    origin.failing = True
    assert controller.warm(make_request("/studies/st/shared-tags")) is False
    assert store.count() == 0


def test_warm_with_a_broken_store(tmp_path, origin):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    broken = Store(str(blocker / "store"), 64 * MB, 3600, warn=lambda message: None)
    controller = make_controller(tmp_path, broken, origin)
    assert controller.warm(make_request("/studies/st/shared-tags")) is False


# Versions that have not settled yet (a change less than SETTLE ago) -----------------

def test_unsettled_answers_are_neither_stored_nor_served_from_the_store(controller, origin):
    uri = "/studies/st/shared-tags"
    origin.set("st", "20230220T140000|g1", settled=False)
    replies = [check_reply(controller.serve(make_request(uri))) for _ in range(2)]
    assert [reply.outcome for reply in replies] == ["MISS", "MISS"]
    assert len(origin.fetches) == 2 and controller.store.count() == 0


def test_unsettled_etag_follows_the_content_and_if_modified_since_never_matches(controller, origin):
    uri = "/studies/st/shared-tags"
    origin.set("st", "20230220T140000|g1", settled=False)
    first = controller.serve(make_request(uri))
    assert first.headers["Last-Modified"] == format_http_date(MODIFIED.replace(second=0)
                                                              - timedelta(seconds=1))
    same = controller.serve(make_request(uri, headers={"if-none-match": first.headers["ETag"]}))
    assert same.status == 304
    since = controller.serve(make_request(uri,
                                          headers={"if-modified-since": format_http_date(NOW)}))
    assert since.status == 200
    origin.answers[uri] = (JSON, b'{"tags": 2}')  # changed within the same LastUpdate second
    changed = controller.serve(make_request(uri, headers={"if-none-match": first.headers["ETag"]}))
    assert changed.status == 200 and changed.body.startswith(b'{"tags": 2}')


def test_a_settled_etag_differs_from_the_unsettled_one(controller, origin):
    uri = "/studies/st/shared-tags"
    origin.set("st", "20230220T140000|g1", settled=False)
    young = controller.serve(make_request(uri)).headers["ETag"]
    origin.set("st", "20230220T140000|g1", settled=True)
    assert controller.serve(make_request(uri)).headers["ETag"] != young
    assert controller.serve(make_request(uri, headers={"if-none-match": young})).status == 200


def test_warm_waits_for_the_version_to_settle(tmp_path, store, origin):
    naps = []
    settings = load_settings({}, {"directory": str(tmp_path / "unused")})
    controller = CacheController(settings, store, origin, Identity(SALT), clock=lambda: NOW)
    origin.set("st", "t", modified=NOW, settled=False)
    assert controller.warm(make_request("/studies/st/shared-tags"),
                           lambda seconds: (naps.append(seconds),
                                            origin.set("st", "t", settled=True)))
    assert naps == [SETTLE.total_seconds()]


# --- Concurrent misses: one computes, the others wait for it (flights.py) --------------------

THREADS = 16


class GatedOrigin(FakeOrigin):
    """A FakeOrigin whose first fetch (every fetch with ``hold_all``) blocks until
    ``gate`` is set; the first one fails or raises on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.first_fetch = threading.Event()
        self.first_fails = False
        self.first_raises = False
        self.hold_all = False
        self.started = 0
        self._lock = threading.Lock()

    def fetch(self, request: Request, query: str, representation: str) -> Optional[Fetched]:
        with self._lock:
            first = not self.first_fetch.is_set()
            self.first_fetch.set()
            self.started += 1
        if first or self.hold_all:
            assert self.gate.wait(30)
        if first:
            if self.first_raises:
                raise RuntimeError("Orthanc went away")
            if self.first_fails:
                self.fetches.append((request.uri, query, representation))
                return None
        with self._lock:
            return super().fetch(request, query, representation)


class CountingFlights(Flights):
    """Flights that count the requests that found one in the air."""

    def __init__(self) -> None:
        super().__init__()
        self.followers = 0

    def join(self, key):
        flight, leading = super().join(key)
        if not leading:
            with self._lock:
                self.followers += 1
        return flight, leading


@pytest.fixture
def gated(origin) -> GatedOrigin:
    fake = GatedOrigin()
    fake.versions, fake.answers = origin.versions, origin.answers
    return fake


def concurrent_controller(tmp_path, store, origin, **overrides) -> CacheController:
    controller = make_controller(tmp_path, store, origin, **overrides)
    controller.flights = CountingFlights()
    return controller


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def serve_together(controller: CacheController, origin: GatedOrigin, requests: List[Request],
                   alone: bool = False) -> List[Reply]:
    """Serve ``requests`` in threads started together.  The first fetch is held until
    all the other requests wait for its flight; ``alone``: every fetch is held until
    all requests fetch."""
    origin.hold_all = alone
    if alone:
        def ready() -> bool:
            return origin.started == len(requests)
    else:
        def ready() -> bool:
            return controller.flights.followers == len(requests) - 1 and origin.first_fetch.is_set()
    barrier = threading.Barrier(len(requests))
    replies: List[Optional[Reply]] = [None] * len(requests)
    errors: List[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait(10)
            replies[index] = controller.serve(requests[index])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=body, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    try:
        wait_until(ready)
    finally:
        origin.gate.set()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert len(controller.flights) == 0
    assert errors == []
    return [check_reply(reply) for reply in replies if reply is not None]


def test_concurrent_misses_fetch_once_and_share_the_body(tmp_path, store, gated):
    controller = concurrent_controller(tmp_path, store, gated)
    uri = "/studies/st/shared-tags"
    replies = serve_together(controller, gated, [make_request(uri) for _ in range(THREADS)])
    assert len(gated.fetches) == 1
    assert sorted(reply.outcome for reply in replies) == ["HIT"] * (THREADS - 1) + ["MISS"]
    assert {reply.body for reply in replies} == {b'{"tags": 1}|20230220T140000||'}
    assert {reply.reason for reply in replies if reply.outcome == "HIT"} == \
        {"computed by a concurrent request"}
    assert all(reply.headers == replies[0].headers for reply in replies)
    assert all(reply.status == 200 and reply.content_type == JSON for reply in replies)
    assert controller.serve(make_request(uri)).reason == "stored at this version"


def test_a_waiting_conditional_request_gets_its_304(tmp_path, store, gated):
    controller = concurrent_controller(tmp_path, store, gated)
    uri = "/studies/st/shared-tags"
    replies = serve_together(controller, gated, [
        make_request(uri), make_request(uri, headers={"if-modified-since": SINCE_LATER}),
        make_request(uri, headers={"if-none-match": '"other"'})])
    assert len(gated.fetches) == 1
    statuses = sorted((reply.status, reply.outcome) for reply in replies)
    assert (304, "REVALIDATED") in statuses and statuses.count((200, "HIT")) + \
        statuses.count((200, "MISS")) == 2
    revalidated = [reply for reply in replies if reply.status == 304]
    assert len(revalidated) == 1 and revalidated[0].body == b""


def test_waiters_compute_themselves_when_the_leader_gets_an_error(tmp_path, store, gated):
    gated.first_fails = True
    controller = concurrent_controller(tmp_path, store, gated)
    uri = "/instances/in/tags"
    replies = serve_together(controller, gated, [make_request(uri) for _ in range(4)])
    # The leader gets Orthanc's error, alone; the others ask Orthanc themselves.
    assert len(gated.fetches) == 4
    assert sorted(reply.status for reply in replies) == [200, 200, 200, 404]
    assert [reply.body for reply in replies if reply.status == 404] == [b"plain"]
    assert [reply.outcome for reply in replies if reply.status == 200] == ["MISS"] * 3


def test_orthanc_errors_are_never_shared(tmp_path, store, gated):
    gated.failing = True
    controller = concurrent_controller(tmp_path, store, gated)
    replies = serve_together(controller, gated,
                             [make_request("/instances/in/tags") for _ in range(4)])
    assert len(gated.fetches) == 4 and len(gated.plain) == 4
    assert all(reply.body == b"plain" for reply in replies)


def test_waiters_compute_themselves_when_the_leader_raises(tmp_path, store, gated):
    gated.first_raises = True
    controller = concurrent_controller(tmp_path, store, gated)
    uri = "/studies/st/shared-tags"
    requests = [make_request(uri) for _ in range(4)]
    barrier = threading.Barrier(len(requests))
    outcomes: List[object] = []

    def body(request: Request) -> None:
        barrier.wait(10)
        try:
            outcomes.append(controller.serve(request).outcome.value)
        except RuntimeError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=body, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    wait_until(lambda: controller.flights.followers == 3)
    gated.gate.set()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes, key=str)[-1] == "Orthanc went away"
    assert len([o for o in outcomes if o in ("MISS", "HIT")]) == 3
    assert len(controller.flights) == 0


def test_a_waiter_computes_itself_after_lock_timeout(tmp_path, store, gated):
    controller = concurrent_controller(tmp_path, store, gated, lock_timeout=1)
    uri = "/studies/st/shared-tags"
    leader = threading.Thread(target=controller.serve, args=(make_request(uri),))
    leader.start()
    try:
        assert gated.first_fetch.wait(10)
        started = time.monotonic()
        reply = controller.serve(make_request(uri))
        waited = time.monotonic() - started
    finally:
        gated.gate.set()
        leader.join(30)
    assert 0.9 <= waited < 10
    assert (reply.status, reply.outcome) == (200, "MISS")
    assert reply.body == b'{"tags": 1}|20230220T140000||'
    assert len(gated.fetches) == 2


def test_other_keys_and_versions_do_not_wait(tmp_path, store, gated):
    controller = concurrent_controller(tmp_path, store, gated)
    uri = "/studies/st/shared-tags"
    leader = threading.Thread(target=controller.serve, args=(make_request(uri),))
    leader.start()
    try:
        assert gated.first_fetch.wait(10)
        others = [controller.serve(make_request(uri, {"short": ""})),
                  controller.serve(make_request("/instances/in/tags")),
                  controller.serve(make_request("/instances/in/preview",
                                                headers={"accept": "image/jpeg"}))]
        gated.set("st", "20230220T150000")  # a new version: does not wait for the old one
        others.append(controller.serve(make_request(uri)))
        assert not gated.gate.is_set() and leader.is_alive()
    finally:
        gated.gate.set()
        leader.join(30)
    assert [reply.outcome for reply in others] == ["MISS"] * 4
    assert others[-1].body == b'{"tags": 1}|20230220T150000||'
    assert controller.flights.followers == 0


def test_unstored_binaries_are_shared(tmp_path, store, gated):
    controller = concurrent_controller(tmp_path, store, gated)  # StoreBinary off
    uri = "/studies/st/archive"
    replies = serve_together(controller, gated, [make_request(uri) for _ in range(4)])
    assert len(gated.fetches) == 1
    assert sorted(reply.outcome for reply in replies) == ["HIT", "HIT", "HIT", "MISS"]
    assert {reply.body for reply in replies} == {b"PK-archive|20230220T140000||"}
    assert {reply.content_type for reply in replies} == {"application/zip"}


def test_nothing_is_shared_when_the_store_fails(tmp_path, gated):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    broken = Store(str(blocker / "store"), 64 * MB, 3600, warn=lambda message: None)
    controller = concurrent_controller(tmp_path, broken, gated)
    replies = serve_together(controller, gated,
                             [make_request("/studies/st/shared-tags") for _ in range(4)])
    assert len(gated.fetches) == 4
    assert [reply.outcome for reply in replies] == ["BYPASS"] * 4
    assert controller.flights.followers == 3


def test_unsettled_versions_are_not_coalesced(tmp_path, store, gated):
    gated.set("st", "20230220T140000|g1", settled=False)
    controller = concurrent_controller(tmp_path, store, gated)
    replies = serve_together(controller, gated,
                             [make_request("/studies/st/shared-tags") for _ in range(4)],
                             alone=True)
    assert len(gated.fetches) == 4
    assert [reply.outcome for reply in replies] == ["MISS"] * 4


def test_lock_timeout_zero_never_waits(tmp_path, store, gated):
    controller = concurrent_controller(tmp_path, store, gated, lock_timeout=0)
    replies = serve_together(controller, gated,
                             [make_request("/studies/st/shared-tags") for _ in range(4)],
                             alone=True)
    assert len(gated.fetches) == 4
    assert [reply.outcome for reply in replies] == ["MISS"] * 4


def test_a_leader_reads_the_store_again_after_joining(controller, origin, store, monkeypatch):
    uri = "/studies/st/shared-tags"
    controller.serve(make_request(uri))
    real_get, reads = store.get, []

    def get_missing_once(key, wanted=None):
        # As if a concurrent flight stored the answer between the first read and join().
        reads.append(key)
        return None if len(reads) == 1 else real_get(key, wanted)

    monkeypatch.setattr(store, "get", get_missing_once)
    reply = controller.serve(make_request(uri))
    assert (reply.outcome, reply.reason) == ("HIT", "stored at this version")
    assert len(reads) == 2 and len(origin.fetches) == 1


# --- Content codings (http.encoding) ---------------------------------------------------------

BROWSER = {"accept-encoding": "gzip, deflate, br"}


def test_json_is_stored_compressed_and_sent_as_each_client_asks(controller, origin, store):
    body = b'{"tags": "%s"}' % (b"x" * 5000)
    origin.answers["/studies/st/shared-tags"] = (JSON, body)
    identity = body + b"|20230220T140000||"
    uri = "/studies/st/shared-tags"
    browser = check_reply(controller.serve(make_request(uri, headers=BROWSER)))
    assert browser.outcome == "MISS" and browser.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(browser.body) == identity and len(browser.body) < 200
    stored = store.get(cache_key("/studies/st/shared-tags", "", ""))
    assert stored.encoding == "gzip" and stored.body == browser.body
    # A client that takes identity gets Orthanc's bytes, from the same entry.
    for headers in ({}, {"accept-encoding": "identity"}, {"accept-encoding": "gzip;q=0"}):
        plain = check_reply(controller.serve(make_request(uri, headers=headers)))
        assert plain.outcome == "HIT" and plain.body == identity
        assert "Content-Encoding" not in plain.headers
        assert plain.headers["ETag"] == our_etag("/studies/st/shared-tags")
    again = controller.serve(make_request("/studies/st/shared-tags", headers=BROWSER))
    assert again.outcome == "HIT" and again.body == browser.body
    assert len(origin.fetches) == 1


def test_each_coding_has_its_own_entity_tag_and_304(controller, origin):
    origin.answers["/studies/st/shared-tags"] = (JSON, b"[%s]" % b"1, " * 2000)
    uri = "/studies/st/shared-tags"
    identity_tag = our_etag(uri)
    gzip_tag = controller.serve(make_request(uri, headers=BROWSER)).headers["ETag"]
    assert gzip_tag == identity_tag[:-1] + '-gz"'
    revalidation = dict(BROWSER, **{"if-none-match": gzip_tag})
    assert controller.serve(make_request(uri, headers=revalidation)).status == 304
    revalidation = {"if-none-match": identity_tag}
    assert controller.serve(make_request(uri, headers=revalidation)).status == 304
    # The tag of the other coding names other bytes: the body, never a 304.
    swapped = controller.serve(make_request(uri, headers={"if-none-match": gzip_tag}))
    assert swapped.status == 200 and "Content-Encoding" not in swapped.headers
    swapped = controller.serve(make_request(uri, headers=dict(BROWSER,
                                                      **{"if-none-match": identity_tag})))
    assert swapped.status == 200 and swapped.headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize("uri, answer", [
    ("/instances/in/tags", (JSON, b'{"short": 1}')),  # too short to gain anything
    ("/instances/in/tags", (JSON, os.urandom(5000))),  # gzip would make it larger
    ("/instances/in/preview", ("image/png", b"\x89PNG" * 1000)),  # a binary: never
])
def test_what_is_not_compressed(tmp_path, store, origin, uri, answer):
    controller = make_controller(tmp_path, store, origin, store_binary=True)
    origin.answers[uri] = answer
    outcomes = []
    for _ in range(2):
        reply = controller.serve(make_request(uri, headers=BROWSER))
        assert "Content-Encoding" not in reply.headers and reply.body.startswith(answer[1])
        outcomes.append(reply.outcome)
    assert outcomes == ["MISS", "HIT"]


def test_no_gzip_where_orthanc_would_compress_again(controller, origin):
    origin.answers["/studies/st/shared-tags"] = (JSON, b"[%s]" % b"1, " * 2000)
    controller.gzip_offered = False
    for _ in range(2):
        reply = controller.serve(make_request("/studies/st/shared-tags", headers=BROWSER))
        assert "Content-Encoding" not in reply.headers
        assert reply.headers["ETag"] == our_etag("/studies/st/shared-tags")
        assert reply.body.startswith(b"[1, ")


def test_unsettled_answers_are_compressed_for_each_request_that_takes_gzip(controller, origin,
                                                                          store):
    body = b"[%s]" % b"1, " * 2000
    origin.answers["/studies/st/shared-tags"] = (JSON, body)
    origin.set("st", "20230220T145959", settled=False)
    browser = controller.serve(make_request("/studies/st/shared-tags", headers=BROWSER))
    assert browser.status == 200 and browser.headers["Content-Encoding"] == "gzip"
    plain = controller.serve(make_request("/studies/st/shared-tags"))
    assert plain.status == 200 and "Content-Encoding" not in plain.headers
    assert plain.body.startswith(body) and store.count() == 0
    assert gzip.decompress(browser.body) == plain.body
    # One entity-tag per coding: each validates its own bytes only.
    assert browser.headers["ETag"] != plain.headers["ETag"]
    again = controller.serve(make_request("/studies/st/shared-tags", headers=dict(
        BROWSER, **{"if-none-match": browser.headers["ETag"]})))
    assert again.status == 304
    crossed = controller.serve(make_request("/studies/st/shared-tags", headers={
        "if-none-match": browser.headers["ETag"]}))
    assert crossed.status == 200 and crossed.body == plain.body
    # Where Orthanc compresses plugin answers itself (HttpCompressionEnabled): identity.
    controller.gzip_offered = False
    orthancs = controller.serve(make_request("/studies/st/shared-tags", headers=BROWSER))
    assert "Content-Encoding" not in orthancs.headers and orthancs.body == plain.body


# --- Routes whose answer Orthanc takes from its index unless asked for file tags -------------

def test_index_answer_is_never_stored_and_validated_by_content(controller, origin, store):
    uri = "/studies/st/instances"
    origin.answers[uri] = (JSON, b'[{"IsStable": false}]')
    request = make_request(uri, {"expand": ""})
    first = check_reply(controller.serve(request))
    assert (first.status, first.outcome) == (200, "MISS")
    assert "index" in first.reason
    assert store.count() == 0 and origin.index_reads == []
    # The same content: 304 to its own ETag.
    again = controller.serve(make_request(uri, {"expand": ""},
                                          {"if-none-match": first.headers["ETag"]}))
    assert again.status == 304
    # Labels or IsStable changed without any version moving: the old ETag is refused.
    origin.answers[uri] = (JSON, b'[{"IsStable": true}]')
    changed = controller.serve(make_request(uri, {"expand": ""},
                                            {"if-none-match": first.headers["ETag"]}))
    assert changed.status == 200 and changed.body.startswith(b'[{"IsStable": true}]')
    assert changed.headers["ETag"] != first.headers["ETag"]


def test_requested_tags_are_stored_under_the_index_answers_digest(controller, origin, store):
    uri = "/studies/st/instances"
    origin.answers[uri] = (JSON, b'[{"RequestedTags": {}}]')
    origin.index[uri] = "digest-1"
    arguments = {"expand": "", "RequestedTags": "0008,0005"}
    first = check_reply(controller.serve(make_request(uri, arguments)))
    assert (first.status, first.outcome) == (200, "MISS")
    assert check_reply(controller.serve(make_request(uri, arguments))).outcome == "HIT"
    assert origin.index_reads == [uri, uri]
    assert len(origin.fetches) == 1
    etag = first.headers["ETag"]
    assert controller.serve(make_request(uri, arguments, {"if-none-match": etag})).status == 304
    # A label written, IsStable flipped: Orthanc's index answer changed, LastUpdate did not.
    origin.index[uri] = "digest-2"
    refused = controller.serve(make_request(uri, arguments, {"if-none-match": etag}))
    assert (refused.status, refused.outcome) == (200, "STALE-REFRESHED")
    assert refused.headers["ETag"] != etag and len(origin.fetches) == 2
    # Its Last-Modified is LastUpdate's, which labels and IsStable do not move: no 304 by date.
    dated = controller.serve(make_request(uri, arguments, {
        "if-modified-since": refused.headers["Last-Modified"]}))
    assert (dated.status, dated.outcome) == (200, "HIT")


def test_an_index_answer_in_error_is_orthancs(controller, origin, store):
    uri = "/series/se/instances"
    origin.set("se", "20230220T140000")
    request = make_request(uri, {"requestedTags": "bogus"})
    reply = controller.serve(request)
    assert reply.status == 404 and origin.plain == [(uri, "Orthanc answers an error")]
    assert origin.fetches == [] and store.count() == 0
