"""Unit tests of http.encoding: Accept-Encoding (RFC 9110 12.5.3), gzip bodies and the
entity-tags of the two codings."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from orthanc_cache_plugin.http.encoding import (
    MINIMUM_SIZE,
    BadGzip,
    Coding,
    choose_coding,
    compress,
    compressible,
    decompress,
    etag_for,
    gzip_etag,
    identity_etag,
    parse_accept_encoding,
)
from orthanc_cache_plugin.http.validators import Validators, evaluate_preconditions

GZIP, IDENTITY = Coding.GZIP, Coding.IDENTITY
CHROME = "gzip, deflate, br, zstd"
FIREFOX = "gzip, deflate, br"
REQUESTS = "gzip, deflate"


@pytest.mark.parametrize("header, coding, acceptable", [
    # what clients send
    (None, IDENTITY, True),                      # curl, wrk: no field
    (CHROME, GZIP, True),
    (FIREFOX, GZIP, True),
    (REQUESTS, GZIP, True),
    ("gzip", GZIP, True),
    ("identity", IDENTITY, True),
    ("br", IDENTITY, True),                      # only codings the plugin does not offer
    ("deflate, br;q=0.9", IDENTITY, True),
    ("", IDENTITY, True),                        # empty: no coding wanted
    # refusals
    ("gzip;q=0", IDENTITY, True),
    ("gzip;q=0, identity", IDENTITY, True),
    ("gzip;q=0.000", IDENTITY, True),
    ("identity;q=0", IDENTITY, False),           # gzip not listed: nothing acceptable
    ("identity;q=0, gzip", GZIP, True),
    ("gzip, identity;q=0", GZIP, True),
    ("gzip;q=0, identity;q=0", IDENTITY, False),
    ("*;q=0", IDENTITY, False),
    ("*;q=0, identity", IDENTITY, True),
    ("*;q=0, identity;q=0.1", IDENTITY, True),
    ("*;q=0, gzip", GZIP, True),
    ("*;q=0, gzip;q=0.001", GZIP, True),
    ("br, *;q=0", IDENTITY, False),
    # the asterisk
    ("*", GZIP, True),
    ("*;q=0.3", GZIP, True),                     # gzip and identity tie: gzip
    ("*, gzip;q=0", IDENTITY, True),
    ("*, identity;q=0.5", GZIP, True),
    ("*;q=0.5, identity", IDENTITY, True),
    ("*;q=0.5, gzip;q=0", IDENTITY, True),
    # weights
    ("gzip;q=0.5", GZIP, True),                  # identity unweighed ranks below gzip
    ("gzip;q=0.001", GZIP, True),
    ("gzip;q=0.5, identity;q=0.5", GZIP, True),  # ties: gzip
    ("GZIP;Q=0.5, identity;q=0.5", GZIP, True),
    ("gzip;q=0.4, identity;q=0.5", IDENTITY, True),
    ("identity;q=0.5, gzip;q=0.6", GZIP, True),
    ("gzip;q=1, identity;q=1.000", GZIP, True),
    ("gzip;q=0.999, identity", IDENTITY, True),
    # case and white space
    ("GZIP", GZIP, True),
    ("Gzip, Identity;Q=0", GZIP, True),
    ("  gzip  ;  q=0.5  ,  identity ; q=0.4 ", GZIP, True),
    ("\tgzip\t", GZIP, True),
    ("gzip;q = 0.5, identity;q=0.6", IDENTITY, True),
    # x-gzip (RFC 9110 8.4.1.3)
    ("x-gzip", GZIP, True),
    ("x-gzip;q=0.5, identity;q=0.6", IDENTITY, True),
    ("gzip;q=0, x-gzip", IDENTITY, True),        # gzip itself counts
    # duplicates: the first member counts
    ("gzip;q=0, gzip", IDENTITY, True),
    ("gzip, gzip;q=0", GZIP, True),
    # malformed members are ignored; the rest still counts
    (";;;", IDENTITY, True),
    (",,,", IDENTITY, True),
    ("gzip;q=abc", IDENTITY, True),
    ("gzip;q=2", IDENTITY, True),
    ("gzip;q=1.5", IDENTITY, True),
    ("gzip;q=-1", IDENTITY, True),
    ("gzip;q=0.1234", IDENTITY, True),
    ("gzip;q=", IDENTITY, True),
    ("gzip;q", IDENTITY, True),
    ("gzip;q=.5", IDENTITY, True),
    ("gzip;level=1", IDENTITY, True),
    ("gzip;q=0.5;q=0.1", IDENTITY, True),
    ("gzip;q=0.5;level=1", IDENTITY, True),
    ("gz ip", IDENTITY, True),
    ("gzip/1", IDENTITY, True),
    ('"gzip"', IDENTITY, True),
    ("gzip;q=abc, identity;q=0", IDENTITY, False),
    ("gzip;q=abc, gzip;q=0.2", GZIP, True),      # the first well-formed member counts
    ("identity;q=x, gzip", GZIP, True),
    ("*;q=bad", IDENTITY, True),
    (";q=0.5, gzip", GZIP, True),
    ("gzip,", GZIP, True),
    (",gzip", GZIP, True),
    ("\x00gzip", IDENTITY, True),
    ("gzip\u00e9", IDENTITY, True),
])
def test_choose_coding(header, coding, acceptable):
    choice = choose_coding(header)
    assert (choice.coding, choice.acceptable) == (coding, acceptable), choice.reason
    assert choice.reason


@pytest.mark.parametrize("header, acceptable", [
    (None, True), (CHROME, True), ("gzip", True), ("identity;q=0", False), ("*;q=0", False),
    ("gzip, identity;q=0", False), ("*;q=0, gzip", False), ("*;q=0, identity", True),
])
def test_without_gzip_on_offer_identity_is_sent(header, acceptable):
    choice = choose_coding(header, gzip_offered=False)
    assert (choice.coding, choice.acceptable) == (IDENTITY, acceptable), choice.reason


@pytest.mark.parametrize("header, reason", [
    (None, "no Accept-Encoding: identity, as Orthanc sends"),
    ("gzip", "gzip accepted, identity not weighed"),
    ("gzip, identity;q=0", "gzip accepted, identity refused"),
    ("gzip, identity", "gzip weighed at least as identity"),
    ("gzip;q=0.1, identity", "identity preferred to gzip"),
    ("br", "gzip not accepted"),
    ("gzip;q=0", "gzip refused"),
    ("*;q=0", "no acceptable coding: identity all the same, as plain Orthanc sends"),
])
def test_the_reason_says_why(header, reason):
    assert choose_coding(header).reason == reason


@pytest.mark.parametrize("header, weights", [
    ("", {}),
    (FIREFOX, {"gzip": 1000, "deflate": 1000, "br": 1000}),
    ("GZIP;Q=0.5, Identity;q=0", {"gzip": 500, "identity": 0}),
    ("*;q=0.25", {"*": 250}),
    ("gzip;q=1.", {"gzip": 1000}),
    ("gzip;q=0.1", {"gzip": 100}),
    ("gzip;q=0.01", {"gzip": 10}),
    ("x-gzip;q=0.3", {"x-gzip": 300, "gzip": 300}),
    ("gzip;q=abc, br;q=0.7, ;;;", {"br": 700}),
])
def test_parse_accept_encoding(header, weights):
    assert parse_accept_encoding(header) == weights


@given(st.text(max_size=200))
def test_no_header_value_makes_choose_coding_raise(header):
    choice = choose_coding(header)
    assert choice.coding in (GZIP, IDENTITY)


@given(st.text(alphabet=" ,;=.*qQ01gzipdentyx-\t", max_size=60))
def test_gzip_is_chosen_only_when_its_weight_is_positive(header):
    weights = parse_accept_encoding(header)
    gzip_weight = weights.get("gzip", weights.get("*"))
    if choose_coding(header).coding is GZIP:
        assert gzip_weight is not None and gzip_weight > 0


# -- what is worth compressing ------------------------------------------------------

@pytest.mark.parametrize("content_type, compressed", [
    ("application/json", True),
    ("application/json; charset=utf-8", True),
    ("Application/JSON", True),
    ("application/dicom+json", True),
    ("application/xml", True),
    ("application/dicom+xml", True),
    ("text/xml", True),
    ("text/plain", True),
    ("text/html; charset=utf-8", True),
    ("text/csv", True),
    ("application/javascript", True),
    ("image/png", False),
    ("image/jpeg", False),
    ("image/svg+xml", True),                 # text after all
    ("image/x-portable-arbitrarymap", False),
    ("application/dicom", False),
    ("application/zip", False),
    ("application/gzip", False),
    ("application/pdf", False),
    ("application/octet-stream", False),
    ('multipart/related; type="application/dicom"; boundary=x', False),
    ('multipart/related; type="application/dicom+json"', False),
    ("video/mp4", False),
    ("", False),
    ("garbage", False),
])
def test_compressible_types(content_type, compressed):
    assert compressible(content_type, MINIMUM_SIZE) is compressed
    assert compressible(content_type, 10 * 1024 * 1024) is compressed


@pytest.mark.parametrize("length, compressed", [
    (0, False), (200, False), (MINIMUM_SIZE - 1, False), (MINIMUM_SIZE, True), (50_000, True),
])
def test_compressible_sizes(length, compressed):
    assert compressible("application/json", length) is compressed


# -- gzip bodies ------------------------------------------------------------------

JSON = json.dumps([{"ID": "%08d" % index, "MainDicomTags": {"PatientName": "Doe^John"}}
                   for index in range(200)]).encode("utf-8")


def test_compress_gives_a_gzip_member_that_others_read():
    compressed = compress(JSON)
    assert gzip.decompress(compressed) == JSON
    assert zlib.decompress(compressed, 16 + zlib.MAX_WBITS) == JSON
    assert len(compressed) < len(JSON) // 4


def test_compress_is_deterministic():
    compressed = compress(JSON)
    assert compress(bytes(bytearray(JSON))) == compressed
    # no time stamp, no name, no extra flags, OS "unknown": nothing that varies
    assert compressed[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_compress_uses_level_6():
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert compress(JSON)[10:-8] == deflater.compress(JSON) + deflater.flush()
    fastest = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert compress(JSON)[10:-8] != fastest.compress(JSON) + fastest.flush()


@pytest.mark.parametrize("body", [b"", b"x", JSON, bytes(range(256)) * 100])
def test_decompress_reverses_compress(body):
    assert decompress(compress(body), limit=len(body)) == body


def test_decompress_reads_other_encoders_and_several_members():
    assert decompress(gzip.compress(JSON, 9), limit=len(JSON)) == JSON
    assert decompress(compress(b"abc") + compress(b"def"), limit=6) == b"abcdef"


@pytest.mark.parametrize("limit", [0, 1, len(JSON) - 1])
def test_decompress_refuses_more_than_the_limit(limit):
    with pytest.raises(BadGzip, match="beyond"):
        decompress(compress(JSON), limit=limit)


def test_decompress_refuses_a_bomb_without_inflating_it():
    bomb = compress(bytes(64 * 1024 * 1024))  # 64 MB of zeros in ~64 KB
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(BadGzip, match="beyond"):
            decompress(bomb, limit=1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_decompress_counts_the_limit_across_members():
    with pytest.raises(BadGzip, match="beyond"):
        decompress(compress(b"abc") + compress(b"def"), limit=5)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (JSON, "not a gzip member"),
    (b"\x1f", "not a gzip member"),
    (compress(JSON)[:-8], "cut short"),
    (compress(JSON)[:40], "cut short"),
    (compress(JSON) + b"trailing", "not a gzip member"),
    (compress(JSON)[:12] + b"\xff" * 30 + compress(JSON)[42:], "corrupt"),
    (compress(JSON)[:-8] + b"\x00" * 8, "corrupt"),            # wrong CRC
])
def test_decompress_refuses_what_is_not_gzip(data, message):
    with pytest.raises(BadGzip, match=message):
        decompress(data, limit=10 * len(JSON))


# -- entity-tags ------------------------------------------------------------------

@pytest.mark.parametrize("identity, gzipped", [
    ('"abc"', '"abc-gz"'),
    ('W/"abc"', 'W/"abc-gz"'),
    ('W/"3f2a0b"', 'W/"3f2a0b-gz"'),
    ('""', '"-gz"'),
])
def test_the_gzip_tag_derives_from_the_identity_tag(identity, gzipped):
    assert gzip_etag(identity) == gzipped
    assert identity_etag(gzipped) == identity
    assert etag_for(identity, GZIP) == gzipped
    assert etag_for(identity, IDENTITY) == identity


@pytest.mark.parametrize("tag", [
    '"abc"', 'W/"abc"', '"abc-g"', '"gz"', "abc-gz", '"abc-gz', 'abc-gz"', 'w/"abc-gz"',
    '"a"b-gz"', "", "*", 'W/', '"', 'W/"abc-gz" ',
])
def test_identity_etag_of_what_is_not_a_gzip_tag(tag):
    assert identity_etag(tag) is None


@pytest.mark.parametrize("tag", ["abc", '"abc', "", 'W/abc', '"a"b"'])
def test_gzip_etag_refuses_what_is_not_an_entity_tag(tag):
    with pytest.raises(ValueError):
        gzip_etag(tag)


NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
TAG = 'W/"3f2a0b"'


@pytest.mark.parametrize("accept_encoding, if_none_match, not_modified", [
    ("gzip", gzip_etag(TAG), True),
    ("gzip", TAG, False),               # held the identity body, now gets gzip
    (None, TAG, True),
    (None, gzip_etag(TAG), False),      # held gzip bytes, now accepts only identity
    ("gzip;q=0", gzip_etag(TAG), False),
    ("identity", TAG, True),
    ("gzip, deflate, br", "%s, %s" % (TAG, gzip_etag(TAG)), True),
    (None, "%s, %s" % (TAG, gzip_etag(TAG)), True),
    ("gzip", "*", True),
])
def test_if_none_match_is_compared_with_the_selected_representation(
        accept_encoding, if_none_match, not_modified):
    coding = choose_coding(accept_encoding).coding
    validators = Validators(etag_for(TAG, coding), None)
    evaluation = evaluate_preconditions({"if-none-match": if_none_match}, validators, NOW)
    assert evaluation.not_modified is not_modified
