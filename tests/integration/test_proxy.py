"""The nginx configurations of docs/deployment.md, run verbatim in front of a real Orthanc.

Only addresses and paths of the documented blocks are replaced (Orthanc's port,
nginx's port, cache folder, Unix socket, log file). The tests check that
answers through nginx are current right after a change, that nginx revalidates
its copies with conditional requests that the plugin answers with 304, and
that a request without valid credentials always gets Orthanc's 401, even
right after an authenticated answer was stored by nginx.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import requests

from orthanc_cache_plugin.core.data import Outcome
from support.deployment_doc import documented_site as support_documented_site
from support.dicom_factory import make_instance, make_study
from support.nginx import NginxServer
from support.orthanc_server import OrthancServer

STORE = "store-and-revalidate"
NO_STORE = "no-store"

#: Seconds after a change before the plugin stores answers and validates them by version.
SETTLE = 3.1
#: Seconds after an HTTP write (metadata, deletion) before answers are stored again.
AFTER_WRITE = 5.5

ALICE = ("alice", "a")
BOB = ("bob", "b")
USERS = {"alice": "a", "bob": "b"}
SAFE_CACHE_CONTROL = "private, no-cache"
DEFAULT_CACHE_CONTROL = "max-age=604800, s-maxage=604800, public"

Auth = Optional[Tuple[str, str]]
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[\d.]+" (?P<status>\d+) '
                          r'cache=(?P<cache>\S+) upstream=(?P<upstream>\S+)')


# -- the documented configurations --------------------------------------------

def documented_site(profile: str, orthanc: OrthancServer) -> str:
    """The block of docs/deployment.md marked for ``profile``, with this test's addresses."""
    return support_documented_site("test_proxy.py", profile, orthanc.port)


# -- helpers ------------------------------------------------------------------

