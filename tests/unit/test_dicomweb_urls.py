"""The DICOMweb plugin's base URL, as a table (rows measured on DICOMweb 1.7, 1.20 and
1.24; tests/integration/test_dicomweb_urls.py checks the function against each)."""

import pytest

from orthanc_cache_plugin.http.dicomweb_urls import DicomWebSite, base_url, client_base, rebase

V17, V120, V124 = (1, 7), (1, 20), (1, 24)
NEW = (V120, V124)
HOST = {"host": "example.org:9999"}
X_FORWARDED = {"x-forwarded-host": " xf.example:8443 ", "x-forwarded-proto": "https"}


def site(version, **settings):
    return DicomWebSite(version, **settings)


@pytest.mark.parametrize("versions, headers, expected", [
    # No Host header at all: an internal call, or HTTP/1.0.
    ((V17,) + NEW, {}, "http://localhost:8042/dicom-web/"),
    ((V17,) + NEW, HOST, "http://example.org:9999/dicom-web/"),
    ((V17,) + NEW, {"Host": "Example.org"}, "http://Example.org/dicom-web/"),
    # One X-Forwarded header alone is ignored.
    ((V17,) + NEW, dict(HOST, **{"x-forwarded-host": "xf.example"}),
     "http://example.org:9999/dicom-web/"),
    ((V17,) + NEW, dict(HOST, **{"x-forwarded-proto": "https"}),
     "http://example.org:9999/dicom-web/"),
    # Both: from 1.14 (stripped of spaces); 1.7 ignores them.
    (NEW, dict(HOST, **X_FORWARDED), "https://xf.example:8443/dicom-web/"),
    ((V17,), dict(HOST, **X_FORWARDED), "http://example.org:9999/dicom-web/"),
    (NEW, dict(HOST, **{"X-Forwarded-Host": "xf.example", "X-Forwarded-Proto": "http"}),
     "http://xf.example/dicom-web/"),
    (NEW, dict(HOST, **{"x-forwarded-host": "xf.example", "x-forwarded-proto": "ftp"}),
     "http://xf.example/dicom-web/"),
    # An empty X-Forwarded-Host leaves Forwarded and Host to decide, its proto applies.
    (NEW, dict(HOST, **{"x-forwarded-host": "  ", "x-forwarded-proto": "https"}),
     "https://example.org:9999/dicom-web/"),
    # Forwarded: first element only, host= and proto=, keys without case, values raw.
    ((V17,) + NEW, dict(HOST, forwarded="host=a;proto=https"), "https://a/dicom-web/"),
    ((V17,) + NEW, dict(HOST, forwarded="proto=https"), "https://example.org:9999/dicom-web/"),
    ((V17,) + NEW, dict(HOST, forwarded="host=a"), "http://a/dicom-web/"),
    ((V17,) + NEW, dict(HOST, forwarded="host=a;proto=https, host=b;proto=http"),
     "https://a/dicom-web/"),
    ((V17,) + NEW, dict(HOST, Forwarded=" HOST = a ; Proto=https"), "https://a/dicom-web/"),
    ((V17,) + NEW, dict(HOST, forwarded="host=a=b"), "http://example.org:9999/dicom-web/"),
    ((V17,) + NEW, dict(HOST, forwarded="host="), "http://example.org:9999/dicom-web/"),
    ((V17,) + NEW, dict(HOST, forwarded='for=1.2.3.4;host="q.example";proto=https'),
     'https://"q.example"/dicom-web/'),
    ((V17,) + NEW, {"forwarded": "host=a;proto=https"}, "https://a/dicom-web/"),
    # Forwarded and the X-Forwarded pair: the pair wins from 1.14, Forwarded before.
    (NEW, dict(X_FORWARDED, forwarded="host=a;proto=http"), "https://xf.example:8443/dicom-web/"),
    ((V17,), dict(X_FORWARDED, forwarded="host=a;proto=http"), "http://a/dicom-web/"),
    ((V17,) + NEW, {"forwarded": "host=a;proto=http", "x-forwarded-proto": "https"},
     "http://a/dicom-web/"),
    # Headers DICOMweb never reads.
    ((V17,) + NEW, dict(HOST, **{"x-forwarded-port": "1", "x-forwarded-prefix": "/p"}),
     "http://example.org:9999/dicom-web/"),
])
def test_base_url_from_headers(versions, headers, expected):
    for version in versions:
        assert base_url(site(version), headers) == expected, version


