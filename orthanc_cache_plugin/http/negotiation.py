"""Which representation a request selects, the way Orthanc 1.10 decides it.

Orthanc's image routes pick PNG, JPEG or PAM from the ``Accept`` header;
``/instances/{id}/file`` switches to DICOMweb for two exact Accept values.
The plugin must pick the same representation to key, fetch and label the
answer correctly.  The rules below were observed on Orthanc 1.10.1 (see
``docs/fidelity.md``); parsing follows its ``boost::lexical_cast`` and C
``strtod`` calls, not RFC 9110.  Where later versions were seen to parse
otherwise, ``api_version`` (the running Orthanc's ``ApiVersion``) selects
the rule.
"""

from __future__ import annotations

import re
from typing import List, Mapping, Optional, Tuple

from ..core.routes import Negotiation, Route

PNG = "image/png"
JPEG = "image/jpeg"
PAM = "image/x-portable-arbitrarymap"
DICOM = "application/dicom"
_IMAGE_CANDIDATES = (PNG, JPEG, PAM)
_DICOMWEB = ("application/dicom+json", "application/dicom+xml")
#: The Accept values for which the DICOMweb plugin answers its default DICOM JSON, the
#: same bytes on every version (measured on 1.7, 1.20 and 1.24: docs/dicomweb.md), as
#: OHIF and Stone send them; any other value is left to the DICOMweb plugin (XML, a
#: browser's list, which 1.7 refuses and 1.20 answers with JSON...).
DICOMWEB_JSON_ACCEPT = ("", "*/*", "application/json", "application/dicom+json")

#: 404 when nothing matches, 415 when a q-value is malformed (Orthanc's answers).
NO_MATCH = 404
BAD_ACCEPT = 415

# Parsing that changed, as seen on ApiVersion 16 (Orthanc 1.10.1), 27 (1.12.7) and 31
# (1.13.0); the versions in between were not run, so each rule starts where it was seen.
#: From here (seen on 1.12.7 and 1.13.0; 1.10.1 reads the first ``q`` and checks it on
#: every range), the last ``q`` of a media range counts and it is checked only on ranges
#: that match an image type served: ``image/gif;q=2`` is no match (404), not a 415.
_ACCEPT_LAST_Q = 27
#: From here (seen on 1.13.0; 1.10.1 and 1.12.7 refuse it), ``quality`` may have white
#: space around it, and a minus sign never wraps around to a valid quality.
_QUALITY_STRIPPED = 31
#: What C's ``isspace`` calls white space (stripped from ``quality`` from 1.13.0).
_C_SPACES = " \t\n\v\f\r"


