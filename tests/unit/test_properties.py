"""Property-based tests of what parses client input: hostile text never breaks them.

Every parser that sees a request header, a query string or a path segment is
fed arbitrary text (hypothesis) and must return a result or raise only its
documented exception (``negotiation.NotAcceptable``); the conditional
decisions keep their invariants whatever junk surrounds a validator:

* an ``If-None-Match`` holding our exact entity-tag among other valid tags gives 304;
* a list of valid tags none of which is ours never does, nor does a malformed field;
* ``If-None-Match`` takes precedence over ``If-Modified-Since``;
* an ``If-Modified-Since`` date gives 304 exactly when it is neither invalid, nor in
  the future, nor before ``Last-Modified``.

Examples are derandomized with a fixed count, so a run is reproducible and bounded.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional
from urllib.parse import unquote

import pytest
from hypothesis import assume, example, given, settings, strategies as st

from orthanc_cache_plugin.core.keys import cache_key, entity_tag, normalized_query
from orthanc_cache_plugin.http.negotiation import (
    BAD_ACCEPT,
    JPEG,
    NO_MATCH,
    PAM,
    PNG,
    NotAcceptable,
    jpeg_quality,
    negotiate_image,
    parse_unsigned,
)
from orthanc_cache_plugin.http.validators import (
    Validators,
    evaluate_preconditions,
    format_http_date,
    parse_http_date,
    parse_if_none_match,
)

UTC = timezone.utc
NOW = datetime(2023, 2, 20, 15, 0, 0, tzinfo=UTC)
UINT_MAX = 4294967295

#: Reproducible, bounded runs (the suite's convention).
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None)
FEW = settings(max_examples=150, deadline=None, derandomize=True, database=None)

# --- Strategies ------------------------------------------------------------------------------

#: Any text a header or a query may carry once decoded (the Python plugin refuses
#: invalid UTF-8, so lone surrogates never reach the plugin).
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
#: Text made mostly of the characters the parsers look at, to reach deep branches.
HEADER_ALPHABET = 'W/"*, \t;=qabcdef0123456789.-+eE/imagejpngx*:GMTSunNov'
HEADER_TEXT = st.text(HEADER_ALPHABET, max_size=60)
#: Characters allowed in an opaque-tag (RFC 9110 etagc, obs-text included).
ETAGC = st.characters(min_codepoint=0x21, max_codepoint=0xFF).filter(lambda c: c not in '"\x7f')
OPAQUE_TAG = st.text(ETAGC, max_size=12).map(lambda text: '"%s"' % text)
ENTITY_TAG = st.tuples(st.booleans(), OPAQUE_TAG).map(lambda t: ("W/" if t[0] else "") + t[1])
OWS = st.sampled_from(["", " ", "\t", "  ", " \t"])

SALT = "orthanc 1.10.1, plugin 0.1.0, format 1"
OUR_ETAG = entity_tag(SALT, cache_key("/studies/x/shared-tags", "", ""), "20230220T140000|g")
OUR_OPAQUE = OUR_ETAG[2:]
VALIDATORS = Validators(OUR_ETAG, datetime(2023, 2, 20, 14, 0, 0, tzinfo=UTC))


@st.composite
def tag_list(draw: st.DrawFn, members: st.SearchStrategy[str]) -> str:
    """A syntactically valid If-None-Match list of ``members`` (empty elements allowed)."""
    items = draw(st.lists(members, min_size=1, max_size=6))
    parts: List[str] = []
    for item in items:
        parts.extend([""] * draw(st.integers(0, 1)))  # empty list elements
        parts.append(item)
    separators = [draw(OWS) + "," + draw(OWS) for _ in range(len(parts) - 1)]
    text = parts[0] + "".join(sep + part for sep, part in zip(separators, parts[1:]))
    return draw(OWS) + text + draw(OWS)


@st.composite
def http_date_like(draw: st.DrawFn) -> str:
    """Strings shaped like the three HTTP-date formats, with arbitrary field values."""
    day = draw(st.sampled_from(["Mon", "Sun", "Sunday", "Xyz", ""]))
    number = draw(st.text("0123456789 ", min_size=0, max_size=3))
    month = draw(st.sampled_from(["Jan", "Feb", "Nov", "nov", "Foo"]))
    year = draw(st.text("0123456789", min_size=0, max_size=5))
    hour, minute, second = (draw(st.text("0123456789", min_size=1, max_size=2)) for _ in range(3))
    shape = draw(st.integers(0, 2))
    if shape == 0:
        return "%s, %s %s %s %s:%s:%s GMT" % (day, number, month, year, hour, minute, second)
    if shape == 1:
        return "%s, %s-%s-%s %s:%s:%s GMT" % (day, number, month, year, hour, minute, second)
    return "%s %s %s %s:%s:%s %s" % (day, month, number, hour, minute, second, year)


def headers_with(if_none_match: Optional[str] = None,
                 if_modified_since: Optional[str] = None) -> Dict[str, str]:
    headers = {}
    if if_none_match is not None:
        headers["if-none-match"] = if_none_match
    if if_modified_since is not None:
        headers["if-modified-since"] = if_modified_since
    return headers


# --- HTTP-dates ------------------------------------------------------------------------------

@FUZZ
@given(st.one_of(ANY_TEXT, HEADER_TEXT, http_date_like()),
       st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2500, 12, 31),
                    timezones=st.just(UTC)))
@example("Sunday, 31-Feb-23 08:49:37 GMT", NOW)   # impossible day
@example("Sun, 06 Nov 0000 08:49:37 GMT", NOW)    # year 0
@example("Sun Nov  6 99:99:99 1994", NOW)
def test_parse_http_date_never_raises(text: str, now: datetime) -> None:
    parsed = parse_http_date(text, now)
    assert parsed is None or parsed.utcoffset() == timedelta(0)


@FEW
@given(st.characters(whitelist_categories=("Nd",)).filter(lambda c: not c.isascii()),
       st.integers(0, 2))
def test_http_dates_are_made_of_ascii_digits(digit: str, field: int) -> None:
    """RFC 9110 DIGIT is ASCII: a date written with other digits is invalid (ignored)."""
    text = "Sun, 06 Nov 1994 08:49:37 GMT"
    position = (5, 12, 18)[field]  # a digit of the day, the year or the hour
    assert parse_http_date(text[:position] + digit + text[position + 1:], NOW) is None


@FUZZ
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                    timezones=st.just(UTC)), OWS, OWS)
def test_our_dates_parse_back_with_surrounding_whitespace(moment: datetime, before: str,
                                                          after: str) -> None:
    moment = moment.replace(microsecond=0)
    assert parse_http_date(before + format_http_date(moment) + after, NOW) == moment


# --- If-None-Match ---------------------------------------------------------------------------

@FUZZ
@given(st.one_of(ANY_TEXT, HEADER_TEXT, tag_list(ENTITY_TAG)))
def test_parse_if_none_match_never_raises(text: str) -> None:
    condition = parse_if_none_match(text)
    if condition is not None:
        assert condition.any or condition.opaque_tags
        assert all(tag.startswith('"') and tag.endswith('"') for tag in condition.opaque_tags)


@FUZZ
@given(tag_list(ENTITY_TAG))
def test_every_valid_list_parses_to_its_tags(text: str) -> None:
    condition = parse_if_none_match(text)
    assert condition is not None and not condition.any
    expected = {match.group(1) for match in re.finditer(r'(?:W/)?("[^"]*")', text)}
    assert condition.opaque_tags == expected


@FUZZ
@given(st.data())
def test_our_etag_among_valid_junk_gives_304(data: st.DataObject) -> None:
    ours = data.draw(st.sampled_from([OUR_ETAG, OUR_OPAQUE]))  # weak comparison: W/ or not
    others = data.draw(st.lists(ENTITY_TAG, max_size=5))
    position = data.draw(st.integers(0, len(others)))
    members = others[:position] + [ours] + others[position:]
    value = data.draw(OWS) + ", ".join(members) + data.draw(OWS)
    since = data.draw(st.one_of(st.none(), ANY_TEXT))  # ignored: If-None-Match wins
    evaluation = evaluate_preconditions(headers_with(value, since), VALIDATORS, NOW)
    assert evaluation.not_modified, (value, evaluation.reason)


@FUZZ
@given(tag_list(ENTITY_TAG.filter(lambda tag: tag.replace("W/", "", 1) != OUR_OPAQUE)),
       st.one_of(st.none(), st.just(format_http_date(NOW)), ANY_TEXT))
def test_a_list_without_our_etag_never_gives_304(value: str, since: Optional[str]) -> None:
    # Even with an If-Modified-Since that alone would give 304: If-None-Match takes precedence.
    evaluation = evaluate_preconditions(headers_with(value, since), VALIDATORS, NOW)
    assert not evaluation.not_modified, (value, evaluation.reason)


@FUZZ
@given(st.one_of(ANY_TEXT, HEADER_TEXT), st.one_of(st.none(), st.just(format_http_date(NOW))))
def test_a_malformed_if_none_match_never_gives_304(value: str, since: Optional[str]) -> None:
    assume(parse_if_none_match(value) is None)
    evaluation = evaluate_preconditions(headers_with(value, since), VALIDATORS, NOW)
    assert not evaluation.not_modified, (value, evaluation.reason)


@FEW
@given(OWS, OWS, st.one_of(st.none(), ANY_TEXT))
def test_star_always_gives_304(before: str, after: str, since: Optional[str]) -> None:
    assert evaluate_preconditions(headers_with(before + "*" + after, since), VALIDATORS,
                                  NOW).not_modified


@FUZZ
@given(st.dictionaries(st.sampled_from(["if-none-match", "if-modified-since", "accept",
                                        "if-match", "range"]),
                       st.one_of(ANY_TEXT, HEADER_TEXT, http_date_like()), max_size=5),
       st.one_of(st.none(), st.datetimes(min_value=datetime(1970, 1, 1),
                                         max_value=datetime(2500, 1, 1), timezones=st.just(UTC))))
def test_evaluate_preconditions_never_raises(headers: Dict[str, str],
                                             last_modified: Optional[datetime]) -> None:
    evaluation = evaluate_preconditions(headers, Validators(OUR_ETAG, last_modified), NOW)
    assert isinstance(evaluation.not_modified, bool) and evaluation.reason
    if "if-none-match" not in headers and "if-modified-since" not in headers:
        assert not evaluation.not_modified


@FUZZ
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)), OWS)
def test_if_modified_since_gives_304_exactly_when_not_modified_since(since: datetime,
                                                                    padding: str) -> None:
    since = since.replace(microsecond=0)
    evaluation = evaluate_preconditions(headers_with(None, padding + format_http_date(since)),
                                        VALIDATORS, NOW)
    expected = VALIDATORS.last_modified <= since <= NOW
    assert evaluation.not_modified is expected, (since, evaluation.reason)


@FUZZ
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
       st.text(max_size=40), st.text(max_size=40))
def test_every_etag_we_issue_is_valid_and_matches_itself(salt: str, key: str, version: str) -> None:
    tag = entity_tag(salt, key, version)
    condition = parse_if_none_match(tag)
    assert condition is not None and condition.matches(tag)
    assert evaluate_preconditions({"if-none-match": tag}, Validators(tag, None), NOW).not_modified


# --- Accept negotiation ----------------------------------------------------------------------

ACCEPT_TEXT = st.text('image/jpngx-portablearbitrarmp*;q=0.15e+-, \t', max_size=60)


@FUZZ
@given(st.one_of(st.none(), ANY_TEXT, HEADER_TEXT, ACCEPT_TEXT))
@example("image/png;q=1e999")
@example("image/png;q=nan")
@example("image/png;q=" + "9" * 5000)
def test_negotiate_image_returns_a_type_or_refuses_as_orthanc(accept: Optional[str]) -> None:
    try:
        chosen = negotiate_image(accept)
    except NotAcceptable as refusal:
        assert refusal.status in (NO_MATCH, BAD_ACCEPT)
    else:
        assert chosen in (PNG, JPEG, PAM)


NON_ASCII_DIGIT = st.characters(whitelist_categories=("Nd",)).filter(lambda c: not c.isascii())


@FEW
@given(NON_ASCII_DIGIT, st.sampled_from(["%s", "0.%s", "%s.0", "0.5%s"]))
def test_a_q_value_with_non_ascii_digits_is_malformed_as_for_orthanc(digit: str,
                                                                     shape: str) -> None:
    """Orthanc reads q with C's strtod: ASCII digits only, so ``q=\u0661`` is refused (415).

    Python's ``\\d`` and ``float()`` accept every Unicode digit: the plugin must not.
    """
    with pytest.raises(NotAcceptable) as refusal:
        negotiate_image("image/jpeg;q=" + shape % digit)
    assert refusal.value.status == BAD_ACCEPT


MEDIA_RANGE = st.sampled_from(["image/png", "image/jpeg", "image/x-portable-arbitrarymap",
                               "image/*", "*/*", "text/html", "application/json", "image/gif"])
Q_VALUE = st.one_of(st.none(), st.floats(0, 1).map(lambda q: "%.3f" % q))


@FUZZ
@given(st.lists(st.tuples(MEDIA_RANGE, Q_VALUE), min_size=1, max_size=6), OWS)
def test_a_valid_accept_picks_a_type_of_its_most_specific_matching_range(
        ranges: List[tuple], padding: str) -> None:
    accept = ("," + padding).join(media + ("" if q is None else ";q=" + q) for media, q in ranges)
    listed = {media for media, _ in ranges}
    exact = listed & {PNG, JPEG, PAM}
    try:
        chosen = negotiate_image(accept)
    except NotAcceptable as refusal:
        assert refusal.status == NO_MATCH
        assert not exact and not listed & {"image/*", "*/*"}
        return
    if exact:
        assert chosen in exact
    elif "image/*" in listed or "*/*" in listed:
        assert chosen in (PNG, JPEG, PAM)


@FEW
@given(st.sampled_from([PNG, JPEG, PAM]))
def test_an_exact_type_alone_is_chosen(media: str) -> None:
    assert negotiate_image(media) == media
    assert negotiate_image(" %s ; q=0.5 " % media) == media


# --- Unsigned integers (frame numbers, JPEG quality) -----------------------------------------

@FUZZ
@given(st.one_of(ANY_TEXT, st.text("0123456789+- ", max_size=30),
                 st.from_regex(r"\A[+-]?[0-9]{1,30}\Z")))
def test_parse_unsigned_never_raises(text: str) -> None:
    value = parse_unsigned(text)
    assert value is None or 0 <= value <= UINT_MAX


@pytest.mark.parametrize("digits", [4300, 4301, 5000, 20000])
def test_parse_unsigned_never_raises_on_very_long_numbers(digits: int) -> None:
    """A frame number or ``quality`` of thousands of digits is a valid URI segment.

    Python 3.11 refuses int() on more than 4300 digits (ValueError); Orthanc's
    ``lexical_cast<unsigned>`` just fails, so the plugin must answer None.
    """
    assert parse_unsigned("9" * digits) is None
    assert parse_unsigned("0" * digits + "7") == 7  # leading zeros: still 7, as lexical_cast


@FUZZ
@given(st.integers(0, UINT_MAX), st.integers(0, 5))
def test_parse_unsigned_reads_unsigned_ints_with_leading_zeros(value: int, zeros: int) -> None:
    text = "0" * zeros + str(value)
    assert parse_unsigned(text) == value
    assert parse_unsigned("+" + text) == value
    assert parse_unsigned("-" + text) == (-value) % (UINT_MAX + 1)


@FUZZ
@given(st.integers(UINT_MAX + 1, 10 ** 30))
def test_parse_unsigned_refuses_out_of_range(value: int) -> None:
    assert parse_unsigned(str(value)) is None


@FUZZ
@given(st.dictionaries(st.sampled_from(["quality", "other"]),
                       st.one_of(ANY_TEXT, st.text("0123456789-+", max_size=12)), max_size=2))
def test_jpeg_quality_never_raises(arguments: Dict[str, str]) -> None:
    quality = jpeg_quality(arguments)
    assert quality is None or 1 <= quality <= 100


# --- Query strings ---------------------------------------------------------------------------

QUERY_TEXT = st.one_of(ANY_TEXT, st.text("%&=#?+ aZ09/;\u00e9\x00", max_size=20))


@FUZZ
@given(st.dictionaries(QUERY_TEXT, QUERY_TEXT, max_size=6))
def test_normalized_query_never_raises_and_keeps_the_structure(arguments: Dict[str, str]) -> None:
    query = normalized_query(arguments)
    assert query.isascii() and not set(query) & set(" #\x00")
    assert normalized_query(dict(reversed(list(arguments.items())))) == query
    parts = query.split("&") if query else []
    assert len(parts) == len(arguments)
    names = [part.partition("=")[0] for part in parts]
    assert names == sorted(names, key=lambda name: unquote(name)) or "%" in "".join(arguments)
    if not any("%" in name + value for name, value in arguments.items()):
        decoded = dict((unquote(name), unquote(value))
                       for name, _, value in (part.partition("=") for part in parts))
        assert decoded == arguments
