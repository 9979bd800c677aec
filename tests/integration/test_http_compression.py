"""What Orthanc does to answers' bodies with ``HttpCompressionEnabled``: the ground truth
that ``http.encoding`` and the plugin's compressed answers build on.

A probe script (not the cache plugin) answers the same ~50 KB JSON two ways: plainly
through ``AnswerBuffer`` (``/probe/plain``), and gzipped by the script, which sets
``Content-Encoding: gzip`` itself (``/probe/gzipped``); ``/probe/small`` is a plain JSON
of about 1 KB.  Orthanc's own JSON (``/statistics``, an instance's ``/tags``) is asked
too.  Each is fetched with ``http.client`` (bytes as sent, nothing decoded; no
``Accept-Encoding`` unless the row names one) and the table records the
``Content-Encoding`` fields received and how many codings wrap the body.  Both
settings of ``HttpCompressionEnabled``, and its default, are run on the selected
stack.
"""

from __future__ import annotations

import gzip
import http.client
import json
import textwrap
import zlib
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import pytest

from support import stacks
from support.dicom_factory import make_instance
from support.orthanc_server import OrthancServer

#: Also run on Debian 12's Orthanc 1.10.1 and Debian 13's 1.12.7 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

PROBE = '''
import gzip
import json

import orthanc

BIG = json.dumps([{"ID": "%08d" % index, "MainDicomTags": {"PatientName": "Doe^John",
                   "StudyDescription": "probe %d" % (index % 7)}} for index in range(500)])
SMALL = json.dumps([{"ID": "%08d" % index, "Type": "Study"} for index in range(30)])


def plain(output, uri, **request):
    output.AnswerBuffer(BIG, "application/json")


def small(output, uri, **request):
    output.AnswerBuffer(SMALL, "application/json")


def gzipped(output, uri, **request):
    output.SetHttpHeader("Content-Encoding", "gzip")
    output.AnswerBuffer(gzip.compress(BIG.encode("utf-8")), "application/json")


orthanc.RegisterRestCallback("/probe/plain", plain)
orthanc.RegisterRestCallback("/probe/small", small)
orthanc.RegisterRestCallback("/probe/gzipped", gzipped)
'''

#: The Accept-Encoding values sent (None: no field at all).
CLIENTS = (None, "gzip", "gzip, deflate, br", "deflate", "gzip;q=0", "gzip;q=0.5", "GZIP",
           "identity")
#: (Content-Encoding fields received, codings found wrapping the body).
Seen = Tuple[Tuple[str, ...], Tuple[str, ...]]


def fetch(server: OrthancServer, path: str, accept_encoding: Optional[str]) -> Tuple[
        Tuple[str, ...], bytes]:
    """The Content-Encoding fields and the body exactly as Orthanc sent them."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        # http.client adds "Accept-Encoding: identity" unless told not to.
        connection.putrequest("GET", path, skip_accept_encoding=True)
        if accept_encoding is not None:
            connection.putheader("Accept-Encoding", accept_encoding)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status, body[:200])
        return tuple(response.msg.get_all("Content-Encoding") or ()), body
    finally:
        connection.close()


def unwrap(body: bytes) -> Tuple[Tuple[str, ...], bytes]:
    """The codings around ``body`` (outermost first: gzip, or zlib-wrapped deflate) and
    what is inside them."""
    layers = []
    while True:
        if body[:2] == b"\x1f\x8b":
            layers.append("gzip")
            body = gzip.decompress(body)
        elif len(body) > 2 and body[0] & 0x0F == 8 and int.from_bytes(body[:2], "big") % 31 == 0:
            layers.append("deflate")
            body = zlib.decompress(body)
        else:
            return tuple(layers), body


def observe(server: OrthancServer, paths: Dict[str, str], expected_bodies: Dict[str, bytes]
            ) -> Dict[Tuple[str, Optional[str]], Seen]:
    table = {}
    for name, path in paths.items():
        for client in CLIENTS:
            fields, body = fetch(server, path, client)
            layers, inside = unwrap(body)
            assert inside == expected_bodies[name], (name, client)  # nothing else changed
            table[(name, client)] = (fields, layers)
    return table


def print_table(setting: bool, table: Dict[Tuple[str, Optional[str]], Seen]) -> None:
    print("\n%s, HttpCompressionEnabled=%s" % (stacks.orthanc_version(), str(setting).lower()))
    for (name, client), (fields, layers) in table.items():
        print("  %-9s %-19s Content-Encoding: %-13s body: %s"
              % (name, "none" if client is None else client, ", ".join(fields) or "-",
                 " in ".join(layers) or "identity"))


def expected(setting: bool, version: Tuple[int, ...]) -> Dict[Tuple[str, Optional[str]], Seen]:
    """What was seen on 1.10.1, 1.12.7 and 1.13.0 (the versions between were not run)."""
    old = version < (1, 12, 7)  # 1.10.1
    table = {}
    for client in CLIENTS:
        # Which clients Orthanc compresses for when it does: those with a member that is
        # exactly "gzip" or "deflate" (gzip preferred); a member with a weight (even
        # q=0.5) or in capitals is not recognised, so q=0 refuses by accident.
        coding: Tuple[str, ...] = ()
        if setting and client is not None:
            names = [part.strip() for part in client.split(",")]
            coding = ("gzip",) if "gzip" in names else ("deflate",) if "deflate" in names else ()
        none: Seen = ((), ())
        table[("plain", client)] = (coding, coding)
        # From 1.12.2 Orthanc compresses only bodies of 2 KB or more.
        table[("small", client)] = (coding, coding) if old else none
        table[("tags", client)] = (coding, coding)
        table[("stats", client)] = (coding, coding) if old else none
        # A body the plugin encoded itself: 1.10.1 encodes it again (the plugin's
        # header, then Orthanc's); later versions leave it alone.
        # Fields in the order sent, layers outermost first.
        table[("gzipped", client)] = ((("gzip",) + coding, coding + ("gzip",)) if old
                                      else (("gzip",), ("gzip",)))
    return table


@pytest.mark.parametrize("setting", [True, False, None],
                         ids=["compression-on", "compression-off", "compression-default"])
def test_what_orthanc_does_to_bodies_with_http_compression(
        orthanc_factory: Callable[..., OrthancServer], tmp_path: Path,
        setting: Optional[bool]) -> None:
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    config = {} if setting is None else {"HttpCompressionEnabled": setting}
    server = orthanc_factory(python_script=script, config=config)
    version = tuple(int(part) for part in (stacks.orthanc_version() or "0").split("."))
    if setting is None:  # on by default up to 1.12.1 (Orthanc's NEWS for 1.12.2)
        setting = version < (1, 12, 2)
    instance = server.upload(make_instance("PAT-compression", seed="compression"))["ID"]
    paths = {"plain": "/probe/plain", "small": "/probe/small", "gzipped": "/probe/gzipped",
             "stats": "/statistics", "tags": "/instances/%s/tags" % instance}
    bodies = {name: fetch(server, path, None)[1] for name, path in paths.items()}
    bodies["gzipped"] = gzip.decompress(bodies["gzipped"])  # the script's own layer
    assert 40_000 < len(bodies["plain"]) < 60_000 and len(bodies["small"]) < 2000
    assert len(bodies["stats"]) < 2000 < len(bodies["tags"])
    assert json.loads(bodies["plain"]) == json.loads(bodies["gzipped"])

    table = observe(server, paths, bodies)
    print_table(setting, table)
    assert table == expected(setting, version)
