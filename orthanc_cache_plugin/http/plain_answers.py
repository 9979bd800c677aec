"""What plain Orthanc answers, rebuilt from what a Python plugin can see.

Inside the plugin, ``orthanc.RestApiGet`` returns the body of a 200 and
nothing else: no content type, no Content-Disposition, and for a failure
only an error code, which is 17 ("Unknown resource") for every answer that
has no JSON body (404, 415, redirects) up to 1.12.7 (from 1.12.8, 3000 for a
415).  This module rebuilds the rest, rule by rule, as observed on Orthanc
1.10.1 (``docs/fidelity.md``), so that the plugin answers every request,
failures included, as Orthanc would; the rules seen to change on later
versions are selected by ``PlainOrthanc.api_version``.

It is pure: Orthanc is reached through a ``get(uri)`` callable that returns
the body, or the error code as an ``int``.
"""

from __future__ import annotations

import json
from typing import Callable, Dict, Mapping, Optional, Union

from ..core.data import UNKNOWN_IDENTITY, Identity, Outcome, Reply, Request
from ..core.keys import literal_query, with_query
from ..core.routes import Answer, Negotiation
from .negotiation import (
    BAD_ACCEPT,
    DICOM,
    JPEG,
    NotAcceptable,
    Unsupported,
    jpeg_quality,
    negotiate_image,
    parse_unsigned,
    representation_of,
)

Get = Callable[[str], Union[bytes, int]]

JSON_TYPE = "application/json; charset=utf-8"
_BINARY_TYPES = {
    "archive": "application/zip", "media": "application/zip", "pdf": "application/pdf",
    "matlab": "text/plain", "numpy": "application/octet-stream", "raw": "application/octet-stream",
    "raw.gz": "application/gzip",
}
#: Transfer syntaxes whose raw frames Orthanc labels with an image type.
_RAW_FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
}

# Content-Disposition of /file, /archive and /media, as seen on ApiVersion 16
# (Orthanc 1.10.1), 27 (1.12.7) and 31 (1.13.0); where it changed in between
# is taken from Orthanc's release notes.
#: From here, /file is named after the instance (before: its attachment's UUID)...
_FILE_NAMED_AFTER_INSTANCE = 27
#: ... and a ``filename`` GET argument names the download (Orthanc 1.12.7).
_FILENAME_ARGUMENT = 27
#: From here, quotes and line breaks are removed from it; an empty name sends none.
_FILENAME_SANITIZED = 30
_UNSAFE_IN_FILENAME = {ord('"'): None, ord("\r"): None, ord("\n"): None}

# Image routes, as seen on ApiVersion 16 (Orthanc 1.10.1), 27 (1.12.7) and 31 (1.13.0);
# 1.12.7's NEWS: "Fixed interpretation of returnUnsupportedImage in /preview route".
# The versions between 1.10.1 and 1.12.7 were not run: each rule starts where it was seen.
#: From here (seen on 1.12.7 and 1.13.0), an id of another level (a study's...) is an
#: unknown instance: 404, even with ``returnUnsupportedImage`` (1.10.1: 415, or the redirect)...
_OTHER_LEVEL_NOT_FOUND = 27
#: ... and a frame number beyond the instance's frames is an image that cannot be
#: decoded: 415, or the redirect with ``returnUnsupportedImage`` (1.10.1: 404).
_MISSING_FRAME_UNSUPPORTED = 27
#: From here (seen on 1.12.7 and 1.13.0), ``returnUnsupportedImage`` is a Boolean, read
#: when the image is unsupported: "false" or "0" is a 415, a value that is no Boolean a
#: 400 with Details (1.10.1: any value redirects).
_RETURN_UNSUPPORTED_BOOLEAN = 27
#: From here (seen on 1.12.7 and 1.13.0), a 400 "Parameter out of range" of ``/file``
#: with ``transcode``, and of ``/metadata`` with a non-Boolean ``expand``, has Details.
_ARGUMENT_DETAILS = 27
#: From here (seen on 1.13.0; 1.12.7 answers a 500 "Not implemented yet" without
#: Details), the raw frame of an instance without pixel data is a 400 with this Details.
_NO_PIXEL_DATA_DETAILS = 31
#: Only there (seen on 1.12.7; 1.10.1 and 1.13.0 give none), the 500 "Not implemented
#: yet" of a frame's ``matlab`` that cannot be decoded has Details.
_MATLAB_DECODE_DETAILS = range(27, 31)
NO_PIXEL_DATA = "Cannot extract a frame from a DICOM file that does not have pixel data."
#: From here (seen on 1.13.0; 1.10.1 and 1.12.7 hand them still percent-encoded), a
#: plugin receives GET arguments percent-decoded ("+" as a space), while ``RestApiGet``
#: still takes its query as it is: they are forwarded unescaped.
_ARGUMENTS_DECODED = 31

