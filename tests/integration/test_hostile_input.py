"""Hostile input over HTTP: malformed requests never break the plugin nor change an answer.

A plain Orthanc and one running the plugin hold the same files.  A seeded
generator builds requests on every cached route with odd ids (long, unicode,
``..``, percent-encoded, other level), frame numbers (signs, thousands of
digits, junk), query strings (repeated keys, stray ``%``, ``%00``, encoded
structure) and ``Accept`` values.  Each request is sent, byte for byte, to
both servers without validators: the status, Content-Type, Content-Disposition,
Location, Allow and body must be the same.  Then it is sent to the plugin only,
with random ``If-None-Match`` / ``If-Modified-Since`` (garbage, valid junk,
and the plugin's own validators): the plugin must never answer 5xx, and a 304
must be legitimate (the validator is one the plugin issued with a 200 of the
same content, ``*``, or a date not before the Last-Modified of that 200).

Both servers must still be up at the end.  ``FUZZ_SEED`` changes the requests;
``FUZZ_REPORT=<file>`` writes every problem there, whole, to replay it.  Invalid UTF-8 in the
path or a header is left to :func:`test_invalid_utf8_is_answered_like_orthanc` (a known
limitation of Orthanc's Python plugin).  Bounded: ``FUZZ_CASES`` requests or
``FUZZ_SECONDS``, whichever comes first (environment variables).
"""

from __future__ import annotations

import http.client
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import quote

import pytest

from support.oracle import (
    COMPARED_HEADERS,
    attachment_names,
    normalized_body,
    sample_files,
    upload_samples,
    without_source_line_details,
)
from support.orthanc_server import OrthancServer

SEED = "hostile"
PATIENT = "PAT-HOSTILE"
FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "3000"))
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "45"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20240601"))
INSTANCES = ("instance", "multiframe", "rgb", "pdf")
DICOMWEB = ("application/dicom+json", "application/dicom+xml")


# --- A client that sends exactly the bytes it is given ---------------------------------------

@dataclass
class Answer:
    status: int
    headers: Dict[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def comparable(self, renamings: Mapping[str, str]) -> Tuple:
        """What must be identical between plain Orthanc and the plugin (see support.oracle)."""
        def renamed(value: Optional[str]) -> Optional[str]:
            for old, new in renamings.items():
                value = value.replace(old, new) if value is not None else None
            return value
        content_type = self.header("Content-Type")
        return (self.status,
                tuple((name, renamed(self.header(name))) for name in COMPARED_HEADERS),
                normalized_body(self.body, content_type))

    def __str__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return "%d %s %r" % (self.status, self.header("Content-Type"), body)


class RawClient:
    """HTTP/1.1 with keep-alive; the request target goes on the wire untouched
    (``requests`` would re-quote ``%zz``), header values may be bytes."""

    def __init__(self, port: int, timeout: float = 30):
        self.port = port
        self.timeout = timeout
        self._connection: Optional[http.client.HTTPConnection] = None

    def get(self, target: str, headers: Mapping[str, bytes] = {}) -> Answer:
        return self.request("GET", target, headers)

    def request(self, method: str, target: str, headers: Mapping[str, bytes] = {},
                body: bytes = b"") -> Answer:
        for attempt in (1, 2):  # a keep-alive connection may have been closed by the server
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port,
                                                              timeout=self.timeout)
            try:
                self._connection.putrequest(method, target, skip_accept_encoding=True)
                self._connection.putheader("Accept-Encoding", "identity")
                for name, value in headers.items():
                    self._connection.putheader(name, value)
                if method != "GET":
                    self._connection.putheader("Content-Length", str(len(body)))
                self._connection.endheaders(body if method != "GET" else None)
                response = self._connection.getresponse()
                body = response.read()
                answer = Answer(response.status,
                                {name.lower(): value for name, value in response.getheaders()},
                                body)
                if response.will_close:
                    self.close()
                return answer
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# --- The two servers -------------------------------------------------------------------------

