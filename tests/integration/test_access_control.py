"""Access control: a stored answer never reaches a client Orthanc would refuse.

With ``AuthenticationEnabled`` and two users, every cached route, once its
answer is stored (a HIT) or warmed, still answers 401 to a request without
valid credentials: none, a wrong password, an unknown user, a malformed
``Authorization``, and also with the ``If-None-Match`` of an authorized
client (never a 304).  A startup script registering its own incoming-request
filter *after* ``enable_cache_plugin()`` keeps the last word: it refuses bob
one study, and bob gets 403 even when alice made every answer of that study
a HIT; the plugin still sees the writes the filter lets through.  Answers
say ``Cache-Control: no-cache, private`` and ``Vary: Authorization`` (with
``Accept-Encoding``, and ``Accept`` on image routes).
"""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import pytest
import requests

from support import stacks
from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer

USERS = {"alice": "a", "bob": "b"}
ALICE = ("alice", "a")
BOB = ("bob", "b")
AUTHENTICATION = {"AuthenticationEnabled": True, "RegisteredUsers": USERS}
NO_GZIP = {"Accept-Encoding": "identity"}
SETTLE = 3.1  # freshness.SETTLE: answers of a resource changed under 3 s ago are not stored

#: Cached routes of one study; ``{study}``, ``{series}``, ``{instance}`` are ids.
ROUTES = (
    "/studies/{study}/shared-tags",
    "/studies/{study}/shared-tags?short",
    "/studies/{study}/instances-tags?simplify",
    "/series/{series}/instances-tags",
    "/patients/{patient}/shared-tags",
    "/instances/{instance}/tags",
    "/instances/{instance}/simplified-tags",
    "/instances/{instance}/header",
    "/instances/{instance}/metadata",
    "/instances/{instance}/frames",
    "/instances/{instance}/file",
    "/instances/{instance}/preview",
    "/instances/{instance}/frames/0/raw",
    "/instances/{instance}/frames/0/numpy",
) + (("/studies/{study}/archive",) if stacks.plugin_caches_archives() else ())

#: Credentials Orthanc refuses (requests' ``auth``), and raw Authorization headers.
BAD_AUTH = (None, ("alice", "wrong"), ("mallory", "a"), ("alice", ""), ("ALICE", "a"))
BAD_HEADERS = ("Basic", "Basic !!!", "Basic YWxpY2U=", "Bearer a", "basic YWxpY2U6YQ==x",
               "Basic " + "A" * 5000)


def anonymous() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def start_with_authentication(create: Callable[..., OrthancServer], **kwargs) -> OrthancServer:
    """``OrthancServer.start()`` polls GET /system, which needs credentials here."""
    server = create(start=False, **kwargs)
    server.session.auth = ALICE
    server.start()
    return server


def upload_study(server: OrthancServer, seed: str) -> Dict[str, str]:
    answers = [server.upload(dicom) for dicom in make_study("PAT-" + seed, 1, 2, seed=seed)]
    first = answers[0]
    return {"patient": first["ParentPatient"], "study": first["ParentStudy"],
            "series": first["ParentSeries"], "instance": first["ID"]}


def get(server: OrthancServer, path: str, auth: Optional[Tuple[str, str]],
        **headers: str) -> requests.Response:
    return anonymous().get(server.url + path, auth=auth, headers=dict(NO_GZIP, **headers),
                           timeout=30)


def make_hit(server: OrthancServer, path: str) -> requests.Response:
    """Alice's requests until the plugin serves ``path`` from its store."""
    deadline = time.monotonic() + 15
    while True:
        answer = get(server, path, ALICE)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        if answer.headers.get("X-Cache-Status") == "HIT":
            return answer
        assert time.monotonic() < deadline, "%s never became a HIT:\n%s" % (
            path, server.log_tail())
        time.sleep(0.3)