def proxy_log(proxy: NginxServer, uri: str, method: Optional[str] = "GET", at_least: int = 0,
              timeout: float = 5) -> List[Tuple[int, str, str]]:
    """(status, $upstream_cache_status, $upstream_status) of the documented ``orthanc_cache``
    log for requests of ``uri`` (with ``method``; None: any), oldest first; waits until there
    are ``at_least`` of them (nginx logs a request after sending its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        text = proxy.read_file("orthanc-access.log")
        entries = [(int(m["status"]), m["cache"],
                    m["upstream"]) for m in _ACCESS_LINE.finditer(text)
                   if method in (None, m["method"]) and m["uri"] == uri]
        if len(entries) >= at_least or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def through(proxy: NginxServer, uri: str, auth: Auth = ALICE, method: str = "GET",
            headers: Optional[Dict[str, str]] = None) -> requests.Response:
    """A request through nginx (one TCP connection per request, as different clients)."""
    return requests.request(method, proxy.url + uri, auth=auth, headers=headers, timeout=30)


@pytest.fixture
def start_pair(cached_orthanc: Callable[..., OrthancServer]
               ) -> Iterator[Callable[..., Tuple[OrthancServer, NginxServer]]]:
    """Call ``start_pair(profile, cache_control, authentication=True)`` for an Orthanc with the
    plugin and nginx in front of it with the documented configuration of ``profile``."""
    proxies: List[NginxServer] = []

    def start(profile: str, cache_control: str = SAFE_CACHE_CONTROL,
              authentication: bool = True) -> Tuple[OrthancServer, NginxServer]:
        config: Dict[str, object] = {"AuthenticationEnabled": authentication}
        if authentication:
            config["RegisteredUsers"] = USERS
        orthanc = cached_orthanc({"CacheControl": cache_control}, config=config, start=False)
        if authentication:
            orthanc.session.auth = ALICE  # the harness's own requests (readiness, uploads)
        orthanc.start()
        proxy = NginxServer(documented_site(profile, orthanc))
        proxies.append(proxy)
        proxy.start()
        return orthanc, proxy

    yield start
    for proxy in proxies:
        proxy.stop()


def upload_series(orthanc: OrthancServer, seed: str) -> Tuple[str, List[str]]:
    """Two instances of one series; returns the series id and the instance ids, once settled."""
    uploaded = [orthanc.upload(dicom) for dicom in make_study("PAT-" + seed, 1, 2, seed=seed)]
    time.sleep(SETTLE)
    return uploaded[0]["ParentSeries"], [answer["ID"] for answer in uploaded]


# -- tests ----------------------------------------------------------------------

@pytest.mark.parametrize("cache_control,authentication", [
    (DEFAULT_CACHE_CONTROL, False),  # public data, default profile
    (SAFE_CACHE_CONTROL, True),      # patient data, safe profile
], ids=["public-profile", "safe-profile"])
def test_answers_through_nginx_are_current_after_every_change(
        start_pair: Callable[..., Tuple[OrthancServer, NginxServer]],
        cache_control: str, authentication: bool) -> None:
    orthanc, proxy = start_pair(STORE, cache_control, authentication)
    auth = ALICE if authentication else None
    series, instances = upload_series(orthanc, "proxy-fresh")
    tags = "/series/%s/instances-tags" % series
    metadata = "/instances/%s/metadata?expand" % instances[0]

    def check_current(uri: str) -> requests.Response:
        answer = through(proxy, uri, auth)
        assert answer.status_code == 200
        assert answer.json() == orthanc.get(uri).json()
        assert "X-Accel-Expires" not in answer.headers  # nginx keeps it for itself
        assert answer.headers["Cache-Control"] == cache_control  # what browsers are told
        return answer

    assert check_current(tags).headers["X-Proxy-Cache"] == "MISS"
    assert check_current(tags).headers["X-Proxy-Cache"] == "REVALIDATED"
    assert len(check_current(tags).json()) == 2

    # A new instance in the cached series: nginx's copy is replaced at once.
    orthanc.upload(make_instance("PAT-proxy-fresh", seed="proxy-fresh", instance_number=3))
    answer = check_current(tags)
    assert answer.headers["X-Proxy-Cache"] == "EXPIRED" and len(answer.json()) == 3

    # Metadata written through nginx (LastUpdate does not change).
    check_current(metadata)
    written = requests.put(proxy.url + "/instances/%s/metadata/1024" % instances[0], data="new",
                           auth=auth, timeout=30)
    assert written.status_code == 200
    answer = check_current(metadata)
    assert answer.headers["X-Proxy-Cache"] == "EXPIRED" and answer.json()["1024"] == "new"

    # A deletion in the series.
    assert requests.delete(proxy.url + "/instances/%s" % instances[1], auth=auth,
                           timeout=30).status_code == 200
    assert len(check_current(tags).json()) == 2

    # Once the changes settle, nginx's copies are confirmed by 304s of the plugin again.
    time.sleep(AFTER_WRITE)
    check_current(tags)
    seen = len(orthanc.outcomes(tags))
    assert through(proxy, tags, auth).headers["X-Proxy-Cache"] == "REVALIDATED"
    assert orthanc.outcomes(tags, at_least=seen + 1)[seen:] == [Outcome.REVALIDATED]
    log = proxy_log(proxy, tags, at_least=7)
    assert (200, "EXPIRED", "200") in log and log[-1] == (200, "REVALIDATED", "304")


def test_nginx_revalidates_its_copies_with_the_plugin(
        start_pair: Callable[..., Tuple[OrthancServer, NginxServer]]) -> None:
    orthanc, proxy = start_pair(STORE)
    series, instances = upload_series(orthanc, "proxy-revalidate")
    uri = "/series/%s/shared-tags" % series

    first = through(proxy, uri)
    assert first.status_code == 200 and first.headers["X-Proxy-Cache"] == "MISS"
    etag = first.headers["ETag"]
    for _ in range(3):
        answer = through(proxy, uri)
        assert answer.status_code == 200 and answer.content == first.content
        assert answer.headers["X-Proxy-Cache"] == "REVALIDATED" and answer.headers["ETag"] == etag

    # A client's own conditional request: 304 from nginx, after nginx's own revalidation.
    conditional = through(proxy, uri, headers={"If-None-Match": etag})
    assert conditional.status_code == 304 and conditional.headers["X-Proxy-Cache"] == "REVALIDATED"
    assert conditional.headers["ETag"] == etag

    # HEAD is turned into a GET by nginx: validators, no body.
    head = through(proxy, uri, method="HEAD")
    assert head.status_code == 200 and head.headers["ETag"] == etag and not head.content

    # Every revalidation reached the plugin as a conditional GET answered 304.
    assert orthanc.outcomes(uri, at_least=6) == [Outcome.MISS] + [Outcome.REVALIDATED] * 5
    assert proxy_log(proxy, uri,
                     at_least=5) == [(200, "MISS", "200")] + [(200, "REVALIDATED", "304")] * 3 \
        + [(304, "REVALIDATED", "304")]

    # Routes without validators are passed on and never stored.
    listing = "/series/%s" % series
    assert [through(proxy, listing).headers["X-Proxy-Cache"] for _ in range(2)] == ["MISS", "MISS"]


@pytest.mark.parametrize("profile", [STORE, NO_STORE])
def test_requests_without_valid_credentials_always_get_401(
        start_pair: Callable[..., Tuple[OrthancServer, NginxServer]], profile: str) -> None:
    orthanc, proxy = start_pair(profile)
    series, instances = upload_series(orthanc, "proxy-auth")
    uris = ["/series/%s/instances-tags" % series, "/instances/%s/tags" % instances[0]]

    for uri in uris:
        for round_ in range(3):
            alice = through(proxy, uri, ALICE)
            assert alice.status_code == 200, (uri, round_)
            etag = alice.headers["ETag"]
            # Right after nginx stored (or confirmed) alice's answer:
            for credentials in (None, ("alice", "wrong"), ("mallory", "a")):
                for method in ("GET", "HEAD"):
                    refused = through(proxy, uri, credentials, method)
                    assert refused.status_code == 401, (uri, credentials, method)
                    assert refused.headers.get("ETag") is None and "ID" not in refused.text
                conditional = through(proxy, uri, credentials, headers={"If-None-Match": etag})
                assert conditional.status_code == 401, (uri, credentials)
            bob = through(proxy, uri, BOB)
            assert bob.status_code == 200 and bob.content == alice.content
            assert through(proxy, uri, BOB, headers={"If-None-Match": etag}).status_code == 304

    # Each 401 came from Orthanc, none from a copy; every 304 was the plugin's.
    if profile == STORE:
        entries = [entry for uri in uris for entry in proxy_log(proxy, uri, None, at_least=36)]
    else:  # the harness's access log: this profile has no log of its own
        entries = [(int(entry["status"]), entry["cache"], entry["upstream_status"])
                   for entry in proxy.access_log(at_least=72)]
    refusals = [entry for entry in entries if entry[0] == 401]
    assert len(refusals) == len(uris) * 3 * 3 * 3 and {entry[2] for entry in refusals} == {"401"}
    assert {entry[2] for entry in entries if entry[0] == 304} == {"304"}
    assert orthanc.outcomes(uris[0], at_least=6).count(Outcome.REVALIDATED) >= 3



def test_without_the_origin_hop_nginx_serves_outdated_answers(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    """Why the documented configuration needs its origin hop: an nginx that trusts the
    plugin's default Cache-Control keeps serving its copy for a week after a change."""
    orthanc = cached_orthanc({"CacheControl": DEFAULT_CACHE_CONTROL})
    naive = documented_site(STORE, orthanc)
    for line in ("        add_header X-Accel-Expires @1;\n",
                 "        proxy_ignore_headers Cache-Control Expires;"):
        assert line in naive
        naive = naive.replace(line, "")
    with NginxServer(naive) as proxy:
        series, _ = upload_series(orthanc, "proxy-naive")
        tags = "/series/%s/instances-tags" % series
        assert through(proxy, tags, None).headers["X-Proxy-Cache"] == "MISS"
        orthanc.upload(make_instance("PAT-proxy-naive", seed="proxy-naive", instance_number=3))
        outdated = through(proxy, tags, None)
        assert outdated.headers["X-Proxy-Cache"] == "HIT" and len(outdated.json()) == 2
        assert len(orthanc.get(tags).json()) == 3