@dataclass
class Pair:
    plain: OrthancServer
    cached: OrthancServer
    ids: Dict[str, str]
    renamings: Dict[str, Dict[str, str]]  # per server url: attachment uuid -> stable name
    clients: Dict[str, RawClient] = field(default_factory=dict)

    def client(self, server: OrthancServer) -> RawClient:
        return self.clients.setdefault(server.url, RawClient(server.port))

    def comparable(self, server: OrthancServer, answer: Answer) -> Tuple:
        return answer.comparable(self.renamings[server.url])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, example_script: Path) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("hostile")
    plain = OrthancServer(root / "plain")
    cached = OrthancServer(root / "cached", python_script=example_script,
                           config={"CachePlugin": {"Directory": str(root / "cache")}})
    try:
        plain.start()
        cached.start()
        files = sample_files(PATIENT, SEED, series=1, instances=2)
        ids = upload_samples(plain, files)
        assert upload_samples(cached, files) == ids, "the same files must get the same ids"
        renamings = {server.url: attachment_names(server.get,
                                                  {name: ids[name] for name in INSTANCES})
                     for server in (plain, cached)}
        # Wait until versions are settled (3 s), so that answers are stored and hit.
        probe = "/studies/%s/shared-tags" % ids["study"]
        deadline = time.monotonic() + 20
        while cached.get(probe).headers.get("X-Cache-Status") != "HIT":
            assert time.monotonic() < deadline, "the plugin never stored:\n" + cached.log_tail()
            time.sleep(0.3)
        pair = Pair(plain, cached, ids, renamings)
        yield pair
        for client in pair.clients.values():
            client.close()
    finally:
        plain.stop()
        cached.stop()


# --- The generator ---------------------------------------------------------------------------

PARENT_ROUTES = ("archive", "attachments", "instances-tags", "media", "shared-tags")
INSTANCE_ROUTES = ("file", "frames", "header", "metadata", "pdf", "preview", "simplified-tags",
                   "tags")
IMAGE_KINDS = ("preview", "rendered", "image-uint8", "image-uint16", "image-int16")
FRAME_DATA_KINDS = ("raw", "raw.gz", "matlab", "numpy")
LEVEL_OF = {"patient": "patients", "study": "studies", "series": "series"}
UNICODE_SAMPLES = ("\u00e9t\u00e9", "\u2603", "\U0001f600", "\u0661\u0662", "\u202e", "\ufeff",
                   "\u00a0")


def _pct(text: str) -> str:
    """Percent-encode everything but unreserved characters (valid UTF-8)."""
    return quote(text, safe="-._~")