def assert_refused(answer: requests.Response, status: int, stored: requests.Response,
                   what: str) -> None:
    assert answer.status_code == status, "%s: %d %r" % (what, answer.status_code,
                                                        answer.content[:200])
    assert not stored.content or answer.content != stored.content, what
    assert "ETag" not in answer.headers and "X-Cache-Status" not in answer.headers, (
        what, dict(answer.headers))


@pytest.fixture
def server(cached_orthanc: Callable[..., OrthancServer]) -> OrthancServer:
    """Authentication on, binary answers stored too (so that every route can be a HIT)."""
    return start_with_authentication(cached_orthanc, settings={"StoreBinary": True},
                                     config=AUTHENTICATION)


def test_answers_vary_on_authorization(server: OrthancServer) -> None:
    ids = upload_study(server, "vary")
    json_answer = get(server, "/studies/%s/shared-tags" % ids["study"], ALICE)
    image_answer = get(server, "/instances/%s/preview" % ids["instance"], ALICE)
    assert json_answer.status_code == image_answer.status_code == 200
    vary = [set(re.split(r"\s*,\s*", answer.headers.get("Vary", "")))
            for answer in (json_answer, image_answer)]
    assert vary[0] == {"Accept-Encoding", "Authorization"}, json_answer.headers
    assert vary[1] == {"Accept-Encoding", "Authorization", "Accept"}, image_answer.headers
    for answer in (json_answer, image_answer):  # shared caches must not store them
        assert answer.headers["Cache-Control"] == "no-cache, private", answer.headers


def test_stored_answers_never_reach_a_request_without_valid_credentials(
        server: OrthancServer) -> None:
    ids = upload_study(server, "stored")
    time.sleep(SETTLE)
    for route in ROUTES:
        path = route.format(**ids)
        stored = make_hit(server, path)
        etag = stored.headers["ETag"]
        assert get(server, path, ALICE, **{"If-None-Match": etag}).status_code == 304
        for auth in BAD_AUTH:
            for headers in ({}, {"If-None-Match": etag}, {"If-None-Match": "*"}):
                assert_refused(get(server, path, auth, **headers), 401, stored,
                               "%s with %r %r" % (path, auth, headers))
        for value in BAD_HEADERS:
            assert_refused(get(server, path, None, Authorization=value), 401, stored,
                           "%s with Authorization: %s" % (path, value[:40]))
        assert get(server, path, BOB).status_code == 200  # any registered user may read
    assert "HIT" in get(server, ROUTES[0].format(**ids), ALICE).headers["X-Cache-Status"]