class NotAcceptable(Exception):
    """Orthanc would refuse the request's Accept header with ``status``."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class Unsupported(Exception):
    """A representation that Orthanc serves but the plugin cannot rebuild."""


_FLOAT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", re.ASCII)


def _quality(parameters: List[str], last: bool = False) -> float:
    """The first ``q`` of a media range (Orthanc 1.10 ignores any later one), or the last."""
    found: Optional[str] = None
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "q":
            found = value
            if not last:
                break
    if found is None:
        return 1.0
    found = found.strip()
    if not _FLOAT.match(found):
        raise NotAcceptable(BAD_ACCEPT, "malformed q-value in Accept")
    quality = float(found)
    if not 0.0 <= quality <= 1.0:
        raise NotAcceptable(BAD_ACCEPT, "q-value out of range in Accept")
    return quality


def negotiate_image(accept: Optional[str], api_version: int = 16) -> str:
    """The image type Orthanc answers for ``accept`` (None: no header).

    Most specific media range first (exact, then ``image/*``, then ``*/*``),
    then the highest q, then the first met; q=0 does not refuse a type.
    """
    if accept is None:
        return PNG
    last_q = api_version >= _ACCEPT_LAST_Q
    best: Optional[Tuple[int, float, int, str]] = None
    position = 0
    for part in accept.split(","):
        pieces = part.split(";")
        media_type, slash, subtype = pieces[0].partition("/")
        # Up to 1.10 (at least) checked even on ranges that match nothing.
        quality = None if last_q else _quality(pieces[1:])
        if not slash:
            continue
        media_type, subtype = media_type.strip(), subtype.strip()
        for candidate in _IMAGE_CANDIDATES:
            candidate_type, candidate_subtype = candidate.split("/")
            if media_type == "*" and subtype == "*":
                specificity = 0
            elif media_type == candidate_type and subtype == "*":
                specificity = 1
            elif media_type == candidate_type and subtype == candidate_subtype:
                specificity = 2
            else:
                continue
            if quality is None:
                quality = _quality(pieces[1:], last=True)
            rank = (specificity, quality, -position, candidate)
            if best is None or rank[:3] > best[:3]:
                best = rank
            position += 1
    if best is None:
        raise NotAcceptable(NO_MATCH, "no image type of Accept is served")
    return best[3]


def representation_of(route: Route, headers: Mapping[str, str], api_version: int = 16) -> str:
    """The representation selected by the request headers ("" when only one exists).

    Raises :class:`NotAcceptable` where Orthanc refuses the header and
    :class:`Unsupported` where the plugin cannot rebuild Orthanc's answer.
    """
    if route.negotiation is Negotiation.IMAGE:
        return negotiate_image(headers.get("accept"), api_version)
    if route.negotiation is Negotiation.DICOM_FILE:
        if headers.get("accept", "").lstrip() in _DICOMWEB:
            raise Unsupported("DICOMweb answer of /file cannot be rebuilt by a Python plugin 4.0")
        return DICOM
    if route.negotiation is Negotiation.DICOMWEB_JSON:
        if headers.get("accept", "").strip() not in DICOMWEB_JSON_ACCEPT:
            raise Unsupported("Accept other than DICOM JSON: the DICOMweb plugin's to answer")
        return ""
    return ""


_UNSIGNED = re.compile(r"([+-]?)([0-9]+)")
_UINT_MAX = 4294967295


def parse_unsigned(text: str) -> Optional[int]:
    """Parse like ``boost::lexical_cast<unsigned int>``: a minus sign wraps around."""
    match = _UNSIGNED.fullmatch(text)
    digits = match.group(2).lstrip("0") if match else ""
    if not match or len(digits) > 10:  # also spares int() a huge string
        return None
    value = int(digits or "0")
    if value > _UINT_MAX:
        return None
    return (-value) % (_UINT_MAX + 1) if match.group(1) == "-" else value


def jpeg_quality(arguments: Mapping[str, str], api_version: int = 16) -> Optional[int]:
    """The ``quality`` argument of image routes (default 90); None when Orthanc refuses it."""
    raw = arguments.get("quality")
    if raw is None:
        return 90
    if api_version >= _QUALITY_STRIPPED:
        raw = raw.strip(_C_SPACES)
        if raw.startswith("-"):
            return None
    value = parse_unsigned(raw)
    return value if value is not None and 1 <= value <= 100 else None


def pam_image(channels: int, width: int, height: int, bytes_per_sample: int,
              little_endian_samples: bytes) -> bytes:
    """A PAM file as Orthanc writes it: no row padding, 16-bit samples big-endian."""
    samples = little_endian_samples
    if bytes_per_sample == 2:
        swapped = bytearray(samples)
        swapped[0::2], swapped[1::2] = samples[1::2], samples[0::2]
        samples = bytes(swapped)
    header = "P7\nWIDTH %d\nHEIGHT %d\nDEPTH %d\nMAXVAL %d\nTUPLTYPE %s\nENDHDR\n" % (
        width, height, channels, 65535 if bytes_per_sample == 2 else 255,
        "RGB" if channels == 3 else "GRAYSCALE")
    return header.encode("ascii") + samples