@pytest.mark.parametrize("settings, headers, expected", [
    # The Host setting: every header ignored, proto included.
    (dict(host="cfg.example:1"), dict(HOST, forwarded="host=a;proto=https"),
     "http://cfg.example:1/dicom-web/"),
    (dict(host="cfg.example:1", ssl=True), dict(X_FORWARDED, forwarded="proto=http"),
     "https://cfg.example:1/dicom-web/"),
    # Ssl is a default that a forwarded proto overrides.
    (dict(ssl=True), HOST, "https://example.org:9999/dicom-web/"),
    (dict(ssl=True), {}, "https://localhost:8042/dicom-web/"),
    (dict(ssl=True), dict(HOST, forwarded="proto=http"), "http://example.org:9999/dicom-web/"),
    # Roots get their slashes.
    (dict(root="dicom-web-internal", public_root="pub"), HOST, "http://example.org:9999/pub/"),
    (dict(root="/dicom-web-internal/"), HOST, "http://example.org:9999/dicom-web-internal/"),
])
def test_base_url_from_settings(settings, headers, expected):
    for version in NEW:
        assert base_url(site(version, **settings), headers) == expected


def test_public_root_is_named_from_1_8_on():
    moved = dict(root="/dicom-web-internal/", public_root="/dicom-web/")
    assert site(V17, **moved).internal_base() == "http://localhost:8042/dicom-web-internal/"
    assert site((1, 8), **moved).internal_base() == "http://localhost:8042/dicom-web/"
    assert site(V124, **moved).served_root == "/dicom-web-internal/"


@pytest.mark.parametrize("headers, expected", [
    (HOST, "http://example.org:9999/dicom-web/"),
    ({"host": "[::1]:8042"}, "http://[::1]:8042/dicom-web/"),
    ({"host": 'h"x'}, None),
    ({"host": "h\\x"}, None),
    ({"host": "h x"}, None),
    ({"forwarded": 'host="q.example"'}, None),
    ({"host": "h\u00e9"}, None),
])
def test_client_base_refuses_what_json_would_escape(headers, expected):
    assert client_base(site(V124), headers) == expected


INTERNAL = "http://localhost:8042/dicom-web/"
CLIENT = "https://pacs.example/dicom-web/"
METADATA = (b'[ { "7FE00010" : { "BulkDataURI" : "http://localhost:8042/dicom-web/studies/1/'
            b'series/2/instances/3/bulk/7FE00010", "vr" : "OW" }, "00100010" : { "Value" : '
            b'[ { "Alphabetic" : "Doe" } ], "vr" : "PN" } } ]')
QIDO = (b'[{"00081190":{"vr":"UR","Value":["http://localhost:8042/dicom-web/studies/1/'
        b'series/2"]},"0020000E":{"vr":"UI","Value":["2"]}}]')


@pytest.mark.parametrize("body, expected", [
    (METADATA, METADATA.replace(INTERNAL.encode(), CLIENT.encode())),
    (QIDO, QIDO.replace(INTERNAL.encode(), CLIENT.encode())),
    (b"[]", b"[]"),
    # The internal base in a tag value: not told apart from the plugin's URLs.
    (METADATA.replace(b'"Doe"', b'"see http://localhost:8042/dicom-web/"'), None),
    (QIDO.replace(b'"Value":["2"]', b'"Value":["http://localhost:8042/dicom-web/x"]'), None),
    # A URL that names another base, with the internal one inside it.
    (METADATA.replace(b'"BulkDataURI" : "', b'"BulkDataURI" : "http://x/?'), None),
    # Escaped slashes: the URLs are not found as written, so nothing is served.
    (QIDO.replace(b"http://localhost:8042/dicom-web/", b"http:\\/\\/localhost:8042\\/dicom-web\\/"),
     None),
    (b"not json", None),
])
def test_rebase_touches_only_the_urls_dicomweb_wrote(body, expected):
    assert rebase(body, INTERNAL, CLIENT) == expected


def test_rebase_of_metadata_as_dicomweb_writes_it():
    internal, client = "http://localhost:8042/dicom-web/", "https://pacs.example/dicom-web/"
    bulk = b'{\n\t\t"BulkDataURI" : "http://localhost:8042/dicom-web/studies/1/bulk/7fe00010"'
    body = b"[{\n\t\"7FE00010\" : " + bulk + b"\n\t}\n}]"
    assert rebase(body, internal, client) == body.replace(internal.encode(), client.encode())
    # The base also in a tag value: refused, whatever the layout.
    tagged = body.replace(b"[{\n", b'[{\n\t"00081030" : {"Value" : ["%s"]},\n'
                          % internal.encode(), 1)
    assert rebase(tagged, internal, client) is None