# -- token headers checked per request (the authorization plugin, a filter) ----------------

TOKEN = "valid-token-of-alice"
TOKEN_SCRIPT = '''
import sys
sys.path.insert(0, {repo!r})

import orthanc

if {with_plugin!r}:
    from orthanc_cache_plugin import enable_cache_plugin
    enable_cache_plugin()


def only_the_token(uri, **request):
    return (request.get("headers") or {{}}).get("token") == {token!r}


orthanc.RegisterIncomingHttpRequestFilter(only_the_token)
orthanc.LogWarning("test token filter registered")
'''
#: A plain shared cache: nginx's default key, honouring Cache-Control, Expires and Vary.
PLAIN_PROXY_CACHE = """
proxy_cache_path @PREFIX@/cache levels=1:2 keys_zone=plain:1m;
server {
    listen 127.0.0.1:@PORT@;
    location / {
        proxy_pass http://127.0.0.1:%d;
        proxy_cache plain;
        add_header X-Proxy-Cache $upstream_cache_status always;
    }
}
"""


@pytest.mark.parametrize("settings,sent", [
    ({"CacheControl": DEFAULT_CACHE_CONTROL}, "max-age=604800, private"),  # specification's
    ({}, "no-cache, private"),                                             # the default
    # Without the plugin's own filter, the script's is still seen.
    ({"CacheControl": DEFAULT_CACHE_CONTROL, "WatchHttpWrites": False}, "max-age=604800, private"),
    (None, None),                                                          # plain Orthanc
], ids=["specification-value", "default", "without-watching-writes", "plain-orthanc"])
def test_a_shared_cache_never_gives_a_token_checked_answer_to_anyone_else(
        orthanc_factory: Callable[..., OrthancServer], repo_root: Path, tmp_path: Path,
        settings: Optional[Dict[str, object]], sent: Optional[str]) -> None:
    """Issue #17: with Orthanc's authentication off, a filter admitting one token (as the
    authorization plugin does, whose section names the header), behind a plain nginx
    proxy_cache: after a read with the token, requests without it or with another one get
    Orthanc's 403, never nginx's copy."""
    with_plugin = settings is not None
    script = tmp_path / "startup.py"
    script.write_text(TOKEN_SCRIPT.format(repo=str(repo_root), with_plugin=with_plugin,
                                          token=TOKEN))
    config: Dict[str, object] = {"Authorization": {"TokenHttpHeaders": ["token"]}}
    if settings is not None:
        config["CachePlugin"] = dict({"Directory": str(tmp_path / "cache")}, **settings)
    orthanc = orthanc_factory(python_script=script, config=config, start=False)
    orthanc.session.headers["token"] = TOKEN  # the harness's own requests
    orthanc.start()
    orthanc.wait_for_log("test token filter registered")
    if with_plugin:
        assert re.search(r"cache plugin: Cache-Control '[^']*' sent as '%s', Vary '[^']*"
                         r"Authorization, token': access is decided per request \(the "
                         r"authorization plugin \(token headers token\), a filter of the "
                         r"startup script\)" % re.escape(str(sent)), orthanc.log_text()), \
            orthanc.log_tail()
    series, instances = upload_series(orthanc, "proxy-token")
    study = orthanc.get("/series/%s" % series).json()["ParentStudy"]
    uris = ["/studies/%s/shared-tags" % study, "/studies/%s/instances-tags" % study,
            "/instances/%s/tags" % instances[0]]
    with NginxServer(PLAIN_PROXY_CACHE % orthanc.port) as proxy:
        for uri in uris:
            for _ in range(2):
                read = through(proxy, uri, None, headers={"token": TOKEN})
                assert read.status_code == 200 and read.json(), (uri, read.status_code)
                if with_plugin:
                    assert read.headers["Cache-Control"] == sent
                    vary = [name.strip() for name in read.headers["Vary"].split(",")]
                    assert {"Authorization", "token"} <= set(vary), read.headers
                else:
                    assert "Cache-Control" not in read.headers
            for headers in ({}, {"token": "another-token"}, {"token": ""}):
                refused = through(proxy, uri, None, headers=headers)
                assert refused.status_code == 403, (uri, headers, refused.status_code,
                                                    refused.headers.get("X-Proxy-Cache"))
                assert refused.headers.get("X-Proxy-Cache") != "HIT" and not refused.content
            assert through(proxy, uri, None, headers={"token": TOKEN}).status_code == 200
        # Every 403 came from Orthanc, through nginx: none from a copy.
        log = proxy.access_log(at_least=len(uris) * 6)
        refusals = [entry for entry in log if entry["status"] == "403"]
        assert len(refusals) == len(uris) * 3
        assert {entry["upstream_status"] for entry in refusals} == {"403"}
        assert "HIT" not in {entry["cache"] for entry in log}