_HTTP_REASONS = {400: "Bad Request", 404: "Not Found", 415: "Unsupported Media Type",
                 500: "Internal Server Error"}
_BAD_REQUEST = 8
#: Orthanc error codes met on the cached routes: HTTP status and description.
_ORTHANC_ERRORS = {
    -1: (500, "Internal error"),
    2: (500, "Not implemented yet"),
    3: (400, "Parameter out of range"),
    # Raised by 1.10.1 for a list of children of an id of another level
    # (/patients/{instance}/studies...), which later versions answer 404.
    5: (400, "Bad type for a parameter"),
    # Raised for the archive of an unknown resource from 1.12.x (seen on 1.12.7).
    7: (404, "Accessing an inexistent item"),
    8: (400, "Bad request"),
    12: (400, "Badly formatted URI"),
    15: (400, "Bad file format"),
    17: (404, "Unknown resource"),
    # Raised to a plugin for Orthanc's 415 without body from 1.12.8 (seen on 1.13.0).
    3000: (415, "Unsupported media type"),
}
UNKNOWN_RESOURCE = 17
UNSUPPORTED_MEDIA_TYPE = 3000
#: What Orthanc's Boolean GET arguments accept.
_BOOLEANS = ("true", "false", "1", "0")
_PARAMETER_OUT_OF_RANGE = 3
_INEXISTENT_ITEM = 7
_NOT_IMPLEMENTED = 2
_INTERNAL_ERROR = -1


def _json_string(text: str) -> str:
    # jsoncpp escapes like json.dumps(ensure_ascii=True), but leaves DEL raw.
    return json.dumps(text, ensure_ascii=True).replace("\\u007f", "\x7f")


def error_body(code: int, uri: str, method: str = "GET", details: Optional[str] = None) -> str:
    """Orthanc's JSON error body, byte for byte (HttpDescribeErrors on)."""
    status, description = _ORTHANC_ERRORS.get(code, (500, "Internal error"))
    fields = [] if details is None else [("Details", _json_string(details))]
    fields += [
        ("HttpError", _json_string(_HTTP_REASONS.get(status, "Internal Server Error"))),
        ("HttpStatus", str(status)),
        ("Message", _json_string(description)),
        ("Method", _json_string(method)),
        ("OrthancError", _json_string(description)),
        ("OrthancStatus", str(code)),
        ("Uri", _json_string(uri)),
    ]
    return "{\n" + ",\n".join("\t%s : %s" % (_json_string(name), value)
                              for name, value in fields) + "\n}\n"


#: The ``Type`` Orthanc names each level with.
_LEVEL_TYPES = {"patients": "Patient", "studies": "Study", "series": "Series"}


def deletion_body(ancestor_level: str, ancestor_id: Optional[str]) -> bytes:
    """Orthanc's answer to a deletion, byte for byte: the ancestor that remains, if any
    (seen on 1.10.1 and 1.13.0; a plugin's ``RestApiDelete`` returns nothing)."""
    if ancestor_id is None:
        return b'{\n   "RemainingAncestor" : null\n}'
    return ('{\n   "RemainingAncestor" : \n   {\n      "ID" : %s,\n      "Path" : %s,\n'
            '      "Type" : %s\n   }\n}' % (
                _json_string(ancestor_id), _json_string("/%s/%s" % (ancestor_level, ancestor_id)),
                _json_string(_LEVEL_TYPES[ancestor_level]))).encode("utf-8")


