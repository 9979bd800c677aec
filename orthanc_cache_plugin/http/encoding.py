"""Content codings: which one to send (RFC 9110 section 12.5.3), gzip bodies, and the
entity-tags of the two representations (pure, no I/O).

The plugin can send a JSON answer in two codings: ``identity``, the bytes plain
Orthanc sends, and ``gzip``, compressed once when stored.  :func:`choose_coding`
reads the request's ``Accept-Encoding`` and says which one to send, and why.

Orthanc itself (measured by ``tests/integration/test_http_compression.py`` on
1.10.1, 1.12.7 and 1.13.0) compresses only with ``HttpCompressionEnabled``, and
only for a member that is exactly ``gzip`` or ``deflate``: it ignores weights,
so ``gzip;q=0.5`` gets no compression while ``gzip;q=0`` is refused by accident.
Without that setting it ignores ``Accept-Encoding`` and always sends identity.
The plugin reads the field as RFC 9110 says, with three choices where the RFC
leaves room:

* No ``Accept-Encoding`` field: identity.  The RFC lets a server pick any
  coding, but clients that send none (curl, wrk, scripts) rarely decode, and
  Orthanc never compresses for them.
* Nothing acceptable (``identity;q=0`` or ``*;q=0`` without an ``identity``
  member, and gzip not acceptable): identity all the same, marked
  ``acceptable=False``.  The RFC allows that or a 415; plain Orthanc answers
  identity whatever the field says, so a client it serves is served alike.
* ``identity`` neither listed nor covered by ``*`` is "acceptable by default"
  (RFC 9110 12.5.3), without a weight: it ranks below every listed coding, so
  ``gzip;q=0.5`` selects gzip (as Apache and nginx do).  When both have a
  weight, gzip wins ties.

A malformed member (``gzip;q=abc``, ``gzip;q=2``, ``;;;``) is ignored as if it
were not there; nothing here raises on what a client sent.  ``x-gzip`` counts as
``gzip`` (RFC 9110 8.4.1.3) unless ``gzip`` itself is listed.  When a coding is
listed twice, its first member counts.

Entity-tags: the identity representation keeps the tag the plugin computes
(``core.keys.entity_tag``); the gzip one carries the same opaque value with
``-gz`` appended (:func:`gzip_etag`, :func:`identity_etag`).  Both
representations share the version, so one tag derives from the other without a
read, yet they differ, as RFC 9110 8.8.3 asks of strong tags and as a cache
needs of weak ones too (a 304 names the stored response it validates).  A
request's ``If-None-Match`` is compared with the tag of the representation this
request selects (:func:`etag_for`): a client holding the gzip tag that now sends
no ``Accept-Encoding`` gets the identity body, not a 304 for bytes it cannot
read.  ``Last-Modified`` is the same for both.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Dict, Optional, Tuple

#: Compression level: zlib's default, and the one Orthanc and nginx use.
LEVEL = 6
#: For a body compressed at each request (never stored): about three times faster than
#: :data:`LEVEL` on Orthanc's JSON, for a body a fifth larger (nginx's default level).
FAST_LEVEL = 1
#: Bodies shorter than this are sent as they are.  Measured on Orthanc 1.13.0's
#: JSON: gzip saves 37-45 % of answers of 400-800 bytes, i.e. 150-370 bytes,
#: which travel in the same single TCP segment as the headers either way; from
#: about 1.5 KB (``/instances/{id}/tags?short``: 1,478 -> 525 bytes) it saves
#: segments.  (Orthanc compresses from 2 KB on since 1.12.2.)
MINIMUM_SIZE = 1024
#: Suffix that turns the opaque value of an identity entity-tag into the gzip one.
GZIP_SUFFIX = "-gz"


class Coding(Enum):
    """The content codings the plugin can send."""

    GZIP = "gzip"
    IDENTITY = "identity"


@dataclass(frozen=True)
class Choice:
    """The coding to send, whether the client accepts it, and why."""

    coding: Coding
    acceptable: bool
    reason: str


# RFC 9110 5.6.2 token; 12.4.2 qvalue (at most three decimals, never above 1).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")


def _weight(text: str) -> Optional[int]:
    """A qvalue in thousandths (``0.5`` -> 500), None when malformed."""
    if not _QVALUE.match(text):
        return None
    whole, _, decimals = text.partition(".")
    return int(whole) * 1000 + int((decimals + "000")[:3])


def parse_accept_encoding(value: str) -> Dict[str, int]:
    """The members of an ``Accept-Encoding`` field: coding name (lower case; ``*`` and
    ``identity`` included) -> weight in thousandths.  Malformed members are left out."""
    weights: Dict[str, int] = {}
    for member in value.split(","):
        name, *parameters = (piece.strip() for piece in member.split(";"))
        if not _TOKEN.match(name) or len(parameters) > 1:
            continue
        weight: Optional[int] = 1000
        if parameters:  # a weight, the only parameter a coding may have
            key, equals, text = (piece.strip() for piece in parameters[0].partition("="))
            weight = _weight(text) if equals and key.lower() == "q" else None
        if weight is not None:
            weights.setdefault(name.lower(), weight)
    if "gzip" not in weights and "x-gzip" in weights:
        weights["gzip"] = weights["x-gzip"]
    return weights


@lru_cache(maxsize=256)
def choose_coding(accept_encoding: Optional[str], gzip_offered: bool = True) -> Choice:
    """The coding to send for a request whose ``Accept-Encoding`` is ``accept_encoding``
    (None: no field), when gzip can be offered (a compressible answer) or not.

    Remembered for the last 256 fields: clients send few distinct ones (a browser
    always the same), and parsing one costs a fair part of a 304."""
    if accept_encoding is None:
        return Choice(Coding.IDENTITY, True, "no Accept-Encoding: identity, as Orthanc sends")
    weights = parse_accept_encoding(accept_encoding)
    anything = weights.get("*")
    gzip = weights.get("gzip", anything)
    # None: identity is neither listed nor covered by "*", so acceptable by default.
    identity = weights.get("identity", anything)
    identity_acceptable = identity is None or identity > 0
    if gzip_offered and gzip is not None and gzip > 0:
        if identity is None:
            return Choice(Coding.GZIP, True, "gzip accepted, identity not weighed")
        if not identity_acceptable:
            return Choice(Coding.GZIP, True, "gzip accepted, identity refused")
        if gzip >= identity:
            return Choice(Coding.GZIP, True, "gzip weighed at least as identity")
        return Choice(Coding.IDENTITY, True, "identity preferred to gzip")
    if identity_acceptable:
        if not gzip_offered:
            return Choice(Coding.IDENTITY, True, "gzip not offered for this answer")
        return Choice(Coding.IDENTITY, True, "gzip not accepted" if gzip is None
                      else "gzip refused")
    return Choice(Coding.IDENTITY, False, "no acceptable coding: identity all the same, "
                                          "as plain Orthanc sends")


_TEXTUAL_TYPES = ("application/json", "application/xml", "application/javascript")


def compressible(content_type: str, length: int) -> bool:
    """Whether an answer of ``content_type`` and ``length`` bytes is worth gzip: JSON, XML
    and text (``+json`` and ``+xml`` types too) of :data:`MINIMUM_SIZE` bytes or more;
    never images, DICOM, archives or multipart bodies (already compressed or binary)."""
    media_type = content_type.split(";")[0].strip().lower()
    if length < MINIMUM_SIZE:
        return False
    return (media_type in _TEXTUAL_TYPES or media_type.startswith("text/")
            or media_type.endswith(("+json", "+xml")))


# RFC 1952: magic, deflate, no flags, MTIME 0, no extra flags, OS unknown.  Written here
# rather than by the gzip module, whose header bytes differ between Python versions.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def compress(body: bytes, level: int = LEVEL) -> bytes:
    """``body`` as one gzip member, always the same bytes for the same body and level
    (with a given zlib): no time stamp or name in the header, level :data:`LEVEL`."""
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    trailer = struct.pack("<II", zlib.crc32(body) & 0xFFFFFFFF, len(body) & 0xFFFFFFFF)
    return _GZIP_HEADER + deflater.compress(body) + deflater.flush() + trailer


class BadGzip(ValueError):
    """Bytes that are not a gzip body, or that would inflate beyond the limit."""


def decompress(data: bytes, limit: int) -> bytes:
    """The body inside the gzip ``data`` (one member or several), at most ``limit`` bytes;
    :class:`BadGzip` when ``data`` is not gzip, is cut short, has bytes after its last
    member or holds more than ``limit`` bytes (the limit is enforced while inflating)."""
    if limit < 0:
        raise ValueError("negative limit")
    if not data:
        raise BadGzip("empty gzip body")
    pieces = []
    produced = 0
    rest = data
    while rest:
        if rest[:2] != b"\x1f\x8b":
            raise BadGzip("not a gzip member")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            piece = inflater.decompress(rest, limit - produced + 1)
        except zlib.error as error:
            raise BadGzip("corrupt gzip body: %s" % error) from None
        produced += len(piece)
        if produced > limit:
            raise BadGzip("gzip body inflates beyond %d bytes" % limit)
        if not inflater.eof:
            raise BadGzip("gzip body cut short")
        pieces.append(piece)
        rest = inflater.unused_data
    return b"".join(pieces)


def _split_tag(etag: str) -> Optional[Tuple[str, str]]:
    """``W/"abc"`` -> (``W/``, ``abc``); None when not an entity-tag."""
    weak = "W/" if etag.startswith("W/") else ""
    quoted = etag[len(weak):]
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"' or '"' in quoted[1:-1]:
        return None
    return weak, quoted[1:-1]


def gzip_etag(identity_tag: str) -> str:
    """The entity-tag of the gzip representation whose identity one is ``identity_tag``:
    ``"abc"`` -> ``"abc-gz"``, ``W/"abc"`` -> ``W/"abc-gz"``."""
    parts = _split_tag(identity_tag)
    if parts is None:
        raise ValueError("not an entity-tag: %r" % identity_tag)
    return '%s"%s%s"' % (parts[0], parts[1], GZIP_SUFFIX)


def identity_etag(tag: str) -> Optional[str]:
    """The identity entity-tag that the gzip tag ``tag`` derives from; None when ``tag``
    is not a gzip tag (any text a client sent may be passed)."""
    parts = _split_tag(tag)
    if parts is None or not parts[1].endswith(GZIP_SUFFIX):
        return None
    return '%s"%s"' % (parts[0], parts[1][:-len(GZIP_SUFFIX)])


def etag_for(identity_tag: str, coding: Coding) -> str:
    """The entity-tag to send with, and to compare ``If-None-Match`` with for, the
    representation in ``coding``."""
    return gzip_etag(identity_tag) if coding is Coding.GZIP else identity_tag
