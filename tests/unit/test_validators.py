"""Unit tests of orthanc_cache_plugin.http.validators (RFC 9110 sections 5.6.7, 8.8 and 13)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from orthanc_cache_plugin.http.validators import (
    EntityTagCondition,
    Validators,
    caching_headers,
    evaluate_preconditions,
    format_http_date,
    max_age_of,
    parse_http_date,
    parse_if_none_match,
    parse_orthanc_timestamp,
)

UTC = timezone.utc
# The example of RFC 9110 section 5.6.7, in its three formats.
RFC_MOMENT = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
NOW = datetime(2023, 2, 20, 15, 0, 0, tzinfo=UTC)


# --- HTTP-dates ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Sun, 06 Nov 1994 08:49:37 GMT",    # IMF-fixdate
    "Sunday, 06-Nov-94 08:49:37 GMT",   # obsolete RFC 850
    "Sun Nov  6 08:49:37 1994",         # obsolete asctime, day padded with a space
    "Sun Nov 06 08:49:37 1994",         # asctime, day padded with a zero
    "  Sun, 06 Nov 1994 08:49:37 GMT  ",  # surrounding whitespace
])
def test_parse_the_three_formats(text):
    parsed = parse_http_date(text, NOW)
    assert parsed == RFC_MOMENT
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


def test_parse_imf_fixdate_details():
    assert parse_http_date("Mon, 20 Feb 2023 15:00:00 GMT") == NOW
    assert parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT") == datetime(
        9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT") == datetime(2000, 2, 29, 12, tzinfo=UTC)


@pytest.mark.parametrize("two_digits, now_year, expected_year", [
    ("94", 2023, 1994),   # 71 years in the future would be 2094: taken from the past century
    ("23", 2023, 2023),
    ("70", 2023, 2070),   # 47 years ahead is not "more than 50 years in the future"
    ("73", 2023, 2073),   # 50 years ahead (same day) is not more than 50 years either
    ("74", 2023, 1974),   # 51 years ahead: past century
    ("00", 2023, 2000),
    ("99", 2023, 1999),
    ("50", 2000, 2050),
    ("51", 2000, 1951),
])
def test_rfc850_fifty_year_rule(two_digits, now_year, expected_year):
    now = datetime(now_year, 1, 1, tzinfo=UTC)
    parsed = parse_http_date("Sunday, 01-Jan-%s 00:00:00 GMT" % two_digits, now)
    assert parsed is not None and parsed.year == expected_year


def test_rfc850_fifty_year_rule_compares_full_dates():
    now = datetime(2023, 2, 20, tzinfo=UTC)
    parsed = parse_http_date("Sunday, 31-Dec-73 00:00:00 GMT", now)
    assert parsed == datetime(1973, 12, 31, tzinfo=UTC)


def test_rfc850_uses_current_clock_by_default():
    this_year = datetime.now(UTC).year
    parsed = parse_http_date("Sunday, 01-Jan-%02d 00:00:00 GMT" % (this_year % 100))
    assert parsed is not None and parsed.year == this_year


@pytest.mark.parametrize("text", [
    "",
    "garbage",
    "Sun, 06 Nov 1994 08:49:37",            # missing GMT
    "Sun, 06 Nov 1994 08:49:37 UTC",        # only GMT is allowed
    "Sun, 06 Nov 1994 08:49:37 +0000",
    "Sunday, 06 Nov 1994 08:49:37 GMT",     # long weekday name in an IMF-fixdate
    "Sun, 06-Nov-94 08:49:37 GMT",          # short weekday name in an RFC 850 date
    "sun, 06 Nov 1994 08:49:37 GMT",        # names are case-sensitive
    "Sun, 06 nov 1994 08:49:37 GMT",
    "Sun, 6 Nov 1994 08:49:37 GMT",         # day must have two digits
    "Sun, 06 Nov 94 08:49:37 GMT",          # IMF-fixdate has a four-digit year
    "Sun, 06 November 1994 08:49:37 GMT",
    "Sun, 31 Feb 2023 08:49:37 GMT",        # no such day
    "Sun, 30 Feb 2024 08:49:37 GMT",
    "Sun, 29 Feb 2023 08:49:37 GMT",        # 2023 is not a leap year
    "Sun, 06 Nov 1994 24:00:00 GMT",
    "Sun, 06 Nov 1994 08:60:00 GMT",
    "Sun, 00 Nov 1994 08:49:37 GMT",
    "Sunday, 31-Feb-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994 GMT",         # asctime has no zone
    "Sun Nov 31 08:49:37 1994",
    "Sun Nov  6 8:49:37 1994",
    "1994-11-06T08:49:37Z",                 # ISO 8601 is not an HTTP-date
    "784111777",                            # neither is a Unix time
    "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
])
def test_invalid_dates_give_none(text):
    assert parse_http_date(text, NOW) is None


@pytest.mark.parametrize("moment, text", [
    (RFC_MOMENT, "Sun, 06 Nov 1994 08:49:37 GMT"),
    (NOW, "Mon, 20 Feb 2023 15:00:00 GMT"),
    (datetime(1970, 1, 1, tzinfo=UTC), "Thu, 01 Jan 1970 00:00:00 GMT"),
    # converted to UTC
    (datetime(2023, 2, 20, 16, 0, tzinfo=timezone(timedelta(hours=1))),
     "Mon, 20 Feb 2023 15:00:00 GMT"),
    (datetime(2023, 2, 20, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
     "Tue, 21 Feb 2023 04:30:00 GMT"),
    # microseconds are dropped, not rounded
    (datetime(2023, 2, 20, 15, 0, 0, 999999, tzinfo=UTC), "Mon, 20 Feb 2023 15:00:00 GMT"),
])
def test_format_http_date(moment, text):
    assert format_http_date(moment) == text


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                    timezones=st.just(UTC)))
def test_format_then_parse_round_trip(moment):
    moment = moment.replace(microsecond=0)
    text = format_http_date(moment)
    assert len(text) == 29
    assert parse_http_date(text, NOW) == moment


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.text())
def test_parse_http_date_never_raises(text):
    result = parse_http_date(text, NOW)
    assert result is None or result.utcoffset() == timedelta(0)


# --- Orthanc timestamps ----------------------------------------------------------------------

def test_parse_orthanc_timestamp():
    assert parse_orthanc_timestamp("20230220T140000") == datetime(2023, 2, 20, 14, tzinfo=UTC)
    assert parse_orthanc_timestamp(" 19991231T235959\n") == datetime(
        1999, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize("text", [
    "", "garbage", "20230220", "20230220T1400", "20230220 140000", "2023-02-20T14:00:00",
    "20230231T140000", "20230220T250000", "20230220T140000Z", "20230220T140000.123",
])
def test_parse_orthanc_timestamp_invalid(text):
    assert parse_orthanc_timestamp(text) is None


# --- If-None-Match parsing -------------------------------------------------------------------

def test_parse_if_none_match_star():
    assert parse_if_none_match("*") == EntityTagCondition(True, frozenset())
    assert parse_if_none_match("  *  ") == EntityTagCondition(True, frozenset())
    assert parse_if_none_match("*").matches('W/"anything"')


@pytest.mark.parametrize("value, tags", [
    ('"abc"', {'"abc"'}),
    ('W/"abc"', {'"abc"'}),                          # weak indicator dropped
    ('""', {'""'}),                                  # the empty opaque-tag is valid
    ('"a", "b"', {'"a"', '"b"'}),
    ('"a",W/"b" ,  "c"', {'"a"', '"b"', '"c"'}),
    ('"a,b", "c"', {'"a,b"', '"c"'}),                # comma inside an entity-tag
    ('W/"x,y"', {'"x,y"'}),
    (', , "a",, "b" ,', {'"a"', '"b"'}),            # empty list members (RFC 9110 5.6.1)
    ('\t"a"\t,\t"b"', {'"a"', '"b"'}),
    ('"\x80\xff"', {'"\x80\xff"'}),                 # obs-text
])
def test_parse_if_none_match_lists(value, tags):
    condition = parse_if_none_match(value)
    assert condition is not None
    assert not condition.any
    assert condition.opaque_tags == frozenset(tags)


@pytest.mark.parametrize("value", [
    "",
    "   ",
    ",",
    ", ,",
    "abc",                 # not quoted
    '"abc',                # unterminated
    'abc"',
    '"a" "b"',             # missing comma
    '"a"b',
    'w/"abc"',             # the weak indicator is case-sensitive
    'W/ "abc"',
    'W/abc',
    '"a", *',              # * is only valid alone
    '*, "a"',
    '**',
    '"a b"',               # space is not an etagc
    '"a"b"',               # DQUOTE inside
    '"a\x7f"',             # DEL is not an etagc
    '"\u0100"',            # beyond obs-text
])
def test_parse_if_none_match_malformed(value):
    assert parse_if_none_match(value) is None


def test_condition_matches_weakly():
    condition = parse_if_none_match('"x"')
    assert condition.matches('W/"x"')
    assert condition.matches('"x"')
    assert not condition.matches('W/"y"')
    assert parse_if_none_match('W/"x"').matches('"x"')


_ETAGC = st.characters(codec="latin-1").filter(lambda c: c == "!" or "#" <= c <= "~" or c >= "\x80")
_OPAQUE = st.text(_ETAGC, max_size=12).map(lambda text: '"%s"' % text)
_ENTITY_TAG = st.tuples(st.booleans(),
                        _OPAQUE).map(lambda pair: ("W/" if pair[0] else "") + pair[1])
_OWS = st.sampled_from(["", " ", "  ", "\t", " \t"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text())
def test_parse_if_none_match_never_raises(text):
    result = parse_if_none_match(text)
    assert result is None or isinstance(result, EntityTagCondition)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet='W/"*, \tabc\x7f\x80', max_size=30))
def test_parse_if_none_match_never_raises_on_near_misses(text):
    result = parse_if_none_match(text)
    assert result is None or isinstance(result, EntityTagCondition)


# --- evaluate_preconditions ------------------------------------------------------------------

OUR_ETAG = 'W/"0123456789abcdef"'
LAST_MODIFIED = datetime(2023, 2, 20, 14, 0, 0, tzinfo=UTC)
VALIDATORS = Validators(OUR_ETAG, LAST_MODIFIED)


def evaluate(headers, validators=VALIDATORS, now=NOW):
    return evaluate_preconditions(headers, validators, now)


def test_unconditional_request():
    result = evaluate({})
    assert not result.not_modified
    assert result.reason


@pytest.mark.parametrize("value", [
    OUR_ETAG,
    '"0123456789abcdef"',                     # strong form of our weak tag (weak comparison)
    '"other", ' + OUR_ETAG,
    OUR_ETAG + ', "other"',
    '"a,b", W/"0123456789abcdef", "c"',
    '*',
])
def test_if_none_match_matches(value):
    result = evaluate({"if-none-match": value})
    assert result.not_modified
    assert result.reason


@pytest.mark.parametrize("value",
                         ['"other"', 'W/"0123456789abcdeF"', '"a", "b"', 'W/"0123456789abcde"'])
def test_if_none_match_does_not_match(value):
    assert not evaluate({"if-none-match": value}).not_modified


def test_if_none_match_takes_precedence_over_if_modified_since():
    later = "Mon, 20 Feb 2023 14:30:00 GMT"   # would give 304 alone
    earlier = "Mon, 20 Feb 2023 13:00:00 GMT"  # would give 200 alone
    assert evaluate({"if-modified-since": later}).not_modified
    assert not evaluate({"if-none-match": '"other"', "if-modified-since": later}).not_modified
    assert evaluate({"if-none-match": OUR_ETAG, "if-modified-since": earlier}).not_modified
    assert evaluate({"if-none-match": "*", "if-modified-since": earlier}).not_modified


def test_malformed_if_none_match_is_ignored_without_304():
    result = evaluate({"if-none-match": 'unquoted'})
    assert not result.not_modified
    assert "malformed" in result.reason


@pytest.mark.parametrize("since, expected", [
    ("Mon, 20 Feb 2023 14:00:00 GMT", True),    # equal to Last-Modified
    ("Mon, 20 Feb 2023 14:00:01 GMT", True),    # newer than Last-Modified, not in the future
    ("Mon, 20 Feb 2023 15:00:00 GMT", True),    # equal to now
    ("Mon, 20 Feb 2023 13:59:59 GMT", False),   # older than Last-Modified
    ("Thu, 01 Jan 1970 00:00:00 GMT", False),
    ("Monday, 20-Feb-23 14:00:00 GMT", True),   # obsolete formats are accepted
    ("Mon Feb 20 14:00:00 2023", True),
])
def test_if_modified_since(since, expected):
    assert evaluate({"if-modified-since": since}).not_modified is expected


def test_if_modified_since_in_the_future_is_ignored():
    result = evaluate({"if-modified-since": "Mon, 20 Feb 2023 15:00:01 GMT"})
    assert not result.not_modified
    assert "future" in result.reason
    assert not evaluate({"if-modified-since": "Fri, 31 Dec 9999 23:59:59 GMT"}).not_modified


@pytest.mark.parametrize("since", ["yesterday", "", "Mon, 20 Feb 2023 14:00:00",
                                   "Mon, 31 Feb 2023 14:00:00 GMT"])
def test_invalid_if_modified_since_is_ignored(since):
    result = evaluate({"if-modified-since": since})
    assert not result.not_modified
    assert "invalid" in result.reason


def test_if_modified_since_without_last_modified():
    result = evaluate({"if-modified-since": "Mon, 20 Feb 2023 14:30:00 GMT"},
                      Validators(OUR_ETAG, None))
    assert not result.not_modified


def test_header_names_are_expected_lower_case():
    # The adapter hands over Orthanc's lower-cased header names.
    assert not evaluate({"If-None-Match": OUR_ETAG}).not_modified
    assert evaluate({"if-none-match": OUR_ETAG}).not_modified


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(before=st.lists(_ENTITY_TAG, max_size=5), after=st.lists(_ENTITY_TAG, max_size=5),
       ours=st.sampled_from([OUR_ETAG, '"0123456789abcdef"']),
       separators=st.lists(st.tuples(_OWS, st.sampled_from([",", ", ,", ",,"]), _OWS),
                           min_size=12, max_size=12),
       since=st.sampled_from([None, "Thu, 01 Jan 1970 00:00:00 GMT", "garbage",
                              "Fri, 31 Dec 9999 23:59:59 GMT"]))
def test_matching_tag_always_gives_304(before, after, ours, separators, since):
    members = before + [ours] + after
    value = members[0]
    for member, (left, comma, right) in zip(members[1:], separators):
        value += left + comma + right + member
    headers = {"if-none-match": value}
    if since is not None:
        headers["if-modified-since"] = since
    assert evaluate(headers).not_modified


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(_ENTITY_TAG, min_size=1, max_size=6))
def test_list_without_our_tag_never_gives_304(members):
    value = ", ".join(member for member in members if member.lstrip("W/") != '"0123456789abcdef"')
    if not value:
        return
    assert not evaluate({"if-none-match": value,
                         "if-modified-since": "Mon, 20 Feb 2023 14:30:00 GMT"}).not_modified


# --- Caching headers -------------------------------------------------------------------------

def test_caching_headers_with_max_age():
    headers = caching_headers(VALIDATORS, "max-age=604800, s-maxage=604800, public", NOW)
    assert headers == {
        "Date": "Mon, 20 Feb 2023 15:00:00 GMT",
        "ETag": OUR_ETAG,
        "Cache-Control": "max-age=604800, s-maxage=604800, public",
        "Expires": "Mon, 27 Feb 2023 15:00:00 GMT",
        "Last-Modified": "Mon, 20 Feb 2023 14:00:00 GMT",
    }


@pytest.mark.parametrize("cache_control",
                         ["no-cache", "public", "s-maxage=100, public", "max-age=0"])
def test_caching_headers_expires_equals_date_without_max_age(cache_control):
    headers = caching_headers(VALIDATORS, cache_control, NOW)
    assert headers["Expires"] == headers["Date"] == "Mon, 20 Feb 2023 15:00:00 GMT"
    assert headers["Cache-Control"] == cache_control


def test_caching_headers_without_last_modified():
    headers = caching_headers(Validators(OUR_ETAG, None), "max-age=60", NOW)
    assert "Last-Modified" not in headers
    assert headers["Expires"] == "Mon, 20 Feb 2023 15:01:00 GMT"


def test_caching_headers_drop_microseconds():
    now = NOW.replace(microsecond=999999)
    headers = caching_headers(VALIDATORS, "max-age=1", now)
    assert headers["Date"] == "Mon, 20 Feb 2023 15:00:00 GMT"
    assert headers["Expires"] == "Mon, 20 Feb 2023 15:00:01 GMT"


@pytest.mark.parametrize("cache_control, expected", [
    ("max-age=10", 10),
    ("public, max-age=10", 10),
    ("s-maxage=5, max-age=10", 10),
    ("MAX-AGE=10", 10),
    ('max-age="10"', 10),
    ("max-age = 10 , public", 10),
    ("s-maxage=5", None),
    ("no-store", None),
    ("max-age=", None),
    ("max-age=abc", None),
    ("xmax-age=10", None),
])
def test_max_age_of(cache_control, expected):
    assert max_age_of(cache_control) == expected


def test_caching_headers_with_huge_max_age():
    headers = caching_headers(VALIDATORS, "max-age=999999999999", NOW)
    assert headers["Expires"] == format_http_date(NOW + timedelta(seconds=2 ** 31))