def _not_boolean(arguments: Mapping[str, str], name: str) -> Optional[str]:
    """Orthanc's Details when GET argument ``name`` is given and is no Boolean."""
    value = arguments.get(name, "")
    if value and value not in _BOOLEANS:  # a bare argument is true
        return 'Expected a Boolean for GET argument "%s", found: %s' % (name, value)
    return None


def _status_only(status: int, reason: str, headers: Optional[Dict[str, str]] = None) -> Reply:
    return Reply(status, Outcome.PASS, reason, headers=headers or {})


class PlainOrthanc:
    """Answers a request exactly as Orthanc alone would, when the cache steps aside."""

    def __init__(self, get: Get, describe_errors: bool, identity: Identity = UNKNOWN_IDENTITY):
        self._get = get
        self._describe_errors = describe_errors
        #: The running Orthanc, whose ``ApiVersion`` selects the rules that changed
        #: between versions; replaced whole once Orthanc answers REST calls.
        self.identity = identity

    @property
    def api_version(self) -> int:
        return self.identity.api_version

    def uri_with(self, uri: str, arguments: Mapping[str, str]) -> str:
        """``uri`` with GET ``arguments`` (as the plugin received them), for ``RestApiGet``."""
        if self.api_version < _ARGUMENTS_DECODED:
            return with_query(uri, arguments)
        return uri + "?" + literal_query(arguments) if arguments else uri

    # Labels of successful answers -------------------------------------------------

    def content_type(self, request: Request, representation: str) -> str:
        """The Content-Type Orthanc gives a 200 of ``request``."""
        route = request.route
        if route.answer is Answer.JSON:
            return JSON_TYPE
        if representation:
            return representation
        kind = request.groups[-1] if route.name == "frame-data" else route.name
        if kind == "raw":
            syntax = self._get("/instances/%s/metadata/TransferSyntax" % request.resource_id)
            if isinstance(syntax, bytes):
                return _RAW_FRAME_TYPES.get(syntax.decode("ascii", "replace"),
                                            _BINARY_TYPES["raw"])
        return _BINARY_TYPES[kind]

    def extra_headers(self, request: Request, representation: str) -> Dict[str, str]:
        """Headers other than Content-Type that Orthanc adds to a 200 of ``request``."""
        name = request.route.name
        if name not in ("archive", "media") and not (name == "file" and representation == DICOM):
            return {}
        if self.api_version >= _FILENAME_ARGUMENT and "filename" in request.arguments:
            chosen = request.arguments["filename"]
            if self.api_version >= _FILENAME_SANITIZED:
                chosen = chosen.translate(_UNSAFE_IN_FILENAME)
                if not chosen:
                    return {}
            return {"Content-Disposition": 'filename="%s"' % chosen}
        if name != "file":
            return {"Content-Disposition": 'filename="%s.zip"' % request.resource_id}
        if self.api_version >= _FILE_NAMED_AFTER_INSTANCE:
            return {"Content-Disposition": 'filename="%s.dcm"' % request.resource_id}
        info = self._get("/instances/%s/attachments/dicom/info" % request.resource_id)
        if isinstance(info, bytes):
            return {"Content-Disposition": 'filename="%s.dcm"' % json.loads(info)["Uuid"]}
        return {}

    # Failures ---------------------------------------------------------------------

    def error(self, request: Request, code: int, method: str = "GET",
              details: Optional[str] = None) -> Reply:
        """Orthanc's answer to a request that raised the error ``code``."""
        if details is None:
            details = self._details(request, code)
        status = _ORTHANC_ERRORS.get(code, (500, ""))[0]
        body = error_body(code, request.uri, method, details) if self._describe_errors else ""
        return Reply(status, Outcome.PASS, "Orthanc error %d" % code, body=body.encode("utf-8"))

    def answer(self, request: Request, reason: str) -> Reply:
        """Orthanc's answer to ``request`` (a 200 only when the cache may not keep it)."""
        if request.route.negotiation is Negotiation.IMAGE:
            return self._image_failure(request)
        if request.route.name == "frame-data":
            refused = self._frame_data_refusal(request)
            if refused is not None:
                return refused
        result = self._get(self.uri_with(request.uri, request.arguments))
        if isinstance(result, bytes):
            try:
                representation = representation_of(request.route, request.headers,
                                                   self.api_version)
            except Unsupported as unsupported:
                return _status_only(406, str(unsupported))
            return Reply(200, Outcome.PASS, reason, self.content_type(request, representation),
                         result, self.extra_headers(request, representation))
        if result == UNSUPPORTED_MEDIA_TYPE:  # Orthanc's 415 has no body
            return _status_only(415, "unsupported media type")
        if result != UNKNOWN_RESOURCE:
            return self.error(request, result)
        if request.route.name == "study":  # a resource route: Orthanc answers nothing
            return _status_only(404, "unknown study")
        if request.route.name == "pdf" and isinstance(
                self._get("/instances/%s" % request.resource_id), bytes):
            return _status_only(404, "instance holds no PDF")
        return self.error(request, UNKNOWN_RESOURCE)

    def _frame_data_refusal(self, request: Request) -> Optional[Reply]:
        """Orthanc's checks of the arguments, before it looks the instance up."""
        frame, kind = request.groups[1], request.groups[2]
        if kind != "numpy":
            return _status_only(404, "frame number not parsed") \
                if parse_unsigned(frame) is None else None
        details = _not_boolean(request.arguments, "compress")  # checked first
        if details is not None:
            return self.error(request, _PARAMETER_OUT_OF_RANGE, details=details)
        if parse_unsigned(frame.strip()) is None or frame.strip().startswith("-"):
            return self.error(request, _PARAMETER_OUT_OF_RANGE,
                              details='Expected an unsigned integer for the "frame" argument')
        return None

    def _details(self, request: Request, code: int) -> Optional[str]:
        if code == _INTERNAL_ERROR and request.route.level.value == "instances":
            if request.route.name == "header":
                return "Unable to read the DICOM file of instance %s" % request.resource_id
            return "Unable to read attachment dicom of instance %s" % request.resource_id
        if code == _INEXISTENT_ITEM and request.route.name in ("archive", "media"):
            return "Missing resource while creating an archive: %s" % request.resource_id
        if code == _PARAMETER_OUT_OF_RANGE and request.route.name in ("archive", "media") \
                and "transcode" in request.arguments:
            return "Unknown transfer syntax: %s" % request.arguments["transcode"]
        if code == _PARAMETER_OUT_OF_RANGE and self.api_version >= _ARGUMENT_DETAILS:
            if request.route.name == "file" and "transcode" in request.arguments:
                return "Unknown transfer syntax: %s" % request.arguments["transcode"]
            if request.route.name == "metadata":
                return _not_boolean(request.arguments, "expand")
        if code == _NOT_IMPLEMENTED and self.api_version in _MATLAB_DECODE_DETAILS \
                and request.route.name == "frame-data" and request.groups[2] == "matlab":
            return "Cannot decode DICOM instance with ID: %s" % request.resource_id
        if code == _BAD_REQUEST and self.api_version >= _NO_PIXEL_DATA_DETAILS \
                and request.route.name == "frame-data" and request.groups[2] in ("raw", "raw.gz"):
            return NO_PIXEL_DATA
        if code == _BAD_REQUEST and request.route.file_arguments \
                and "requestedTags" in request.arguments:
            return self._unknown_requested_tag(request)
        return None

    def _unknown_requested_tag(self, request: Request) -> Optional[str]:
        """Orthanc names the first tag of ``requestedTags`` it does not know: asked one
        tag at a time (only when it refused the list, so it costs nothing on success)."""
        others = {name: value for name, value in request.arguments.items()
                  if name != "requestedTags"}
        for tag in request.arguments["requestedTags"].split(";"):
            alone = self._get(self.uri_with(request.uri, dict(others, requestedTags=tag)))
            if alone == _BAD_REQUEST:
                return "Invalid requested-tags argument: Unknown DICOM tag " + tag
        return None

    def _unsupported_image(self, request: Request, reason: str) -> Reply:
        # Orthanc redirects to its "unsupported" picture when asked to.
        if "returnUnsupportedImage" in request.arguments:
            if self.api_version >= _RETURN_UNSUPPORTED_BOOLEAN:
                details = _not_boolean(request.arguments, "returnUnsupportedImage")
                if details is not None:
                    return self.error(request, _PARAMETER_OUT_OF_RANGE, details=details)
                if request.arguments["returnUnsupportedImage"] in ("false", "0"):
                    return _status_only(415, reason)
            depth = request.uri.strip("/").count("/")
            location = "../" * depth + "app/images/unsupported.png"
            return _status_only(301, reason, {"Location": location})
        return _status_only(415, reason)

    def _image_failure(self, request: Request) -> Reply:
        """Replay Orthanc's checks of image routes in its order; the first failing decides."""
        is_frame = request.route.name == "frame-image"
        frame = parse_unsigned(request.groups[1]) if is_frame else 0
        if frame is None:
            return _status_only(404, "frame number not parsed")
        instance = "/instances/%s" % request.resource_id
        if not isinstance(self._get(request.uri), bytes):
            if not isinstance(self._get(instance), bytes):
                if self.api_version >= _OTHER_LEVEL_NOT_FOUND:
                    return _status_only(404, "unknown instance")
                other_level = any(isinstance(self._get("/%s/%s" % (level, request.resource_id)),
                                             bytes)
                                  for level in ("patients", "studies", "series"))
                return self._unsupported_image(request, "not an instance") if other_level \
                    else _status_only(404, "unknown instance")
            # Orthanc decodes before it checks the frame number.
            if not isinstance(self._get(instance + "/frames/0/preview"), bytes):
                return self._unsupported_image(request, "image cannot be decoded")
            frames = self._get(instance + "/frames")
            if isinstance(frames, bytes) and frame >= len(json.loads(frames)):
                if self.api_version >= _MISSING_FRAME_UNSUPPORTED:
                    return self._unsupported_image(request, "no such frame")
                return _status_only(404, "no such frame")
            if not isinstance(self._get("%s/frames/%d/preview" % (instance, frame)), bytes):
                return self._unsupported_image(request, "image cannot be decoded")
            # Decodable, yet this route failed: an RGB image on image-uint8/16 or
            # image-int16, which Orthanc refuses only after the checks below.
        kind = request.groups[2] if is_frame else request.route.name
        if kind == "rendered":
            # Orthanc checks the size and window arguments, then smooth, then quality.
            sizing = {k: v for k, v in request.arguments.items()
                      if k not in ("quality", "smooth", "returnUnsupportedImage")}
            if not isinstance(self._get(self.uri_with(request.uri, sizing)), bytes):
                return _status_only(404, "bad rendering argument")
            if request.arguments.get("smooth", "true") not in _BOOLEANS:
                return self._unsupported_image(request, "bad smooth argument")
        if jpeg_quality(request.arguments, self.api_version) is None:
            return self._unsupported_image(request, "bad quality argument")
        try:
            chosen = negotiate_image(request.headers.get("accept"), self.api_version)
        except NotAcceptable as refusal:
            if refusal.status == BAD_ACCEPT:
                return self._unsupported_image(request, str(refusal))
            return _status_only(404, str(refusal))
        if chosen == JPEG and kind in ("image-uint16", "image-int16"):
            return _status_only(404, "no JPEG of 16-bit images")
        return self._unsupported_image(request, "image cannot be encoded")