class Generator:
    """Seeded hostile requests; ``ids`` are the resources both servers hold."""

    def __init__(self, rng: random.Random, ids: Mapping[str, str]):
        self.rng = rng
        self.ids = ids

    def pick(self, *choices):
        return self.rng.choice(choices)

    # Path segments -------------------------------------------------------

    def resource(self, own: str) -> str:
        """Mostly the right id; otherwise another level's, or a mutated or absurd one."""
        rng = self.rng
        valid = self.ids[own]
        roll = rng.random()
        if roll < 0.55:
            return valid
        if roll < 0.65:
            return self.ids[rng.choice(list(self.ids))]  # possibly another level
        mutation = rng.randrange(14)
        if mutation == 0:
            return valid.upper()
        if mutation == 1:
            return valid + self.pick("x", "%20", "%23", "%2E", ";x", "%3B", "%25", "-", "%09")
        if mutation == 2:
            return self.pick("..", "%2E%2E", ".", "%2e", "...", "%2E")
        if mutation == 3:
            return "a" * rng.randint(50, 3000)
        if mutation == 4:
            return valid * rng.randint(2, 40)
        if mutation == 5:
            return _pct(rng.choice(UNICODE_SAMPLES)) + self.pick("", valid)
        if mutation == 6:  # the same id, percent-encoded (Orthanc decodes the path)
            return "".join("%%%02X" % ord(c) if rng.random() < 0.3 else c for c in valid)
        if mutation == 7:
            return valid[:rng.randrange(len(valid))]
        if mutation == 8:
            return "%00" + valid if rng.random() < 0.5 else valid + "%00"
        if mutation == 9:
            return valid + "%3F" + self.pick("", "x", "short", "a=b")  # '?' in the path
        if mutation == 10:
            return valid + "%2F" + self.pick("", "..", "tags")  # '/' in the segment
        if mutation == 11:
            if rng.random() < 0.5:  # double encoding: Orthanc decodes the path only once
                return "%%25%02X" % ord(valid[0]) + valid[1:]
            return self.pick("%", "%2", "%zz", "%%", "%25%32")
        if mutation == 12:
            return _pct(self.pick("<script>", "' OR 1=1 --", "${jndi:x}", "\\", "\"", "|", "*"))
        return "00000000-00000000-00000000-00000000-00000000"

    def frame(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return self.pick("0", "1", "2")
        return self.pick(
            "-0", "+0", "-1", "+1", "00", "01", "%200", "0%20", "0x1", "1e0", "1.0", "", "%3F",
            "0%3F", "0%3Fx", "0%23", "%C3%A9", "4294967295", "4294967296", "-4294967295",
            "-4294967296", "9" * rng.randint(10, 30), "0" * rng.randint(4000, 6000) + "1",
            "9" * rng.randint(4000, 6000), "..", "%2E%2E", "%00", "1%00", "0%2F", "%2B1")

    # Query ----------------------------------------------------------------

    NAMES = ("short", "simplify", "expand", "quality", "smooth", "returnUnsupportedImage",
             "ReturnUnsupportedImage", "transcode", "filename", "window-center", "window-width",
             "width", "height", "compress", "x", "%", "%zz", "%2", "%00", "%26", "a%3Db", "",
             "%C3%A9", "+", "short%00", "%71uality", "q%75ality", "?", "quality[]")
    VALUES = ("", "1", "0", "true", "false", "-1", "50", "90", "100", "101", "0x10", "+50",
              " 50".replace(" ", "%20"), "%", "%zz", "%3F", "%23", "a+b", "%C3%A9", "%00", "5%000",
              "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "bogus", "NaN", "1e3", "=", "==",
              "%26x%3D1")

    def query(self) -> str:
        rng = self.rng
        if rng.random() < 0.35:
            return ""
        parts = []
        for _ in range(rng.randint(1, 5)):
            name = rng.choice(self.NAMES)
            roll = rng.random()
            if roll < 0.2:
                parts.append(name)  # a flag without '='
            elif roll < 0.95:
                value = rng.choice(self.VALUES)
                if rng.random() < 0.05:
                    value = "9" * rng.randint(4000, 6000)
                parts.append("%s=%s" % (name, value))
            else:
                parts.append("")  # '&&'
            if rng.random() < 0.2:
                parts.append(parts[-1])  # repeated key
        return "?" + "&".join(parts) + self.pick("", "", "", "&", "#frag")

    # Headers ---------------------------------------------------------------

    MEDIA_RANGES = ("image/png", "image/jpeg", "image/x-portable-arbitrarymap", "image/*", "*/*",
                    "image/gif", "text/html", "application/json", "application/dicom",
                    "application/dicom+json", "IMAGE/JPEG", "image / jpeg", "image", "/", "*",
                    "image/jpeg/x", "", "image/png+x", "*/jpeg")
    Q_VALUES = ("0", "1", "0.5", "0.001", "1.0", "1.0001", "2", "-1", "-0", "abc", "", " 0.5",
                "0.5 ", "1e-1", ".5", "5.", "nan", "inf", "0x1", "\u0661", "0.\u0665", "+0.5",
                "1e999", "0" * 50 + "1")

    def accept(self) -> Optional[bytes]:
        rng = self.rng
        if rng.random() < 0.3:
            return None
        ranges = []
        for _ in range(rng.randint(1, 4)):
            media = rng.choice(self.MEDIA_RANGES)
            for _ in range(rng.choice((0, 0, 1, 2))):
                name = self.pick("q", "Q", "q ", "level", "charset", "")
                media += ";%s=%s" % (name, rng.choice(self.Q_VALUES)) if name else ";"
            ranges.append(media)
        return self.pick(",", ", ", " , ", ",,").join(ranges).encode("utf-8")

    def path(self) -> Tuple[str, str]:
        """A request target on a cached route, and the route's name (for known differences)."""
        rng = self.rng
        if rng.random() < 0.35:
            own = rng.choice(list(LEVEL_OF))
            route = rng.choices(PARENT_ROUTES, weights=(1, 4, 4, 1, 4))[0]
            return "/%s/%s/%s" % (LEVEL_OF[own], self.resource(own), route), route
        own = rng.choice(INSTANCES)
        roll = rng.random()
        if roll < 0.45:
            route = rng.choice(INSTANCE_ROUTES)
            return "/instances/%s/%s" % (self.resource(own), route), route
        kind = rng.choice(IMAGE_KINDS + FRAME_DATA_KINDS)
        return ("/instances/%s/frames/%s/%s" % (self.resource(own), self.frame(), kind),
                "frame-image" if kind in IMAGE_KINDS else "frame-data")

    def request(self) -> Tuple[str, str, Dict[str, bytes]]:
        target, route = self.path()
        target += self.query()
        headers = {}
        accept = self.accept()
        if accept is not None:
            headers["Accept"] = accept
        return target, route, headers

    # Validators ------------------------------------------------------------

    def validators(self, issued: Issued, target_key: Tuple) -> Dict[str, bytes]:
        """Random conditional headers, built from junk and from validators the plugin issued."""
        rng = self.rng
        headers: Dict[str, bytes] = {}
        own = issued.by_request.get(target_key)
        others = list(issued.bodies)
        if rng.random() < 0.8:
            members = []
            for _ in range(rng.randint(1, 4)):
                roll = rng.random()
                if roll < 0.35 and own is not None and own.etag:
                    tag = own.etag
                elif roll < 0.6 and others:
                    tag = rng.choice(others)  # another URL's tag: no 304 unless same content
                elif roll < 0.8:
                    tag = '%s"%s"' % (self.pick("", "W/"), "".join(
                        rng.choice("abcdef0123456789!#$%&'()*+-./:;<=>?@[]^_`{|}~,")
                        for _ in range(rng.randint(0, 40))))
                else:
                    tag = self.pick("*", "W/", '"', 'W/"x', "x", '""', "W/\"\"", "\"a\" \"b\"",
                                    "W/ \"a\"", "w/\"a\"", "\u00e9", '"\u00e9"', "\"a\"\"b\"")
                if tag.startswith('W/"') and rng.random() < 0.3:
                    tag = tag[2:]  # the strong form of a weak tag still matches (weak comparison)
                members.append(tag)
            separator = self.pick(",", ", ", " ,\t", ",,")
            headers["If-None-Match"] = (self.pick("", " ", "\t") + separator.join(members)
                                        + self.pick("", " ", ",")).encode("utf-8")
        if rng.random() < 0.6:
            roll = rng.random()
            if roll < 0.35 and own is not None and own.last_modified:
                date = own.last_modified
            else:
                moment = datetime.now(timezone.utc) + timedelta(
                    seconds=rng.choice((-10 ** 9, -86400, -5, 0, 5, 86400, 10 ** 8)))
                date = self.pick(
                    format_datetime(moment, usegmt=True),
                    moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
                    moment.strftime("%a %b %e %H:%M:%S %Y"),
                    "garbage", "", "Sun, 31 Feb 2023 00:00:00 GMT", "Sun, 06 Nov 1994 25:00:00 GMT",
                    "Sun, 06 Nov 1994 08:49:37 GMT", "Sun, \u0660\u0666 Nov 2094 08:49:37 GMT",
                    moment.isoformat(), str(int(moment.timestamp())),
                    "Mon, 01 Jan 10000 00:00:00 GMT", "Sunday, 06-Nov-94 08:49:37 GMT")
            headers["If-Modified-Since"] = date.encode("utf-8")
        return headers


# --- What the plugin issued, to judge its 304s -----------------------------------------------

@dataclass
class Validated:
    etag: Optional[str]
    last_modified: Optional[str]
    comparable: Tuple


@dataclass
class Issued:
    by_request: Dict[Tuple, Validated] = field(default_factory=dict)
    bodies: Dict[str, Tuple] = field(default_factory=dict)  # etag -> comparable of its 200

    def record(self, key: Tuple, answer: Answer, comparable: Tuple) -> None:
        if answer.status != 200:
            return
        etag = answer.header("ETag")
        self.by_request[key] = Validated(etag, answer.header("Last-Modified"), comparable)
        if etag:
            self.bodies[etag] = comparable


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


_DATE_FORMATS = ("%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate
                 "%A, %d-%b-%y %H:%M:%S GMT",  # RFC 850 (two-digit years near ours)
                 "%a %b %d %H:%M:%S %Y")       # asctime (day padded with a space)


def _parse_date(text: str) -> Optional[datetime]:
    """An HTTP-date in any of its three formats (ASCII digits only), else None."""
    text = " ".join(text.split())
    if not text.isascii():
        return None
    for pattern in _DATE_FORMATS:
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def legitimate_304(headers: Mapping[str, bytes], plain: Tuple, issued: Issued,
                   key: Tuple) -> Optional[str]:
    """Why a 304 is correct, or None.  ``plain`` is plain Orthanc's answer (comparable)."""
    if plain[0] != 200:
        return None  # no current representation: nothing to revalidate
    if "If-None-Match" in headers:
        value = headers["If-None-Match"].decode("utf-8")
        if value.strip() == "*":
            return "If-None-Match: *"
        sent = {_opaque(token.strip()) for token in value.split(",")}
        for etag, comparable in issued.bodies.items():
            if _opaque(etag) in sent and comparable == plain:
                return "the plugin issued %s with this very content" % etag
        return None
    since = _parse_date(headers.get("If-Modified-Since", b"").decode("utf-8"))
    own = issued.by_request.get(key)
    if since is None or own is None or own.last_modified is None or own.comparable != plain:
        return None
    modified = _parse_date(own.last_modified)
    if modified is not None and modified <= since <= datetime.now(timezone.utc):
        return "not modified since the Last-Modified of the plugin's 200"
    return None


def known_difference(target: str, route: str, headers: Mapping[str, bytes]) -> Optional[str]:
    """Documented differences (docs/fidelity.md), not counted as failures."""
    accept = headers.get("Accept", b"").decode("utf-8").lstrip()
    if route == "file" and accept in DICOMWEB:
        return "DICOMweb answer of /file (406 by the plugin)"
    path = target.split("?")[0].split("#")[0]
    if "%00" in path and path.split("%00")[0].endswith("/"):
        # Orthanc cuts the URI at NUL: ".../frames/%00/preview" is ".../frames/", whose
        # trailing slash shows in Orthanc's error Uri, not in the plugin's.
        return "trailing slash in the Uri of an error body"
    return None


def source_line_details(plain: Answer, answer: Answer) -> bool:
    """The answers differ only by such Details (docs/fidelity.md, known differences)."""
    return plain.status == answer.status and \
        without_source_line_details(plain.body) == answer.body != plain.body


# --- The fuzz ------------------------------------------------------------------------------------

@dataclass
class Report:
    requests: int = 0
    compared: int = 0
    conditional: int = 0
    not_modified: int = 0
    known: int = 0
    plain_5xx: List[str] = field(default_factory=list)
    plugin_5xx: List[str] = field(default_factory=list)
    differences: List[str] = field(default_factory=list)
    wrong_304: List[str] = field(default_factory=list)

    def problems(self) -> List[str]:
        return self.plugin_5xx + self.differences + self.wrong_304


def _describe(target: str, headers: Mapping[str, bytes]) -> str:
    if os.environ.get("FUZZ_REPORT"):  # the whole request, to replay it
        return "GET %s %r" % (target, headers)
    shown = target if len(target) <= 160 else target[:120] + "...(%d chars)" % len(target)
    return "GET %s %s" % (shown, {k: v[:80] for k, v in headers.items()})


def run_fuzz(pair: Pair, cases: int, seconds: float, seed: int) -> Report:
    generator = Generator(random.Random(seed), pair.ids)
    plain_client, cached_client = pair.client(pair.plain), pair.client(pair.cached)
    issued = Issued()
    report = Report()
    deadline = time.monotonic() + seconds
    for _ in range(cases):
        if time.monotonic() > deadline:
            break
        target, route, headers = generator.request()
        key = (target, headers.get("Accept"))
        plain = plain_client.get(target, headers)
        answer = cached_client.get(target, headers)
        report.requests += 2
        expected = pair.comparable(pair.plain, plain)
        actual = pair.comparable(pair.cached, answer)
        described = _describe(target, headers)
        if plain.status >= 500:
            report.plain_5xx.append("%s\n    plain: %s" % (described, plain))
        if answer.status >= 500 and plain.status < 500:
            report.plugin_5xx.append("%s\n    plain:  %s\n    plugin: %s" % (described, plain,
                                                                             answer))
        elif known_difference(target, route, headers):
            report.known += 1
        elif actual != expected and source_line_details(plain, answer):
            report.known += 1
        else:
            report.compared += 1
            if actual != expected:
                report.differences.append("%s\n    plain:  %s\n    plugin: %s"
                                          % (described, plain, answer))
        issued.record(key, answer, actual)

        if generator.rng.random() < 0.6:
            conditional = dict(headers, **generator.validators(issued, key))
            answer = cached_client.get(target, conditional)
            report.requests += 1
            report.conditional += 1
            described = _describe(target, conditional)
            if answer.status >= 500 and plain.status < 500:
                report.plugin_5xx.append("%s\n    plain:  %s\n    plugin: %s"
                                         % (described, plain, answer))
            elif answer.status == 304:
                report.not_modified += 1
                if legitimate_304(conditional, expected, issued, key) is None:
                    report.wrong_304.append("%s\n    plain:  %s\n    plugin: 304" % (described,
                                                                                     plain))
            elif not known_difference(target, route, headers):
                actual = pair.comparable(pair.cached, answer)
                if actual != expected:
                    # Odd validators may be refused before Orthanc sees them (civetweb's
                    # "400 Malformed message"): ask plain Orthanc the very same request.
                    plain = plain_client.get(target, conditional)
                    report.requests += 1
                    if actual != pair.comparable(pair.plain, plain) \
                            and not source_line_details(plain, answer):
                        report.differences.append(
                            "%s (conditional)\n    plain:  %s\n    plugin: %s"
                            % (described, plain, answer))
                issued.record(key, answer, actual)
    return report


def test_fuzzed_requests_get_orthancs_answers(pair: Pair) -> None:
    began = time.monotonic()
    report = run_fuzz(pair, FUZZ_CASES, FUZZ_SECONDS, FUZZ_SEED)
    elapsed = time.monotonic() - began
    print("\nhostile input: %d requests in %.1f s, %d compared with plain Orthanc, %d conditional "
          "(%d answered 304), %d known differences; plugin 5xx: %d, differences: %d, "
          "wrong 304: %d, plain Orthanc 5xx: %d"
          % (report.requests, elapsed, report.compared, report.conditional, report.not_modified,
             report.known, len(report.plugin_5xx), len(report.differences),
             len(report.wrong_304), len(report.plain_5xx)))
    assert report.compared >= 100, "the fuzz did too little in %.0f s" % elapsed
    assert pair.cached.is_running and pair.plain.is_running, "a server crashed"
    for server in (pair.plain, pair.cached):
        assert server.get("/system").status_code == 200
    problems = report.problems()
    if os.environ.get("FUZZ_REPORT"):  # every problem, for a closer look
        Path(os.environ["FUZZ_REPORT"]).write_text("\n".join(problems + ["plain 5xx:"]
                                                             + report.plain_5xx))
    assert not problems, (
        "%d problems (5xx: %d, differences: %d, wrong 304: %d), first ones:\n%s" % (
        len(problems), len(report.plugin_5xx), len(report.differences), len(report.wrong_304),
        "\n".join(problems[:15])))


# --- Regressions found by the fuzz -----------------------------------------------------------

#: Deterministic cases, one per distinct failure the fuzz met (``{name}`` is a resource id).
REGRESSIONS = [
    pytest.param("/instances/{instance}%3F/tags", None, id="'?' in an instance id"),
    pytest.param("/studies/{study}%3Fshort/shared-tags", None, id="'?' in a study id"),
    pytest.param("/instances/{instance}%3F/preview", None, id="'?' in the id of an image route"),
    pytest.param("/instances/{multiframe}/frames/0%3F/preview", None, id="'?' in a frame (image)"),
    pytest.param("/instances/{multiframe}/frames/0%3F/raw", None, id="'?' in a frame (raw)"),
    pytest.param("/instances/{multiframe}/frames/0%3Fx/numpy", None, id="'?' in a frame (numpy)"),
    pytest.param("/instances/{instance}/frames/%s1/preview" % ("0" * 5000), None,
                 id="frame of 5001 digits (image)"),
    pytest.param("/instances/{multiframe}/frames/%s/matlab" % ("9" * 5000), None,
                 id="frame of 5000 digits (matlab)"),
    pytest.param("/instances/{instance}/preview?quality=%s" % ("9" * 5000), "image/jpeg",
                 id="quality of 5000 digits"),
    pytest.param("/instances/{instance}/preview", "image/jpeg;q=\u0661",
                 id="q-value with an Arabic-Indic digit"),
    pytest.param("/instances/{instance}/preview", "image/jpeg;q=0.\u0665, image/png;q=0.4",
                 id="q-value with a non-ASCII digit among others"),
    pytest.param("/instances/{instance}/preview", "image/jpeg;q=0.5;q=2",
                 id="a second q parameter (Orthanc reads the first)"),
    pytest.param("/instances/{instance}/preview", "image/jpeg;q=0.3, image/png;q=0.5;q=0.1",
                 id="a second q parameter changes the choice"),
    pytest.param("/instances/{pdf}/frames/1/preview", None, id="frame 1 of a PDF instance"),
    pytest.param("/instances/{pdf}/frames/4294967295/image-uint8", None,
                 id="frame 4294967295 of a PDF instance"),
    pytest.param("/instances/{multiframe}/frames/0/rendered?width=-1&smooth=x", None,
                 id="bad width and bad smooth"),
    pytest.param("/instances/{instance}/frames/0/rendered?window-center==&smooth=100", None,
                 id="bad window-center and bad smooth"),
    pytest.param("/instances/{instance}/frames/0/numpy?compress=-1", None,
                 id="numpy with a non-Boolean compress (error Details)"),
    pytest.param("/instances/%25{instance}/tags", None, id="double percent-encoding"),
]


@pytest.mark.parametrize("path, accept", REGRESSIONS)
def test_hostile_request_is_answered_like_orthanc(pair: Pair, path: str,
                                                  accept: Optional[str]) -> None:
    target = path.format(**pair.ids)
    headers = {"Accept": accept.encode("utf-8")} if accept is not None else {}
    expected = pair.client(pair.plain).get(target, headers)
    for attempt in ("first", "second"):
        actual = pair.client(pair.cached).get(target, headers)
        assert pair.comparable(pair.cached, actual) == pair.comparable(pair.plain, expected), (
            "%s request differs\n  plain:  %s\n  plugin: %s" % (attempt, expected, actual))


@pytest.mark.xfail(strict=True, reason=(
    "known limitation: Orthanc's Python plugin (4.0 to 7.1 at least) cannot pass a URI or "
    "header that is not valid UTF-8 to the plugin's incoming-request filter ('Cannot create "
    "a Python string'), so Orthanc answers 500 to every such request, on any route, while "
    "WatchHttpWrites is on (the default)"))
@pytest.mark.parametrize("target, headers", [
    pytest.param("/instances/%FF/tags", {}, id="invalid UTF-8 in a cached route's id"),
    pytest.param("/patients/%FF", {}, id="invalid UTF-8 in another route"),
    pytest.param("/patients", {"X-Anything": b"\xff"}, id="invalid UTF-8 in a header"),
])
def test_invalid_utf8_is_answered_like_orthanc(pair: Pair, target: str,
                                               headers: Dict[str, bytes]) -> None:
    expected = pair.client(pair.plain).get(target, headers)
    actual = pair.client(pair.cached).get(target, headers)
    assert actual.status < 500
    assert pair.comparable(pair.cached, actual) == pair.comparable(pair.plain, expected)


#: A header value in ISO-8859-1, as older Java clients send it.
LATIN1 = {"User-Agent": "café".encode("latin-1")}


@pytest.mark.parametrize("operation", [
    pytest.param("uncached GET", id="uncached GET"),
    pytest.param("upload", id="upload"),
    pytest.param("deletion", id="deletion"),
    pytest.param("cached GET", id="cached GET", marks=pytest.mark.xfail(strict=True, reason=(
        "known limitation: the Python plugin decodes the headers of a request for a Python "
        "REST route strictly as UTF-8 before calling it, and answers 500 (docs/freshness.md)"))),
])
def test_latin1_header_bytes_without_the_filter(orthanc_factory, cached_orthanc,
                                                operation: str) -> None:
    """With WatchHttpWrites off, no filter is registered: a request carrying a latin-1
    header byte gets plain Orthanc's answer, except on the plugin's own routes."""
    plain = orthanc_factory()
    cached = cached_orthanc(settings={"WatchHttpWrites": False})
    files = sample_files(PATIENT, SEED, series=1, instances=2)
    ids = upload_samples(plain, files)
    assert upload_samples(cached, files) == ids
    extra = sample_files("PAT-LATIN1", SEED, series=1, instances=1)[0]
    target, method, body = {
        "uncached GET": ("/series/%s" % ids["series"], "GET", b""),
        "cached GET": ("/studies/%s/shared-tags" % ids["study"], "GET", b""),
        "upload": ("/instances", "POST", extra),
        "deletion": ("/instances/%s" % ids["instance"], "DELETE", b""),
    }[operation]
    answers = []
    for server in (plain, cached):
        client = RawClient(server.port)
        answers.append(client.request(method, target, LATIN1, body))
        client.close()
    expected, actual = answers
    assert actual.status < 500, str(actual)
    assert (actual.status, normalized_body(actual.body, actual.header("Content-Type"))) == (
        expected.status, normalized_body(expected.body, expected.header("Content-Type")))
