"""``http.dicomweb_urls`` against the DICOMweb plugin of each stack (1.7, 1.20, 1.24), and
what a Python callback can obtain from that plugin (docs/dicomweb.md).

Plain Orthanc with its DICOMweb plugin (no cache plugin) answers WADO-RS
metadata (``BulkDataURI``) and QIDO (``RetrieveURL``) to requests that carry
the headers of the unit table's rows, sent over a raw socket (so that a row
may have no ``Host`` at all, as an internal call has none); the base of every
URL must be what ``base_url`` computes for the same headers and settings.
"""

from __future__ import annotations

import json
import re
import socket
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from orthanc_cache_plugin.http.dicomweb_urls import DicomWebSite, base_url, client_base, rebase
from support.dicom_factory import make_instance, make_uid
from support.orthanc_server import OrthancServer
from support.stacks import DICOMWEB_PLUGIN, PYTHON_PLUGIN

#: Also run on Debian 12's Orthanc 1.10.1 and Debian 13's 1.12.7 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

#: Headers of the requests (no Host unless named); quotes left out: the DICOMweb
#: plugin 1.20+ writes such a base unescaped into metadata (client_base refuses it).
HEADER_ROWS: List[Dict[str, str]] = [
    {},
    {"Host": "example.org:9999"},
    {"Host": "example.org:9999", "X-Forwarded-Host": "xf.example"},
    {"Host": "example.org:9999", "X-Forwarded-Proto": "https"},
    {"Host": "example.org:9999", "X-Forwarded-Host": " xf.example:8443 ",
     "X-Forwarded-Proto": "https"},
    {"Host": "example.org:9999", "x-forwarded-host": "xf.example", "x-forwarded-proto": "http"},
    {"Host": "example.org:9999", "X-Forwarded-Host": "  ", "X-Forwarded-Proto": "https"},
    {"Host": "example.org:9999", "Forwarded": "host=a;proto=https"},
    {"Host": "example.org:9999", "Forwarded": "proto=https"},
    {"Host": "example.org:9999", "Forwarded": " HOST = a ; Proto=https, host=b;proto=http"},
    {"Host": "example.org:9999", "Forwarded": "host=a=b;proto=https"},
    {"Forwarded": "host=a;proto=http", "X-Forwarded-Host": "xf.example",
     "X-Forwarded-Proto": "https"},
    {"Forwarded": "host=a;proto=http", "X-Forwarded-Proto": "https"},
    {"Host": "example.org:9999", "X-Forwarded-Port": "1", "X-Forwarded-Prefix": "/p"},
]

#: DicomWeb sections: the default, the moved root the plugin would use, a fixed Host.
SETTINGS = {
    "default": {},
    "moved": {"Root": "/dicom-web-internal/", "PublicRoot": "dicom-web", "Ssl": True},
    "host": {"Host": "cfg.example:1", "Ssl": True},
}


def raw_get(port: int, path: str, headers: Dict[str, str]) -> Tuple[int, bytes]:
    """An HTTP/1.0 GET with exactly ``headers``: (status, body)."""
    request = "GET %s HTTP/1.0\r\n%s\r\n" % (
        path, "".join("%s: %s\r\n" % item for item in headers.items()))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request.encode("latin-1"))
        answer = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def bases(body: bytes) -> List[str]:
    """The base of every absolute URL of a DICOMweb JSON answer (before ``studies/``)."""
    found: List[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "BulkDataURI":
                    found.append(value)
                elif key == "00081190":
                    found.extend(value.get("Value", []))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(body))
    return [re.sub(r"studies/.*", "", url) for url in found]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_base_url_is_what_the_dicomweb_plugin_writes(
        orthanc_factory: Callable[..., OrthancServer], name: str) -> None:
    settings = dict(SETTINGS[name], Enable=True)
    server = orthanc_factory(config={"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": settings})
    version = tuple(int(part) for part in
                    server.get("/plugins/dicom-web").json()["Version"].split(".")[:2])
    site = DicomWebSite(version, root=settings.get("Root", "/dicom-web/"),
                        public_root=settings.get("PublicRoot"), host=settings.get("Host", ""),
                        ssl=settings.get("Ssl", False))
    study, series = make_uid("dw-urls", "study"), make_uid("dw-urls", "series", 1)
    server.upload(make_instance("PAT-dw-urls", study_uid=study, series_uid=series))
    served = site.served_root
    paths = (served + "studies/%s/series/%s/metadata" % (study, series),
             served + "studies/%s/series" % study)
    checked = 0
    for headers in HEADER_ROWS:
        expected = base_url(site, {key.lower(): value for key, value in headers.items()})
        for path in paths:
            status, body = raw_get(server.port, path, headers)
            assert status == 200, (path, headers, body[:200])
            found = set(bases(body))
            assert found == {expected}, (name, version, path, headers)
            checked += 1
    assert checked == 2 * len(HEADER_ROWS)


#: A route of its own that asks DICOMweb's route (``/probe/...``), and a callback on
#: DICOMweb's own QIDO route (registered first) that asks that very route again.
PROBE = '''
import threading

import orthanc

depth = threading.local()


def own_route(output, uri, **request):
    body = orthanc.RestApiGetAfterPlugins("/dicom-web/" + request["groups"][0])
    output.AnswerBuffer(body, "application/dicom+json")


def shadowing(output, uri, **request):
    depth.value = getattr(depth, "value", 0) + 1
    try:
        if depth.value >= 3:
            output.AnswerBuffer("called again at depth %d" % depth.value, "text/plain")
            return
        body = orthanc.RestApiGetAfterPlugins(uri)
        output.AnswerBuffer(body, "application/dicom+json")
    finally:
        depth.value -= 1


orthanc.RegisterRestCallback("/probe/dicom-web/(.*)", own_route)
orthanc.RegisterRestCallback("/dicom-web/studies/([^/]+)/series", shadowing)
'''


def test_a_python_route_gets_dicomwebs_answer_only_from_a_path_of_its_own(
        orthanc_factory: Callable[..., OrthancServer], tmp_path: Path) -> None:
    """Through a route of its own, a Python callback gets DICOMweb's answer, with the
    internal base (as to a request without Host); on DICOMweb's route itself, loaded
    first, it is called again instead (the reason the design moves a root or splits
    routes)."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    server = orthanc_factory(python_script=script, config={
        "Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True}})
    version = tuple(int(part) for part in
                    server.get("/plugins/dicom-web").json()["Version"].split(".")[:2])
    study, series = make_uid("dw-probe", "study"), make_uid("dw-probe", "series", 1)
    server.upload(make_instance("PAT-dw-probe", study_uid=study, series_uid=series))
    metadata = "studies/%s/series/%s/metadata" % (study, series)

    site = DicomWebSite(version)
    internal = site.internal_base()
    for path in (metadata, "studies/%s/series/%s/instances" % (study, series)):
        status, body = raw_get(server.port, "/probe/dicom-web/" + path, {"Host": "client.example"})
        assert status == 200
        assert set(bases(body)) == {internal}
        assert body == raw_get(server.port, "/dicom-web/" + path, {})[1]
        # Rebased for a client, the internal answer is DICOMweb's answer to that client.
        for headers in HEADER_ROWS[1:]:
            client = client_base(site, {key.lower(): value for key, value in headers.items()})
            assert client is not None
            assert rebase(body, internal, client) == \
                raw_get(server.port, "/dicom-web/" + path, headers)[1], (path, headers)

    status, body = raw_get(server.port, "/dicom-web/studies/%s/series" % study,
                           {"Host": "client.example"})
    assert (status, body) == (200, b"called again at depth 3")
