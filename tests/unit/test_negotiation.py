"""Unit tests of http.negotiation (Orthanc 1.10.1's Accept rules, REPORT R6)."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings, strategies as st

from orthanc_cache_plugin.core.routes import DICOMWEB_ROUTES, match
from orthanc_cache_plugin.http.negotiation import (
    BAD_ACCEPT,
    DICOM,
    JPEG,
    NO_MATCH,
    PAM,
    PNG,
    NotAcceptable,
    Unsupported,
    jpeg_quality,
    negotiate_image,
    pam_image,
    parse_unsigned,
    representation_of,
)

CHROME = "image/webp,image/apng,image/*,*/*;q=0.8"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


# Every Accept value below was answered by Orthanc 1.10.1 (REPORT.md R6 and extra.json "acc").
@pytest.mark.parametrize("accept, expected", [
    (None, PNG),
    ("*/*", PNG),
    ("image/*", PNG),
    (CHROME, PNG),
    (FIREFOX, PNG),
    ("image/jpeg", JPEG),
    ("image/png", PNG),
    (PAM, PAM),
    # q ordering
    ("image/jpeg;q=0.5, image/png", PNG),
    ("image/png;q=0.5, image/jpeg", JPEG),
    ("image/png;q=0.9, image/jpeg;q=0.95", JPEG),
    ("image/png;q=1e-1, image/jpeg;q=0.05", PNG),
    ("*/*;q=1, image/png;q=0.1", PNG),
    # ties: the first one met wins
    ("image/jpeg, image/png", JPEG),
    ("image/png, image/jpeg", PNG),
    ("image/jpeg;q=0.5, image/x-portable-arbitrarymap;q=0.5", JPEG),
    ("image/x-portable-arbitrarymap;q=0.5, image/jpeg;q=0.5", PAM),
    ("image/x-portable-arbitrarymap, image/jpeg", PAM),
    # specificity first: exact > image/* > */*
    ("image/jpeg;q=0.1, */*", JPEG),
    ("image/*;q=0.9, image/jpeg;q=0.1", JPEG),
    ("image/*, image/jpeg;q=0.1", JPEG),
    ("*/*, image/*;q=0.1", PNG),
    ("image/gif, */*;q=0.1", PNG),
    ("*/*;q=0.1, text/html", PNG),
    # q=0 does not refuse a type
    ("image/jpeg;q=0", JPEG),
    ("image/jpeg;q=0, image/png;q=0", JPEG),
    # parsing details
    (" image / jpeg ", JPEG),
    ("image/jpeg ; q=0.5", JPEG),
    ("image/jpeg,", JPEG),
    (",image/jpeg", JPEG),
    ("garbage, image/jpeg", JPEG),        # parts without '/' are ignored
    ("image/jpeg;level", JPEG),           # parameters other than q are ignored
    ("image/jpeg;q=1.0", JPEG),
    ("image/jpeg;q=0.", JPEG),            # C float syntax
    ("image/jpeg;q=.5", JPEG),
    ("image/jpeg;Q=0.1, image/png;q=0.5", JPEG),  # only lower-case q counts
])
def test_negotiate_image(accept, expected):
    assert negotiate_image(accept) == expected


@pytest.mark.parametrize("accept", [
    "",                      # an empty header matches nothing
    " ",
    "text/html",
    "application/json",
    "image/gif",
    "application/dicom+json",
    "IMAGE/JPEG",            # case-sensitive
    "image/JPEG",
    "Image/*",
    "*/png",                 # no other wildcard form
    "garbage",
    "image/jpeg2000",
])
def test_no_match_is_404(accept):
    with pytest.raises(NotAcceptable) as refusal:
        negotiate_image(accept)
    assert refusal.value.status == NO_MATCH == 404


@pytest.mark.parametrize("accept", [
    "image/jpeg;q=abc",
    "image/jpeg;q=2",
    "image/jpeg;q=1.1",
    "image/jpeg;q=-1",
    "image/jpeg;q=-0.5",
    "image/jpeg;q=",
    'image/jpeg;q="0.4", image/png;q=0.3',   # quoted values are refused
    "image/gif;q=2",                          # checked even on a range that matches nothing
    "image/gif;q=2, image/jpeg",
    "text/html;q=abc, */*",
])
def test_invalid_q_is_415(accept):
    with pytest.raises(NotAcceptable) as refusal:
        negotiate_image(accept)
    assert refusal.value.status == BAD_ACCEPT == 415


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet="image/jpng*;q=0.15,xe- ", max_size=40))
def test_negotiate_image_answers_or_refuses(accept):
    try:
        chosen = negotiate_image(accept)
    except NotAcceptable as refusal:
        assert refusal.status in (NO_MATCH, BAD_ACCEPT)
    else:
        assert chosen in (PNG, JPEG, PAM)


def _request(uri, headers=None):
    route, groups = match(uri)
    return route, dict(headers or {})


def test_representation_of_image_routes():
    route, _ = _request("/instances/x/preview")
    assert representation_of(route, {}) == PNG
    assert representation_of(route, {"accept": "image/jpeg"}) == JPEG
    frame_route, _ = _request("/instances/x/frames/3/image-uint16")
    assert representation_of(frame_route, {"accept": PAM}) == PAM
    with pytest.raises(NotAcceptable):
        representation_of(route, {"accept": "text/html"})


@pytest.mark.parametrize("accept", [None, "*/*", "application/dicom", "application/dicom+json ",
                                    "application/dicom+json;q=1", "application/dicom+json, */*",
                                    "Application/dicom+json", "text/html"])
def test_representation_of_file_is_dicom(accept):
    route, _ = _request("/instances/x/file")
    headers = {} if accept is None else {"accept": accept}
    assert representation_of(route, headers) == DICOM


@pytest.mark.parametrize("accept", ["application/dicom+json", "application/dicom+xml",
                                    "  application/dicom+json"])
def test_representation_of_file_dicomweb_is_unsupported(accept):
    route, _ = _request("/instances/x/file")
    with pytest.raises(Unsupported):
        representation_of(route, {"accept": accept})


@pytest.mark.parametrize("uri", ["/instances/x/tags", "/studies/x/shared-tags", "/series/x/archive",
                                 "/instances/x/frames/0/raw"])
def test_representation_of_other_routes_ignores_accept(uri):
    route, _ = _request(uri)
    assert representation_of(route, {"accept": "text/html;q=abc"}) == ""
    assert representation_of(route, {}) == ""


# --- boost::lexical_cast<unsigned int> -------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("0", 0),
    ("1", 1),
    ("00", 0),
    ("050", 50),
    ("+1", 1),
    ("+0", 0),
    ("-0", 0),
    ("-1", 4294967295),
    ("-4294967295", 1),
    ("-4294967246", 50),
    ("4294967295", 4294967295),
    ("4294967296", None),       # overflow
    ("-4294967296", None),
    ("99999999999999999999", None),
    ("", None),
    (" 1", None),               # whitespace is refused
    ("1 ", None),
    ("\t1", None),
    ("1.0", None),
    ("0x1", None),
    ("1e0", None),
    ("1a", None),
    ("--1", None),
    ("+-1", None),
    ("+", None),
    ("-", None),
    ("\u0661", None),           # non-ASCII digits
])
def test_parse_unsigned(text, expected):
    assert parse_unsigned(text) == expected


def test_parse_unsigned_refuses_trailing_newline():
    assert parse_unsigned("1\n") is None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(min_value=0, max_value=4294967295))
def test_parse_unsigned_round_trip_and_wrap(value):
    assert parse_unsigned(str(value)) == value
    assert parse_unsigned("+%d" % value) == value
    assert parse_unsigned("-%d" % value) == (2 ** 32 - value) % 2 ** 32


@pytest.mark.parametrize("arguments, expected", [
    ({}, 90),
    ({"quality": "50"}, 50),
    ({"quality": "050"}, 50),
    ({"quality": "+50"}, 50),
    ({"quality": "-4294967246"}, 50),
    ({"quality": "1"}, 1),
    ({"quality": "100"}, 100),
    ({"quality": "0"}, None),
    ({"quality": "-0"}, None),
    ({"quality": "101"}, None),
    ({"quality": "50.0"}, None),
    ({"quality": "1e1"}, None),
    ({"quality": " 50"}, None),
    ({"quality": "50 "}, None),
    ({"quality": "%35%30"}, None),   # arguments are not percent-decoded
    ({"quality": ""}, None),
    ({"quality": "0x10"}, None),
    ({"quality": "4294967346"}, None),
    ({"other": "5"}, 90),
])
def test_jpeg_quality(arguments, expected):
    assert jpeg_quality(arguments) == expected


# --- PAM -------------------------------------------------------------------------------------

def test_pam_grayscale8():
    pixels = bytes([0, 1, 2, 3, 254, 255])
    assert pam_image(1, 3, 2, 1, pixels) == (
        b"P7\nWIDTH 3\nHEIGHT 2\nDEPTH 1\nMAXVAL 255\nTUPLTYPE GRAYSCALE\nENDHDR\n" + pixels)


def test_pam_grayscale16_is_big_endian():
    values = [0, 1, 0x1234, 0xFFFF, 0x8000, 0x00FF]
    little = struct.pack("<6H", *values)
    image = pam_image(1, 3, 2, 2, little)
    header = b"P7\nWIDTH 3\nHEIGHT 2\nDEPTH 1\nMAXVAL 65535\nTUPLTYPE GRAYSCALE\nENDHDR\n"
    assert image == header + struct.pack(">6H", *values)
    assert image.endswith(b"\x00\x00\x00\x01\x12\x34\xff\xff\x80\x00\x00\xff")


def test_pam_signed16_keeps_twos_complement():
    values = [-1, -32768, 32767, -2]
    image = pam_image(1, 2, 2, 2, struct.pack("<4h", *values))
    assert image.endswith(struct.pack(">4h", *values))
    assert b"MAXVAL 65535\n" in image


def test_pam_rgb():
    pixels = bytes(range(2 * 2 * 3))
    assert pam_image(3, 2, 2, 1, pixels) == (
        b"P7\nWIDTH 2\nHEIGHT 2\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + pixels)


def test_pam_does_not_modify_its_input():
    little = bytes([1, 2, 3, 4])
    pam_image(1, 2, 1, 2, little)
    assert little == bytes([1, 2, 3, 4])


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(min_value=0, max_value=65535), min_size=1, max_size=64))
def test_pam16_samples_property(values):
    image = pam_image(1, len(values), 1, 2, struct.pack("<%dH" % len(values), *values))
    header, _, samples = image.partition(b"ENDHDR\n")
    assert samples == struct.pack(">%dH" % len(values), *values)
    assert header.startswith(b"P7\nWIDTH %d\nHEIGHT 1\n" % len(values))


# --- Parsing that changed after 1.10.1, selected by ApiVersion -------------------------------
# Seen on Orthanc 1.10.1 (ApiVersion 16), 1.12.7 (27) and 1.13.0 (31).

@pytest.mark.parametrize("api_version, accept, expected", [
    # a q-value is checked only on ranges that match an image type served (from 1.12.7)
    (16, "image/gif;q=2", 415),
    (27, "image/gif;q=2", 404),
    (31, "image/gif;q=2, image/png", PNG),
    (31, "text/html;q=abc, image/png", PNG),
    (31, "image/jpeg;q=2, image/png", 415),
    (31, "image/*;q=2", 415),
    (31, "*/*;q=abc", 415),
    (31, "image/png, image/jpeg;q=abc", 415),
    # the last q of a range counts (from 1.12.7), the first one on 1.10.1
    (16, "image/jpeg;q=0.5;q=2", JPEG),
    (31, "image/jpeg;q=0.5;q=2", 415),
    (16, "image/jpeg;q=0.3, image/png;q=0.5;q=0.1", PNG),
    (27, "image/jpeg;q=0.3, image/png;q=0.5;q=0.1", JPEG),
    (31, "image/jpeg;q=0.3, image/png;q=0.1;q=0.5", PNG),
    (31, "image/jpeg;q=x;q=0.5", JPEG),
    (31, "image/jpeg;q=0.5;q=x", 415),
    (31, "image/png;q=0.5, image/jpeg;q=0.5;q", 415),
    # unchanged
    (31, "image/jpeg;Q=0.1, image/png;q=0.5", JPEG),
    (31, "image/jpeg; q =0.1, image/png;q=0.5", PNG),
    (31, "image/jpeg;q=0.5, image/png;q=0.5", JPEG),
    (31, "text/html", 404),
])
def test_negotiate_image_follows_the_running_version(api_version, accept, expected):
    if isinstance(expected, int):
        with pytest.raises(NotAcceptable) as refusal:
            negotiate_image(accept, api_version)
        assert refusal.value.status == expected
    else:
        assert negotiate_image(accept, api_version) == expected


@pytest.mark.parametrize("api_version, value, expected", [
    # 1.13.0 strips C white space ("+" arrives as a space) and never wraps a minus sign
    (16, " 50", None),
    (27, " 50", None),
    (31, " 50", 50),
    (31, "\t\n\v\f\r50 ", 50),
    (31, "+50", 50),
    (31, " +50", 50),
    (31, "00000000000050", 50),
    (31, "-50", None),
    (31, "-4294967246", None),
    (16, "-4294967246", 50),
    (31, "5 0", None),
    (31, "++5", None),
    (31, "\xa050", None),          # not C white space
    (31, "99999999999", None),
    (31, "0", None),
    (31, "50.0", None),
    (31, "9" * 5000, None),
])
def test_jpeg_quality_follows_the_running_version(api_version, value, expected):
    assert jpeg_quality({"quality": value}, api_version) == expected


def test_representation_follows_the_running_version():
    route = match("/instances/x/preview")[0]
    headers = {"accept": "image/jpeg;q=0.3, image/png;q=0.5;q=0.1"}
    assert representation_of(route, headers) == PNG
    assert representation_of(route, headers, 31) == JPEG


# -- DICOMweb routes: only DICOM JSON is served from the copies ----------------------

DICOMWEB_METADATA = "/cache/dicom-web/studies/1.2/series/1.3/metadata"


@pytest.mark.parametrize("accept, served", [
    (None, True), ("", True), ("*/*", True), (" application/dicom+json ", True),
    ("application/json", True),
    ('multipart/related; type="application/dicom+xml"', False),
    ("application/dicom+xml", False),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
    ("application/dicom+json;q=0.5", False),
    ("image/png", False),
])
def test_dicomweb_routes_serve_dicom_json_only(accept, served):
    route = next(route for route in DICOMWEB_ROUTES if route.name == "dicomweb-series-metadata")
    assert re.fullmatch("/cache/dicom-web" + route.pattern, DICOMWEB_METADATA)
    headers = {} if accept is None else {"accept": accept}
    if served:
        assert representation_of(route, headers) == ""
    else:
        with pytest.raises(Unsupported):
            representation_of(route, headers)
