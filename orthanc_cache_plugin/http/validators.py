"""HTTP validators and conditional requests (RFC 9110, sections 8.8 and 13).

Pure functions: HTTP-dates, Orthanc timestamps, entity-tags, the
``If-None-Match`` / ``If-Modified-Since`` evaluation and the caching headers
of an answer.  Nothing here knows about Orthanc's plugin API, so all of it is
unit-tested without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: index + 1 for index, name in enumerate(_MONTHS)}

_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# re.ASCII: \d must not match other scripts' digits.
_IMF_FIXDATE = re.compile(
    r"^(%s), (\d{2}) (%s) (\d{4}) %s GMT$" % ("|".join(_DAYS), "|".join(_MONTHS), _TIME),
    re.ASCII)
_RFC850_DATE = re.compile(
    r"^(%s), (\d{2})-(%s)-(\d{2}) %s GMT$" % ("|".join(_LONG_DAYS), "|".join(_MONTHS), _TIME),
    re.ASCII)
_ASCTIME_DATE = re.compile(
    r"^(%s) (%s) ([ \d]\d) %s (\d{4})$" % ("|".join(_DAYS), "|".join(_MONTHS), _TIME),
    re.ASCII)
_ORTHANC_TIMESTAMP = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})$", re.ASCII)


@lru_cache(maxsize=1024)  # on every answer: Date changes once a second, Last-Modified rarely
def format_http_date(moment: datetime) -> str:
    """Format an aware datetime as an IMF-fixdate, e.g. ``Mon, 20 Feb 2023 15:00:00 GMT``."""
    utc = moment.astimezone(timezone.utc)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[utc.weekday()], utc.day, _MONTHS[utc.month - 1], utc.year,
        utc.hour, utc.minute, utc.second)


def _utc(year: int, month: int, day: int, hour: int, minute: int,
         second: int) -> Optional[datetime]:
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:  # 31 Feb, 25:00 and friends
        return None


def _years_later(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def parse_http_date(value: str, now: Optional[datetime] = None) -> Optional[datetime]:
    """Parse the three HTTP-date formats of RFC 9110 section 5.6.7.

    Returns an aware UTC datetime, or None when ``value`` is not a valid
    HTTP-date (callers then ignore the header, as the RFC requires).
    A two-digit RFC 850 year that would be more than 50 years in the future
    is taken from the past century (section 5.6.7).
    """
    value = value.strip()
    match = _IMF_FIXDATE.match(value)
    if match:
        _, day, month, year, hour, minute, second = match.groups()
        return _utc(int(year), _MONTH_NUMBER[month], int(day), int(hour), int(minute), int(second))
    match = _RFC850_DATE.match(value)
    if match:
        _, day, month, short_year, hour, minute, second = match.groups()
        now = now or datetime.now(timezone.utc)
        year = now.year - now.year % 100 + int(short_year)
        fields = (_MONTH_NUMBER[month], int(day), int(hour), int(minute), int(second))
        moment = _utc(year, *fields)
        if moment is not None and moment > _years_later(now, 50):
            moment = _utc(year - 100, *fields)
        return moment
    match = _ASCTIME_DATE.match(value)
    if match:
        _, month, day, hour, minute, second, year = match.groups()
        return _utc(int(year), _MONTH_NUMBER[month], int(day), int(hour), int(minute), int(second))
    return None


@lru_cache(maxsize=4096)  # on every request, for the resource's LastUpdate
def parse_orthanc_timestamp(value: str) -> Optional[datetime]:
    """Parse Orthanc's ``LastUpdate`` / ``ReceptionDate`` (``20230220T140000``, UTC)."""
    match = _ORTHANC_TIMESTAMP.match(value.strip())
    if not match:
        return None
    return _utc(*(int(part) for part in match.groups()))


@dataclass(frozen=True)
class EntityTagCondition:
    """A parsed ``If-None-Match`` field: ``*`` or a set of opaque tags.

    The weak indicator is dropped because If-None-Match uses the weak
    comparison function (RFC 9110 section 13.1.2).
    """

    any: bool
    opaque_tags: FrozenSet[str]

    def matches(self, etag: str) -> bool:
        """True when ``etag`` (as sent in our ETag header) weakly matches."""
        return self.any or _opaque_tag(etag) in self.opaque_tags


