"""JSON answers stored gzip-compressed and sent as each client asks, on every stack.

Bytes are read as Orthanc sent them (``http.client``, nothing decoded), so that
exactly one coding layer is proven, whichever of Orthanc and the plugin
compresses: the plugin where Orthanc does not, Orthanc itself with
``HttpCompressionEnabled`` on (1.10.1's default), where it would compress the
plugin's gzip JSON a second time (measured here: the first test fails with two
layers if the plugin sends gzip there).
"""

from __future__ import annotations

import gzip
import http.client
import time
from typing import Callable, Dict, Optional, Tuple

import pytest

from support import stacks
from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer

pytestmark = pytest.mark.old_stack

SETTLE = 3.1
BROWSER = "gzip, deflate, br"


def fetch(server: OrthancServer, path: str, accept_encoding: Optional[str],
          **headers: str) -> Tuple[int, Dict[str, str], Tuple[str, ...], bytes]:
    """Status, headers, the Content-Encoding fields and the body exactly as sent."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        if accept_encoding is not None:
            connection.putheader("Accept-Encoding", accept_encoding)
        for name, value in headers.items():
            connection.putheader(name.replace("_", "-"), value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        return (response.status, dict(response.getheaders()),
                tuple(response.msg.get_all("Content-Encoding") or ()), body)
    finally:
        connection.close()


def orthanc_compresses(compression: Optional[bool]) -> bool:
    """HttpCompressionEnabled, given or by default (on up to 1.12.1)."""
    version = tuple(int(part) for part in (stacks.orthanc_version() or "0").split(".")[:3])
    return compression if compression is not None else version < (1, 12, 2)


@pytest.fixture
def study(cached_orthanc: Callable[..., OrthancServer]) -> Callable[..., Tuple[OrthancServer,
                                                                              str]]:
    def start(compression: Optional[bool] = None) -> Tuple[OrthancServer, str]:
        config = {} if compression is None else {"HttpCompressionEnabled": compression}
        server = cached_orthanc(config=config)
        uploaded = [server.upload(dicom) for dicom in make_study("PAT-GZ", 2, 6, seed="gz")]
        time.sleep(SETTLE)
        return server, uploaded[0]["ParentStudy"]
    return start


@pytest.mark.parametrize("compression", [None, False, True])
def test_json_travels_with_exactly_one_layer_as_each_client_asks(study, compression):
    server, study_id = study(compression)
    path = "/studies/%s/instances-tags" % study_id
    plain = fetch(server, path, None)
    assert plain[0] == 200 and plain[2] == () and plain[3].startswith(b"{")
    identity = plain[3]
    for _ in range(2):  # the miss (or the first hit), then a hit from the store
        status, headers, codings, body = fetch(server, path, BROWSER)
        assert status == 200 and codings == ("gzip",), (codings, headers)
        assert gzip.decompress(body) == identity  # one layer, Orthanc's bytes inside
        assert "Accept-Encoding" in headers["Vary"]
        assert headers["X-Cache-Status"] in ("MISS", "HIT")
    # Refused gzip, identity only, or no field at all: Orthanc's bytes as they are.
    for client in (None, "identity", "gzip;q=0", "deflate;q=1, gzip;q=0"):
        status, headers, codings, body = fetch(server, path, client)
        assert (status, codings, body) == (200, (), identity), client
    mode = "would compress the plugin's gzip answers again" if \
        orthanc_compresses(compression) else "go out gzip-compressed"
    assert mode in server.log_text(), server.log_tail()


def test_each_coding_revalidates_with_its_own_entity_tag(study):
    server, study_id = study(False)  # the plugin compresses, on every version
    path = "/studies/%s/shared-tags" % study_id
    _, plain, _, identity = fetch(server, path, None)
    _, packed, _, body = fetch(server, path, BROWSER)
    assert gzip.decompress(body) == identity
    assert packed["ETag"] != plain["ETag"] and packed["Last-Modified"] == plain["Last-Modified"]
    for client, tag in ((None, plain["ETag"]), (BROWSER, packed["ETag"])):
        status, headers, _, body = fetch(server, path, client, If_None_Match=tag)
        assert (status, body, headers["X-Cache-Status"]) == (304, b"", "REVALIDATED")
    # A tag names the bytes of one coding: the other coding's client gets its body.
    status, headers, codings, body = fetch(server, path, None, If_None_Match=packed["ETag"])
    assert (status, codings, body) == (200, (), identity)
    status, headers, codings, body = fetch(server, path, BROWSER, If_None_Match=plain["ETag"])
    assert (status, codings) == (200, ("gzip",)) and gzip.decompress(body) == identity