def test_warmed_answers_never_reach_a_request_without_valid_credentials(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    server = start_with_authentication(cached_orthanc, config=dict(AUTHENTICATION, StableAge=1))
    ids = upload_study(server, "warmed")
    server.wait_for_log(r"warm-up of studies %s: \d+ answers stored" % ids["study"], timeout=30)
    warmed = ["/studies/{study}/shared-tags", "/studies/{study}/instances-tags?short",
              "/series/{series}/shared-tags?simplify",
              "/patients/{patient}/instances-tags"]
    for route in warmed:
        path = route.format(**ids)
        for auth in BAD_AUTH:
            answer = get(server, path, auth)
            assert answer.status_code == 401 and "ETag" not in answer.headers, (path, auth)
        first = get(server, path, ALICE)  # the first authorized request is served warm
        assert first.status_code == 200 and first.headers["X-Cache-Status"] == "HIT", (
            path, dict(first.headers))


# --- A startup script with its own filter -------------------------------------------------------

FILTER_SCRIPT = '''
import base64
import sys
sys.path.insert(0, {repo!r})

from orthanc_cache_plugin import enable_cache_plugin

enable_cache_plugin()

import orthanc  # noqa: E402

DENIED = {denied!r}  # a file listing the ids bob may not see, one per line


def user_of(headers):
    for name, value in headers.items():
        if name.lower() == "authorization" and value.startswith("Basic "):
            try:
                return base64.b64decode(value[6:]).decode("utf-8").split(":")[0]
            except ValueError:
                return None
    return None


def deny_bob(uri, **request):
    if user_of(request.get("headers") or {{}}) != "bob":
        return True
    with open(DENIED, encoding="utf-8") as listing:
        return not any(line.strip() and line.strip() in uri for line in listing)


orthanc.RegisterIncomingHttpRequestFilter(deny_bob)
orthanc.LogWarning("test filter registered")
'''


@pytest.fixture
def filtered(cached_orthanc: Callable[..., OrthancServer], repo_root: Path,
             tmp_path: Path) -> Tuple[OrthancServer, Path]:
    denied = tmp_path / "denied.txt"
    denied.write_text("")
    script = tmp_path / "startup.py"
    script.write_text(textwrap.dedent(FILTER_SCRIPT.format(repo=str(repo_root),
                                                           denied=str(denied))))
    server = start_with_authentication(cached_orthanc, settings={"StoreBinary": True},
                                       config=AUTHENTICATION, python_script=script)
    server.wait_for_log("test filter registered")
    assert "cannot register orthanc." not in server.log_text()
    assert re.search(r"cache plugin: Cache-Control 'no-cache' sent as 'no-cache, private', "
                     r"Vary '[^']*': access is decided per request \(Orthanc's users, a filter "
                     r"of the startup script\)", server.log_text()), server.log_tail()
    return server, denied


def test_the_scripts_filter_decides_even_on_stored_answers(
        filtered: Tuple[OrthancServer, Path]) -> None:
    server, denied = filtered
    secret = upload_study(server, "secret")
    public = upload_study(server, "public")
    denied.write_text("\n".join([secret["study"], secret["series"], secret["instance"]]) + "\n")
    time.sleep(SETTLE)
    secret_routes = [route for route in ROUTES if "{patient}" not in route]  # patient is shared
    for route in secret_routes:
        path = route.format(**secret)
        stored = make_hit(server, path)
        for headers in ({}, {"If-None-Match": stored.headers["ETag"]}, {"If-None-Match": "*"}):
            assert_refused(get(server, path, BOB, **headers), 403, stored,
                           "bob: %s %r" % (path, headers))
        assert_refused(get(server, path, None), 401, stored, "anonymous: " + path)
        assert get(server, path, ALICE).headers["X-Cache-Status"] == "HIT"
    for route in ROUTES:  # bob still reads what the filter lets through, from the store
        path = route.format(**public)
        make_hit(server, path)
        answer = get(server, path, BOB)
        assert answer.status_code == 200 and answer.headers["X-Cache-Status"] == "HIT", path


def test_the_plugin_still_sees_writes_behind_the_scripts_filter(
        filtered: Tuple[OrthancServer, Path]) -> None:
    server, denied = filtered
    ids = upload_study(server, "writes")
    denied.write_text(ids["study"] + "\n")
    time.sleep(SETTLE)
    path = "/instances/%s/metadata?expand" % ids["instance"]
    before = make_hit(server, path)
    # Refused by the filter: nothing changes.
    refused = anonymous().delete(server.url + "/studies/%s" % ids["study"], auth=BOB, timeout=30)
    assert refused.status_code == 403
    assert get(server, "/studies/%s" % ids["study"], ALICE).status_code == 200
    # Let through: the next answer shows the write at once (announced before it ran).
    written = anonymous().put(server.url + "/instances/%s/metadata/1024" % ids["instance"],
                              data=b"hello", auth=BOB, timeout=30)
    assert written.status_code == 200, written.text
    after = get(server, path, ALICE)
    assert after.status_code == 200 and after.json() != before.json()
    assert after.json().get("1024") == "hello", after.json()
    assert after.headers["ETag"] != before.headers["ETag"]
    revalidated = get(server, path, ALICE, **{"If-None-Match": before.headers["ETag"]})
    assert revalidated.status_code == 200, "a validator taken before the write gave 304"