def _opaque_tag(etag: str) -> str:
    return etag[2:] if etag.startswith("W/") else etag


_ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(,|$)')


@lru_cache(maxsize=256)  # parsed twice per conditional request, often the same value
def parse_if_none_match(value: str) -> Optional[EntityTagCondition]:
    """Parse ``If-None-Match``; None when the field is malformed (then ignored).

    Entity-tags may contain commas, so the list is scanned tag by tag instead
    of being split on ``,``.  Empty list members are allowed (RFC 9110 5.6.1).
    """
    stripped = value.strip()
    if stripped == "*":
        return EntityTagCondition(True, frozenset())
    tags = set()
    position = 0
    while position < len(stripped):
        if stripped[position] in ", \t":
            position += 1
            continue
        match = _ENTITY_TAG.match(stripped, position)
        if not match:
            return None
        tags.add(match.group(2))
        position = match.end()
    if not tags:
        return None
    return EntityTagCondition(False, frozenset(tags))


@dataclass(frozen=True)
class Validators:
    """What identifies one version of one representation."""

    etag: str
    last_modified: Optional[datetime]


@dataclass(frozen=True)
class Evaluation:
    """Outcome of the preconditions: answer 304 or not, and why."""

    not_modified: bool
    reason: str


def evaluate_preconditions(headers: Mapping[str, str], validators: Validators,
                           now: datetime) -> Evaluation:
    """Decide between 304 and a full answer for a GET (RFC 9110 section 13.2.2).

    ``headers`` has lower-cased names.  If-None-Match takes precedence over
    If-Modified-Since; an invalid If-None-Match or date is ignored.  An
    If-Modified-Since date in the future is ignored too, because a client clock
    ahead of ours would otherwise keep a stale copy (Apache httpd does the same).
    """
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        condition = parse_if_none_match(if_none_match)
        if condition is None:
            return Evaluation(False, "malformed If-None-Match ignored")
        if condition.matches(validators.etag):
            return Evaluation(True, "If-None-Match matches")
        return Evaluation(False, "If-None-Match does not match")

    if_modified_since = headers.get("if-modified-since")
    if if_modified_since is None:
        return Evaluation(False, "unconditional request")
    since = parse_http_date(if_modified_since, now)
    if since is None:
        return Evaluation(False, "invalid If-Modified-Since ignored")
    if since > now:
        return Evaluation(False, "If-Modified-Since in the future ignored")
    if validators.last_modified is None:
        return Evaluation(False, "no Last-Modified to compare")
    if validators.last_modified <= since:
        return Evaluation(True, "not modified since If-Modified-Since")
    return Evaluation(False, "modified since If-Modified-Since")


_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE | re.ASCII)


@lru_cache(maxsize=16)  # on every answer, for the one configured Cache-Control
def max_age_of(cache_control: str) -> Optional[int]:
    """The ``max-age`` of a Cache-Control value, or None when it has none."""
    match = _MAX_AGE.search(cache_control)
    return int(match.group(1)) if match else None


@lru_cache(maxsize=4)  # the same second for every answer of that second
def _date_and_expires(now: datetime, cache_control: str) -> Tuple[str, str]:
    # RFC 9111 section 1.2.2: delta-seconds beyond 2^31 mean 2^31.
    max_age = min(max_age_of(cache_control) or 0, 2 ** 31)
    return format_http_date(now), format_http_date(now + timedelta(seconds=max_age))


def caching_headers(validators: Validators, cache_control: str, now: datetime) -> Dict[str, str]:
    """Headers added to a 200 and repeated on its 304 (RFC 9110 section 15.4.5).

    ``Expires`` is ``Date + max-age`` when Cache-Control has a max-age, and
    equal to ``Date`` (already stale) otherwise, for HTTP/1.0 caches.
    """
    date, expires = _date_and_expires(now.replace(microsecond=0), cache_control)
    headers = {"Date": date, "ETag": validators.etag, "Cache-Control": cache_control,
               "Expires": expires}
    if validators.last_modified is not None:
        headers["Last-Modified"] = format_http_date(validators.last_modified)
    return headers

