"""Which representation a request selects, the way Orthanc 1.10 decides it.

Orthanc's image routes pick PNG, JPEG or PAM from the ``Accept`` header;
``/instances/{id}/file`` switches to DICOMweb for two exact Accept values.
The plugin must pick the same representation to key, fetch and label the
answer correctly.  The rules below were observed on Orthanc 1.10.1 (see
``docs/fidelity.md``); parsing follows its ``boost::lexical_cast`` and C
``strtod`` calls, not RFC 9110.
"""

from __future__ import annotations

import re
from typing import List, Mapping, Optional, Tuple

from .routes import Negotiation, Route

PNG = "image/png"
JPEG = "image/jpeg"
PAM = "image/x-portable-arbitrarymap"
DICOM = "application/dicom"
_IMAGE_CANDIDATES = (PNG, JPEG, PAM)
_DICOMWEB = ("application/dicom+json", "application/dicom+xml")

#: 404 when nothing matches, 415 when a q-value is malformed (Orthanc's answers).
NO_MATCH = 404
BAD_ACCEPT = 415


class NotAcceptable(Exception):
    """Orthanc would refuse the request's Accept header with ``status``."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class Unsupported(Exception):
    """A representation that Orthanc serves but the plugin cannot rebuild."""


_FLOAT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", re.ASCII)


def _quality(parameters: List[str]) -> float:
    """The first ``q`` of a media range (Orthanc ignores any later one)."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() != "q":
            continue
        value = value.strip()
        if not _FLOAT.match(value):
            raise NotAcceptable(BAD_ACCEPT, "malformed q-value in Accept")
        quality = float(value)
        if not 0.0 <= quality <= 1.0:
            raise NotAcceptable(BAD_ACCEPT, "q-value out of range in Accept")
        return quality
    return 1.0


def negotiate_image(accept: Optional[str]) -> str:
    """The image type Orthanc answers for ``accept`` (None: no header).

    Most specific media range first (exact, then ``image/*``, then ``*/*``),
    then the highest q, then the first met; q=0 does not refuse a type.
    """
    if accept is None:
        return PNG
    best: Optional[Tuple[int, float, int, str]] = None
    position = 0
    for part in accept.split(","):
        pieces = part.split(";")
        media_type, slash, subtype = pieces[0].partition("/")
        quality = _quality(pieces[1:])  # checked even on ranges that match nothing
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
            rank = (specificity, quality, -position, candidate)
            if best is None or rank[:3] > best[:3]:
                best = rank
            position += 1
    if best is None:
        raise NotAcceptable(NO_MATCH, "no image type of Accept is served")
    return best[3]


def representation_of(route: Route, headers: Mapping[str, str]) -> str:
    """The representation selected by the request headers ("" when only one exists).

    Raises :class:`NotAcceptable` where Orthanc refuses the header and
    :class:`Unsupported` where the plugin cannot rebuild Orthanc's answer.
    """
    if route.negotiation is Negotiation.IMAGE:
        return negotiate_image(headers.get("accept"))
    if route.negotiation is Negotiation.DICOM_FILE:
        if headers.get("accept", "").lstrip() in _DICOMWEB:
            raise Unsupported("DICOMweb answer of /file cannot be rebuilt by a Python plugin 4.0")
        return DICOM
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


def jpeg_quality(arguments: Mapping[str, str]) -> Optional[int]:
    """The ``quality`` argument of image routes (default 90); None when Orthanc refuses it."""
    raw = arguments.get("quality")
    if raw is None:
        return 90
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
