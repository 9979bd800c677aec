"""Unit tests of orthanc_cache_plugin.core.keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from orthanc_cache_plugin.core.keys import cache_key, entity_tag, normalized_query


def test_normalized_query_empty():
    assert normalized_query({}) == ""


def test_normalized_query_sorted_by_name():
    assert normalized_query({"simplify": "", "expand": "1",
                             "short": ""}) == "expand=1&short=&simplify="
    assert normalized_query({"b": "2", "a": "1"}) == normalized_query({"a": "1", "b": "2"})


def test_normalized_query_flags_keep_an_empty_value():
    assert normalized_query({"short": ""}) == "short="


def test_normalized_query_keeps_percent_encoding():
    # Orthanc hands arguments over still percent-encoded; they are forwarded as they came.
    assert normalized_query({"quality": "%35%30"}) == "quality=%35%30"
    assert normalized_query({"%71uality": "50"}) == "%71uality=50"
    assert normalized_query({"transcode": "1.2.840.10008.1.2.1"}) == "transcode=1.2.840.10008.1.2.1"
    assert normalized_query({"a": "+x/y:z@!$'()*,;?"}) == "a=+x/y:z@!$'()*,;?"


@pytest.mark.parametrize("arguments, expected", [
    ({"a": "x&b=y"}, "a=x%26b=y"),      # '&' in a value cannot add an argument
    ({"a&b": "1"}, "a%26b=1"),
    ({"a=b": "1"}, "a%3Db=1"),          # '=' in a name cannot shift the value
    ({"a": "x=y"}, "a=x=y"),            # but is harmless in a value
    ({"a": "x#y"}, "a=x%23y"),          # '#' would cut the URI
    ({"a": "x y"}, "a=x%20y"),
    ({"a": "\u00e9"}, "a=%C3%A9"),
])
def test_normalized_query_escapes_structure(arguments, expected):
    assert normalized_query(arguments) == expected


_ARGUMENT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(_ARGUMENT, _ARGUMENT, max_size=5))
def test_normalized_query_has_one_member_per_argument(arguments):
    query = normalized_query(arguments)
    assert "#" not in query and " " not in query
    members = query.split("&") if query else []
    assert len(members) == len(arguments)
    assert [member.partition("=")[0] for member in members] == [
        normalized_query({name: ""})[:-1] for name in sorted(arguments)]


def test_cache_key_layout():
    assert cache_key("/instances/x/preview", "quality=50", "image/jpeg") == \
        "/instances/x/preview?quality=50#image/jpeg"
    assert cache_key("/studies/x/shared-tags", "", "") == "/studies/x/shared-tags?#"


def test_cache_keys_differ_by_each_part():
    keys = {
        cache_key("/instances/x/preview", "", "image/png"),
        cache_key("/instances/x/preview", "", "image/jpeg"),
        cache_key("/instances/x/preview", "quality=50", "image/png"),
        cache_key("/instances/y/preview", "", "image/png"),
    }
    assert len(keys) == 4


ETAG = re.compile(r'^W/"[0-9a-f]{32}"$')


def test_entity_tag_format_is_weak():
    tag = entity_tag("salt", "/instances/x/tags?#", "20230220T140000")
    assert ETAG.match(tag), tag


def test_entity_tag_is_deterministic():
    assert entity_tag("s", "k", "v") == entity_tag("s", "k", "v")
    # A known value, so that an accidental change of the derivation is noticed
    # (it would make every copy held by clients revalidate).
    assert entity_tag("orthanc 1.10.1, plugin 0.1.0, format 1", "/instances/x/tags?#",
                      "20230220T140000") == 'W/"0801b7f114b3b6f8098cc1c9a0f4e8c3"'


def test_entity_tag_depends_on_salt_key_and_version():
    base = entity_tag("orthanc 1.10.1", "/instances/x/tags?#", "20230220T140000")
    assert entity_tag("orthanc 1.11.0", "/instances/x/tags?#", "20230220T140000") != base
    assert entity_tag("orthanc 1.10.1", "/instances/y/tags?#", "20230220T140000") != base
    assert entity_tag("orthanc 1.10.1", "/instances/x/tags?#", "20230220T140001") != base


def test_entity_tag_parts_are_separated():
    # "ab" + "c" and "a" + "bc" must not give the same tag
    assert entity_tag("ab", "c", "v") != entity_tag("a", "bc", "v")
    assert entity_tag("s", "kv", "1") != entity_tag("s", "k", "v1")


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.text(), st.text(), st.text())
def test_entity_tag_always_a_valid_weak_tag(salt, key, version):
    tag = entity_tag(salt, key, version)
    assert ETAG.match(tag)


def test_a_variant_makes_another_key_and_none_keeps_the_key():
    plain = cache_key("/dicom-web/studies/1.2/series", "", "")
    assert cache_key("/dicom-web/studies/1.2/series", "", "", "") == plain
    one = cache_key("/dicom-web/studies/1.2/series", "", "", "dicomweb 1.24 http://a/dicom-web/")
    other = cache_key("/dicom-web/studies/1.2/series", "", "", "dicomweb 1.24 http://b/dicom-web/")
    assert len({plain, one, other}) == 3
