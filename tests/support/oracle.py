"""Compare two Orthancs' answers to the same request: the "oracle" of fidelity tests.

An :class:`Exchange` keeps the parts of an answer that the cache plugin must
reproduce exactly (status, a few headers, body) and drops the ones it adds or
that differ between two servers holding the same files: zip entries' dates,
DICOMDIR UIDs, reception timestamps, job ids, attachment UUIDs.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import requests

from support.dicom_factory import make_instance, make_pdf_instance, make_study
from support.orthanc_server import OrthancServer

#: Headers whose value the plugin must reproduce; it may add others (ETag...).
COMPARED_HEADERS = ("Content-Type", "Content-Disposition", "Location", "Allow")

_TIMESTAMP = re.compile(rb"\b\d{8}T\d{6}\b")
_JOB_ID = re.compile(rb"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_ZIP_MAGIC = b"PK\x03\x04"
#: Details naming a line of Orthanc's source ("... triggered from File.cpp:187"), seen on
#: Orthanc 1.13.0 (numpy of an instance without pixel data); a plugin only gets the error
#: code, so it answers without them (docs/fidelity.md, known differences).
SOURCE_LINE_DETAILS = re.compile(rb'\n\t"Details" : "[^"\n]* triggered from [\w.]+:\d+",')


def without_source_line_details(body: bytes) -> bytes:
    """``body`` without such Details: what the plugin answers instead."""
    return SOURCE_LINE_DETAILS.sub(b"", body, count=1)


@dataclass(frozen=True)
class Exchange:
    """What a client sees of one answer, made comparable across servers."""

    status: int
    headers: Tuple[Tuple[str, Optional[str]], ...]
    body: bytes

    def __str__(self) -> str:
        headers = ", ".join("%s: %s" % item for item in self.headers if item[1] is not None)
        body = self.body if len(self.body) <= 400 else self.body[:400] + b"..."
        return "%d [%s] %r" % (self.status, headers, body)


def zip_listing(archive: bytes) -> bytes:
    """The names and CRCs of a zip's entries, one per line (zip bytes vary with the clock).

    A DICOMDIR has a fresh SOP Instance UID each time, so only its name is kept.
    """
    with zipfile.ZipFile(io.BytesIO(archive)) as content:
        return b"".join(b"%s %s\n" % (info.filename.encode("utf-8"),
                                      b"-" if info.filename.endswith("DICOMDIR")
                                      else b"%08x" % info.CRC)
                        for info in content.infolist())


def normalized_body(body: bytes, content_type: Optional[str]) -> bytes:
    """``body`` with what legitimately differs between two servers replaced by placeholders."""
    if body.startswith(_ZIP_MAGIC):
        return b"zip entries:\n" + zip_listing(body)
    if content_type is None or content_type.startswith("application/json"):
        return _JOB_ID.sub(b"<job>", _TIMESTAMP.sub(b"<timestamp>", body))
    return body


def exchange(response: requests.Response, replacements: Mapping[str, str]) -> Exchange:
    """The comparable view of ``response``; ``replacements`` rename server-specific strings."""

    def renamed(value: Optional[str]) -> Optional[str]:
        for old, new in replacements.items():
            value = value.replace(old, new) if value is not None else None
        return value

    headers = tuple((name, renamed(response.headers.get(name))) for name in COMPARED_HEADERS)
    content_type = response.headers.get("Content-Type")
    return Exchange(response.status_code, headers, normalized_body(response.content, content_type))


def attachment_names(server_get: Callable[[str], requests.Response],
                     instance_ids: Mapping[str, str]) -> Dict[str, str]:
    """Map each instance's DICOM attachment UUID (random per server) to a stable name.

    ``server_get(path)`` is the server's GET; ``instance_ids`` maps names to ids.
    """
    names = {}
    for name, instance_id in instance_ids.items():
        info = server_get("/instances/%s/attachments/dicom/info" % instance_id).json()
        names[info["Uuid"]] = "<attachment of %s>" % name
    return names


def sample_files(patient: str, seed: str, series: int, instances: int) -> List[bytes]:
    """A study of ``series`` x ``instances`` images, a 2-frame instance, an RGB one and a PDF
    one."""
    return make_study(patient, n_series=series, n_instances=instances, seed=seed) + [
        make_instance(patient, series_number=3, frames=2, seed=seed),
        make_instance(patient, series_number=4, rgb=True, seed=seed),
        make_pdf_instance(patient, seed=seed),
    ]


def upload_samples(server: OrthancServer, files: List[bytes]) -> Dict[str, str]:
    """Upload :func:`sample_files`; the ids by name (``study``, ``multiframe``, ``pdf``...)."""
    answers = [server.upload(dicom) for dicom in files]
    first, multiframe, rgb, pdf = answers[0], answers[-3], answers[-2], answers[-1]
    return {"patient": first["ParentPatient"], "study": first["ParentStudy"],
            "series": first["ParentSeries"], "instance": first["ID"],
            "multiframe": multiframe["ID"], "rgb": rgb["ID"], "pdf": pdf["ID"]}
