"""Unit tests of orthanc_cache_plugin.http.plain_answers against answers captured on Orthanc 1.10.1.

The literal bodies below were captured from a real Orthanc 1.10.1 (HttpDescribeErrors on)
by the fidelity probes (matrix.json and extra.json); they must be rebuilt byte for byte.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Union

import pytest

from orthanc_cache_plugin.core.data import Identity
from orthanc_cache_plugin.http.plain_answers import JSON_TYPE, PlainOrthanc, error_body
from support.request_factory import make_request

PATIENT = "15439993-236cb7c2-71e8ef31-2bc00cb7-e399a1ff"
STUDY = "0b7294d3-d929cfcb-5863043f-68932bc0-54939296"
MONO16 = "460c0b95-207e217b-6298cfb4-e3e6ad87-e1864068"
MONO16_2F = "26afa8f5-3af98abb-13ddfb85-7e92d91e-8d0950cc"
RGB8 = "5ec7fc08-baca06cc-5354e831-2d9e38cd-fd08918b"
PDF = "5f1ce75e-01ab0381-77e1f445-9d10c657-ac17d7a2"

# --- Captured error bodies (literal copies) --------------------------------------------------

CAPTURED_UNKNOWN_ARCHIVE = (
    '{\n\t"HttpError" : "Not Found",\n\t"HttpStatus" : 404,\n\t"Message" : "Unknown resource",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Unknown resource",\n\t"OrthancStatus" : 17,'
    '\n\t"Uri" : "/patients/nonexistent/archive"\n}\n')
# GET /patients/%C3%A9t%C3%A9/archive
CAPTURED_NON_ASCII = (
    '{\n\t"HttpError" : "Not Found",\n\t"HttpStatus" : 404,\n\t"Message" : "Unknown resource",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Unknown resource",\n\t"OrthancStatus" : 17,'
    '\n\t"Uri" : "/patients/\\u00e9t\\u00e9/archive"\n}\n')
# GET /instances/%F0%9F%98%80/tags
CAPTURED_EMOJI = (
    '{\n\t"HttpError" : "Not Found",\n\t"HttpStatus" : 404,\n\t"Message" : "Unknown resource",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Unknown resource",\n\t"OrthancStatus" : 17,'
    '\n\t"Uri" : "/instances/\\ud83d\\ude00/tags"\n}\n')
# GET /instances/a%7Fb/tags: DEL is sent raw
CAPTURED_DEL = (
    '{\n\t"HttpError" : "Not Found",\n\t"HttpStatus" : 404,\n\t"Message" : "Unknown resource",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Unknown resource",\n\t"OrthancStatus" : 17,'
    '\n\t"Uri" : "/instances/a\x7fb/tags"\n}\n')
# GET /instances/a%08b%0Cc%0Dd/tags
CAPTURED_CONTROL = (
    '{\n\t"HttpError" : "Not Found",\n\t"HttpStatus" : 404,\n\t"Message" : "Unknown resource",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Unknown resource",\n\t"OrthancStatus" : 17,'
    '\n\t"Uri" : "/instances/a\\bb\\fc\\rd/tags"\n}\n')
# GET /instances/a%22%27%3C%3E%26b/tags
CAPTURED_QUOTES = (
    '{\n\t"HttpError" : "Not Found",\n\t"HttpStatus" : 404,\n\t"Message" : "Unknown resource",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Unknown resource",\n\t"OrthancStatus" : 17,'
    '\n\t"Uri" : "/instances/a\\"\'<>&b/tags"\n}\n')
# GET /instances/{study id}/frames
CAPTURED_WRONG_LEVEL_FRAMES = (
    '{\n\t"Details" : "Unable to read attachment dicom of instance '
    '0b7294d3-d929cfcb-5863043f-68932bc0-54939296",\n\t"HttpError" : "Internal Server Error",'
    '\n\t"HttpStatus" : 500,\n\t"Message" : "Internal error",\n\t"Method" : "GET",'
    '\n\t"OrthancError" : "Internal error",\n\t"OrthancStatus" : -1,'
    '\n\t"Uri" : "/instances/0b7294d3-d929cfcb-5863043f-68932bc0-54939296/frames"\n}\n')
# GET /instances/{study id}/header
CAPTURED_WRONG_LEVEL_HEADER = (
    '{\n\t"Details" : "Unable to read the DICOM file of instance '
    '0b7294d3-d929cfcb-5863043f-68932bc0-54939296",\n\t"HttpError" : "Internal Server Error",'
    '\n\t"HttpStatus" : 500,\n\t"Message" : "Internal error",\n\t"Method" : "GET",'
    '\n\t"OrthancError" : "Internal error",\n\t"OrthancStatus" : -1,'
    '\n\t"Uri" : "/instances/0b7294d3-d929cfcb-5863043f-68932bc0-54939296/header"\n}\n')
# GET /instances/{mono16}/frames/x/numpy
CAPTURED_NUMPY_FRAME = (
    '{\n\t"Details" : "Expected an unsigned integer for the \\"frame\\" argument",'
    '\n\t"HttpError" : "Bad Request",\n\t"HttpStatus" : 400,'
    '\n\t"Message" : "Parameter out of range",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Parameter out of range",\n\t"OrthancStatus" : 3,'
    '\n\t"Uri" : "/instances/460c0b95-207e217b-6298cfb4-e3e6ad87-e1864068/frames/x/numpy"\n}\n')
# GET /instances/{mono16}/frames/1/raw (a single-frame instance)
CAPTURED_FRAME_OUT_OF_RANGE = (
    '{\n\t"HttpError" : "Bad Request",\n\t"HttpStatus" : 400,'
    '\n\t"Message" : "Parameter out of range",'
    '\n\t"Method" : "GET",\n\t"OrthancError" : "Parameter out of range",\n\t"OrthancStatus" : 3,'
    '\n\t"Uri" : "/instances/460c0b95-207e217b-6298cfb4-e3e6ad87-e1864068/frames/1/raw"\n}\n')
# GET /instances/{pdf}/frames/0/raw
CAPTURED_NOT_IMPLEMENTED = (
    '{\n\t"HttpError" : "Internal Server Error",\n\t"HttpStatus" : 500,'
    '\n\t"Message" : "Not implemented yet",\n\t"Method" : "GET",'
    '\n\t"OrthancError" : "Not implemented yet",\n\t"OrthancStatus" : 2,'
    '\n\t"Uri" : "/instances/5f1ce75e-01ab0381-77e1f445-9d10c657-ac17d7a2/frames/0/raw"\n}\n')
# GET /patients/{patient}/archive?transcode=nonsense
CAPTURED_TRANSCODE = (
    '{\n\t"Details" : "Unknown transfer syntax: nonsense",\n\t"HttpError" : "Bad Request",'
    '\n\t"HttpStatus" : 400,\n\t"Message" : "Parameter out of range",\n\t"Method" : "GET",'
    '\n\t"OrthancError" : "Parameter out of range",\n\t"OrthancStatus" : 3,'
    '\n\t"Uri" : "/patients/15439993-236cb7c2-71e8ef31-2bc00cb7-e399a1ff/archive"\n}\n')
# POST /studies/{study}/archive with an empty body
CAPTURED_POST = (
    '{\n\t"HttpError" : "Bad Request",\n\t"HttpStatus" : 400,\n\t"Message" : "Bad file format",'
    '\n\t"Method" : "POST",\n\t"OrthancError" : "Bad file format",\n\t"OrthancStatus" : 15,'
    '\n\t"Uri" : "/studies/0b7294d3-d929cfcb-5863043f-68932bc0-54939296/archive"\n}\n')


class FakeOrthanc:
    """``get(uri)``: the body of a 200, or the error code; 17 for anything not listed."""

    def __init__(self, answers: Optional[Dict[str, Union[bytes, int]]] = None) -> None:
        self.answers: Dict[str, Union[bytes, int]] = dict(answers or {})
        self.calls: List[str] = []

    def __call__(self, uri: str) -> Union[bytes, int]:
        self.calls.append(uri)
        return self.answers.get(uri, 17)


def answer(get: FakeOrthanc, uri: str, arguments=None, headers=None, describe_errors=True):
    reply = PlainOrthanc(get, describe_errors).answer(make_request(uri, arguments, headers),
                                                      "test")
    assert reply.reason
    return reply


def status_only(reply, status: int) -> None:
    assert reply.status == status
    assert reply.body == b""
    assert reply.content_type is None


# --- error_body, byte for byte ---------------------------------------------------------------

@pytest.mark.parametrize("code, uri, method, details, captured", [
    (17, "/patients/nonexistent/archive", "GET", None, CAPTURED_UNKNOWN_ARCHIVE),
    (17, "/patients/\u00e9t\u00e9/archive", "GET", None, CAPTURED_NON_ASCII),
    (17, "/instances/\U0001F600/tags", "GET", None, CAPTURED_EMOJI),
    (17, "/instances/a\x7fb/tags", "GET", None, CAPTURED_DEL),
    (17, "/instances/a\bb\fc\rd/tags", "GET", None, CAPTURED_CONTROL),
    (17, "/instances/a\"'<>&b/tags", "GET", None, CAPTURED_QUOTES),
    (-1, "/instances/%s/frames" % STUDY, "GET",
     "Unable to read attachment dicom of instance %s" % STUDY, CAPTURED_WRONG_LEVEL_FRAMES),
    (3, "/instances/%s/frames/x/numpy" % MONO16, "GET",
     'Expected an unsigned integer for the "frame" argument', CAPTURED_NUMPY_FRAME),
    (3, "/instances/%s/frames/1/raw" % MONO16, "GET", None, CAPTURED_FRAME_OUT_OF_RANGE),
    (2, "/instances/%s/frames/0/raw" % PDF, "GET", None, CAPTURED_NOT_IMPLEMENTED),
    (15, "/studies/%s/archive" % STUDY, "POST", None, CAPTURED_POST),
])
def test_error_body_is_byte_exact(code, uri, method, details, captured):
    body = error_body(code, uri, method, details)
    assert body == captured
    assert json.loads(body)["OrthancStatus"] == code


def test_error_body_other_codes():
    body = json.loads(error_body(8, "/x"))
    assert (body["HttpStatus"], body["HttpError"], body["Message"]) == (400, "Bad Request",
                                                                        "Bad request")
    body = json.loads(error_body(12, "/x"))
    assert (body["HttpStatus"], body["OrthancError"]) == (400, "Badly formatted URI")


# --- Failures rebuilt by PlainOrthanc.answer -------------------------------------------------

@pytest.mark.parametrize("uri, arguments, answers, status, captured", [
    ("/patients/nonexistent/archive", {}, {}, 404, CAPTURED_UNKNOWN_ARCHIVE),
    ("/patients/\u00e9t\u00e9/archive", {}, {}, 404, CAPTURED_NON_ASCII),
    ("/instances/\U0001F600/tags", {}, {}, 404, CAPTURED_EMOJI),
    ("/instances/%s/frames" % STUDY, {}, {"/instances/%s/frames" % STUDY: -1}, 500,
     CAPTURED_WRONG_LEVEL_FRAMES),
    ("/instances/%s/header" % STUDY, {}, {"/instances/%s/header" % STUDY: -1}, 500,
     CAPTURED_WRONG_LEVEL_HEADER),
    ("/instances/%s/frames/1/raw" % MONO16, {}, {"/instances/%s/frames/1/raw" % MONO16: 3}, 400,
     CAPTURED_FRAME_OUT_OF_RANGE),
    ("/instances/%s/frames/0/raw" % PDF, {}, {"/instances/%s/frames/0/raw" % PDF: 2}, 500,
     CAPTURED_NOT_IMPLEMENTED),
    ("/patients/%s/archive" % PATIENT, {"transcode": "nonsense"},
     {"/patients/%s/archive?transcode=nonsense" % PATIENT: 3}, 400, CAPTURED_TRANSCODE),
])
def test_answer_rebuilds_captured_errors(uri, arguments, answers, status, captured):
    reply = answer(FakeOrthanc(answers), uri, arguments)
    assert reply.status == status
    assert reply.body == captured.encode("utf-8")
    assert reply.content_type is None
    assert reply.outcome == "PASS"


def test_numpy_frame_refused_before_any_lookup():
    get = FakeOrthanc()
    reply = answer(get, "/instances/%s/frames/x/numpy" % MONO16)
    assert reply.status == 400
    assert reply.body == CAPTURED_NUMPY_FRAME.encode()
    assert get.calls == []
    # also for an unknown id (nonexistent/frames/x/numpy -> 400J3D)
    assert answer(FakeOrthanc(), "/instances/nonexistent/frames/x/numpy").status == 400


def test_describe_errors_off_gives_empty_bodies():
    for uri, answers, status in [
        ("/patients/nonexistent/archive", {}, 404),
        ("/instances/%s/frames" % STUDY, {"/instances/%s/frames" % STUDY: -1}, 500),
        ("/instances/%s/frames/x/numpy" % MONO16, {}, 400),
        ("/instances/%s/frames/1/raw" % MONO16, {"/instances/%s/frames/1/raw" % MONO16: 3}, 400),
    ]:
        reply = answer(FakeOrthanc(answers), uri, describe_errors=False)
        status_only(reply, status)


def test_error_method_and_describe_flag():
    request = make_request("/studies/%s/archive" % STUDY)
    reply = PlainOrthanc(FakeOrthanc(), True).error(request, 15, "POST")
    assert reply.status == 400 and reply.body == CAPTURED_POST.encode()
    silent = PlainOrthanc(FakeOrthanc(), False).error(request, 15, "POST")
    assert silent.status == 400 and silent.body == b""


def test_unknown_error_code_is_a_500():
    reply = PlainOrthanc(FakeOrthanc(), True).error(make_request("/instances/x/tags"), 9999)
    assert reply.status == 500
    assert json.loads(reply.body)["OrthancStatus"] == 9999


# --- pdf -------------------------------------------------------------------------------------

def test_pdf_on_an_instance_without_pdf_is_404_empty():
    get = FakeOrthanc({"/instances/%s" % MONO16: b"{}"})
    status_only(answer(get, "/instances/%s/pdf" % MONO16), 404)


def test_pdf_on_an_unknown_id_is_404_json():
    reply = answer(FakeOrthanc(), "/instances/nonexistent/pdf")
    assert reply.status == 404
    assert json.loads(reply.body)["OrthancStatus"] == 17
    assert json.loads(reply.body)["Uri"] == "/instances/nonexistent/pdf"


def test_pdf_on_another_level_is_500_with_details():
    uri = "/instances/%s/pdf" % STUDY
    reply = answer(FakeOrthanc({uri: -1}), uri)
    body = json.loads(reply.body)
    assert reply.status == 500
    assert body["Details"] == "Unable to read attachment dicom of instance %s" % STUDY


def test_pdf_document_is_served():
    uri = "/instances/%s/pdf" % PDF
    reply = answer(FakeOrthanc({uri: b"%PDF-1.4"}), uri)
    assert (reply.status, reply.content_type, reply.body) == (200, "application/pdf", b"%PDF-1.4")
    assert reply.headers == {}


# --- Frame numbers (frameparse.json) ---------------------------------------------------------

@pytest.mark.parametrize("frame, kind, expected", [
    ("x", "raw", 404), ("1a", "raw", 404), ("0.0", "raw", 404), ("1e0", "raw", 404),
    (" 1", "raw", 404), ("1 ", "raw", 404), ("4294967296", "raw", 404),
    ("x", "raw.gz", 404), ("x", "matlab", 404),
    ("-0", "numpy", 400), ("-1", "numpy", 400), ("-4294967295", "numpy", 400),
    ("1a", "numpy", 400), ("0.0", "numpy", 400), ("1e0", "numpy", 400),
    ("4294967296", "numpy", 400),
])
def test_frame_data_refusals(frame, kind, expected):
    get = FakeOrthanc()
    reply = answer(get, "/instances/%s/frames/%s/%s" % (MONO16, frame, kind))
    assert reply.status == expected
    assert get.calls == []  # decided before any lookup
    if expected == 404:
        assert reply.body == b""
    else:
        assert json.loads(reply.body)["Details"] == \
            'Expected an unsigned integer for the "frame" argument'


@pytest.mark.parametrize("frame, kind", [
    ("0", "raw"), ("+1", "raw"), ("-0", "raw"), ("00", "matlab"), ("-4294967295", "raw.gz"),
    ("+1", "numpy"), (" 1", "numpy"), ("1 ", "numpy"), ("\t1", "numpy"), ("+0", "numpy"),
])
def test_frame_data_accepted_frames_reach_orthanc(frame, kind):
    uri = "/instances/%s/frames/%s/%s" % (MONO16, frame, kind)
    get = FakeOrthanc({uri: b"DATA"})
    reply = answer(get, uri)
    assert reply.status == 200 and reply.body == b"DATA"


def test_frame_data_wrapped_frame_out_of_range():
    uri = "/instances/%s/frames/-1/raw" % MONO16   # wraps to 4294967295
    reply = answer(FakeOrthanc({uri: 3}), uri)
    assert reply.status == 400 and "Details" not in json.loads(reply.body)


# --- Content types and headers of 200 answers ------------------------------------------------

@pytest.mark.parametrize("syntax, expected", [
    (b"1.2.840.10008.1.2.4.50", "image/jpeg"),
    (b"1.2.840.10008.1.2.4.90", "image/jp2"),
    (b"1.2.840.10008.1.2.4.91", "image/jp2"),
    (b"1.2.840.10008.1.2.1", "application/octet-stream"),
    (b"1.2.840.10008.1.2.4.70", "application/octet-stream"),
    (17, "application/octet-stream"),
])
def test_raw_frame_content_type_follows_transfer_syntax(syntax, expected):
    uri = "/instances/%s/frames/0/raw" % MONO16
    get = FakeOrthanc({uri: b"FRAME",
                       "/instances/%s/metadata/TransferSyntax" % MONO16: syntax})
    reply = answer(get, uri)
    assert (reply.status, reply.content_type) == (200, expected)


@pytest.mark.parametrize("suffix, expected", [
    ("frames/0/raw.gz", "application/gzip"),
    ("frames/0/matlab", "text/plain"),
    ("frames/0/numpy", "application/octet-stream"),
    ("tags", JSON_TYPE), ("simplified-tags", JSON_TYPE), ("metadata", JSON_TYPE),
    ("header", JSON_TYPE), ("frames", JSON_TYPE),
])
def test_instance_content_types(suffix, expected):
    uri = "/instances/%s/%s" % (MONO16, suffix)
    reply = answer(FakeOrthanc({uri: b"X"}), uri)
    assert (reply.status, reply.content_type, reply.headers) == (200, expected, {})


@pytest.mark.parametrize("level", ["patients", "studies", "series"])
@pytest.mark.parametrize("route", ["archive", "media"])
def test_zip_answers_have_content_disposition(level, route):
    # any id is accepted there and named as written in the URL
    uri = "/%s/%s/%s" % (level, MONO16, route)
    reply = answer(FakeOrthanc({uri: b"PK\x03\x04"}), uri)
    assert reply.status == 200
    assert reply.content_type == "application/zip"
    assert reply.headers == {"Content-Disposition": 'filename="%s.zip"' % MONO16}


def test_query_is_forwarded_normalized():
    uri = "/studies/%s/shared-tags" % STUDY
    get = FakeOrthanc({uri + "?short=&simplify=": b"{}"})
    reply = answer(get, uri, {"simplify": "", "short": ""})
    assert reply.status == 200 and reply.content_type == JSON_TYPE
    assert get.calls == [uri + "?short=&simplify="]


def test_file_has_the_attachment_uuid():
    uri = "/instances/%s/file" % MONO16
    info = json.dumps({"Uuid": "3fe75e12-7b3e-44e6-986a-1d21959e42db", "UncompressedSize": 3806})
    get = FakeOrthanc({uri: b"DICM",
                       "/instances/%s/attachments/dicom/info" % MONO16: info.encode()})
    reply = answer(get, uri)
    assert (reply.status, reply.content_type) == (200, "application/dicom")
    assert reply.headers == {
        "Content-Disposition": 'filename="3fe75e12-7b3e-44e6-986a-1d21959e42db.dcm"'}


@pytest.mark.parametrize("api_version, uri, arguments, disposition", [
    # Orthanc 1.10.1: the attachment's UUID; no filename argument.
    (16, "/instances/%s/file" % MONO16, {}, "3fe75e12-7b3e-44e6-986a-1d21959e42db.dcm"),
    (16, "/instances/%s/file" % MONO16, {"filename": "x.dcm"},
     "3fe75e12-7b3e-44e6-986a-1d21959e42db.dcm"),
    (16, "/studies/%s/archive" % STUDY, {"filename": "x.zip"}, STUDY + ".zip"),
    # Orthanc 1.12.7: the instance id; the filename argument as it is.
    (27, "/instances/%s/file" % MONO16, {}, MONO16 + ".dcm"),
    (27, "/instances/%s/file" % MONO16, {"filename": 'a"b'}, 'a"b'),
    (27, "/studies/%s/media" % STUDY, {"filename": "y"}, "y"),
    # Orthanc 1.13.0: quotes and line breaks removed; an empty name sends no header.
    (31, "/instances/%s/file" % MONO16, {"filename": 'a"\r\nb;c'}, "ab;c"),
    (31, "/studies/%s/archive" % STUDY, {}, STUDY + ".zip"),
    (31, "/studies/%s/archive" % STUDY, {"filename": '"'}, None),
])
def test_content_disposition_follows_the_running_version(api_version, uri, arguments,
                                                         disposition):
    info = json.dumps({"Uuid": "3fe75e12-7b3e-44e6-986a-1d21959e42db"})
    get = FakeOrthanc({"/instances/%s/attachments/dicom/info" % MONO16: info.encode()})
    plain = PlainOrthanc(get, True, Identity(api_version=api_version))
    representation = "application/dicom" if uri.endswith("/file") else ""
    headers = plain.extra_headers(make_request(uri, arguments), representation)
    assert headers.get("Content-Disposition") == (
        None if disposition is None else 'filename="%s"' % disposition)


def test_file_with_dicomweb_accept_is_refused():
    uri = "/instances/%s/file" % MONO16
    reply = answer(FakeOrthanc({uri: b"DICM"}), uri, headers={"accept": "application/dicom+json"})
    status_only(reply, 406)


def test_file_of_another_level_is_404_json():
    reply = answer(FakeOrthanc(), "/instances/%s/file" % STUDY)
    assert reply.status == 404 and json.loads(reply.body)["OrthancStatus"] == 17


def test_content_type_of_image_representation():
    plain = PlainOrthanc(FakeOrthanc(), True)
    request = make_request("/instances/%s/preview" % MONO16)
    assert plain.content_type(request, "image/jpeg") == "image/jpeg"
    assert plain.extra_headers(request, "image/jpeg") == {}


# --- Image routes: order of Orthanc's checks (REPORT section 4, order.json) ------------------

def _mono16(extra: Optional[Dict[str, Union[bytes, int]]] = None) -> FakeOrthanc:
    answers: Dict[str, Union[bytes, int]] = {
        "/instances/%s" % MONO16: b"{}",
        "/instances/%s/frames" % MONO16: b"[0]",
        "/instances/%s/preview" % MONO16: b"PNG",
        "/instances/%s/frames/0/preview" % MONO16: b"PNG",
        "/instances/%s/frames/0/image-uint16" % MONO16: b"PNG",
        "/instances/%s/frames/0/image-int16" % MONO16: b"PNG",
        "/instances/%s/frames/0/rendered" % MONO16: b"PNG",
    }
    answers.update(extra or {})
    return FakeOrthanc(answers)


def test_image_unknown_id_is_404_empty():
    for arguments in ({}, {"returnUnsupportedImage": ""}, {"quality": "200"}):
        status_only(answer(FakeOrthanc(), "/instances/nonexistent/preview", arguments), 404)
        status_only(answer(FakeOrthanc(), "/instances/nonexistent/frames/0/preview", arguments),
                    404)


@pytest.mark.parametrize("level_uri", ["/studies/%s" % STUDY, "/patients/%s" % STUDY,
                                       "/series/%s" % STUDY])
def test_image_of_another_level_is_415(level_uri):
    get = FakeOrthanc({level_uri: b"{}"})
    status_only(answer(get, "/instances/%s/preview" % STUDY), 415)
    status_only(answer(get, "/instances/%s/frames/0/image-uint8" % STUDY), 415)


def test_image_of_another_level_redirects_with_return_unsupported_image():
    get = FakeOrthanc({"/studies/%s" % STUDY: b"{}"})
    for value in ("", "false", "0"):
        reply = answer(get, "/instances/%s/preview" % STUDY, {"returnUnsupportedImage": value})
        assert reply.status == 301 and reply.body == b""
        assert reply.headers == {"Location": "../../app/images/unsupported.png"}
    reply = answer(get, "/instances/%s/frames/0/preview" % STUDY, {"returnUnsupportedImage": ""})
    assert reply.headers == {"Location": "../../../../app/images/unsupported.png"}


def test_return_unsupported_image_is_case_sensitive():
    uri = "/instances/%s/frames/0/preview" % PDF
    get = FakeOrthanc({"/instances/%s" % PDF: b"{}", "/instances/%s/frames" % PDF: b"[0]"})
    status_only(answer(get, uri, {"returnunsupportedimage": ""}), 415)
    assert answer(get, uri, {"returnUnsupportedImage": ""}).status == 301


def test_image_of_a_pdf_is_415_before_quality_and_accept():
    get = FakeOrthanc({"/instances/%s" % PDF: b"{}", "/instances/%s/frames" % PDF: b"[0]"})
    status_only(answer(get, "/instances/%s/preview" % PDF, {"quality": "200"},
                       {"accept": "text/html"}), 415)


@pytest.mark.parametrize("frame", ["x", "1.0", "0x1", "1e0", " 1", "4294967296", "-4294967296"])
def test_image_frame_not_parsed_is_404_before_any_lookup(frame):
    get = FakeOrthanc()
    reply = answer(get, "/instances/nonexistent/frames/%s/preview" % frame,
                   {"returnUnsupportedImage": ""})
    status_only(reply, 404)
    assert get.calls == []


def test_image_frame_out_of_range_is_404():
    get = FakeOrthanc({"/instances/%s" % MONO16_2F: b"{}",
                       "/instances/%s/frames" % MONO16_2F: b"[0, 1]",
                       "/instances/%s/frames/0/preview" % MONO16_2F: b"PNG"})
    for frame in ("2", "5", "-1", "4294967295"):
        status_only(answer(get, "/instances/%s/frames/%s/preview" % (MONO16_2F, frame),
                           {"returnUnsupportedImage": ""}), 404)
    # a frame in range that cannot be decoded is a 415
    status_only(answer(get, "/instances/%s/frames/-4294967295/preview" % MONO16_2F), 415)


def test_a_non_image_instance_is_415_whatever_the_frame():
    """Orthanc decodes before it checks the frame number (a PDF has one frame)."""
    get = FakeOrthanc({"/instances/pdf": b"{}", "/instances/pdf/frames": b"[0]"})
    for frame in ("0", "1", "2"):
        status_only(answer(get, "/instances/pdf/frames/%s/preview" % frame), 415)


def test_image_bad_quality_is_415_even_when_jpeg_is_not_chosen():
    status_only(answer(_mono16(), "/instances/%s/preview" % MONO16, {"quality": "200"}), 415)
    status_only(answer(_mono16(), "/instances/%s/preview" % MONO16, {"quality": "0"},
                       {"accept": "image/png"}), 415)
    reply = answer(_mono16(), "/instances/%s/preview" % MONO16,
                   {"quality": "200", "returnUnsupportedImage": ""})
    assert reply.status == 301 and reply.headers["Location"] == "../../app/images/unsupported.png"


def test_image_quality_is_checked_before_accept():
    status_only(answer(_mono16(), "/instances/%s/preview" % MONO16, {"quality": "200"},
                       {"accept": "text/html"}), 415)


def test_image_accept_without_match_is_404():
    for accept in ("text/html", "", "image/gif", "IMAGE/PNG"):
        status_only(answer(_mono16(), "/instances/%s/preview" % MONO16,
                           {"returnUnsupportedImage": ""}, {"accept": accept}), 404)


def test_image_accept_with_bad_q_is_415_or_redirect():
    status_only(answer(_mono16(), "/instances/%s/preview" % MONO16, {},
                       {"accept": "image/jpeg;q=5"}), 415)
    reply = answer(_mono16(), "/instances/%s/frames/0/image-uint16" % MONO16,
                   {"returnUnsupportedImage": ""}, {"accept": "image/jpeg;q=5"})
    assert reply.status == 301
    assert reply.headers["Location"] == "../../../../app/images/unsupported.png"


@pytest.mark.parametrize("kind", ["image-uint16", "image-int16"])
def test_no_jpeg_of_16_bit_images(kind):
    for accept in ("image/jpeg", "image/jpeg;q=0.1, */*", "image/*;q=0.9, image/jpeg;q=0.1"):
        status_only(answer(_mono16(), "/instances/%s/frames/0/%s" % (MONO16, kind),
                           {"returnUnsupportedImage": ""}, {"accept": accept}), 404)


def test_rendered_arguments():
    uri = "/instances/%s/frames/0/rendered" % MONO16
    for arguments in ({"width": "x", "returnUnsupportedImage": ""}, {"window-width": "abc"},
                      {"width": "-5"}):
        status_only(answer(_mono16(), uri, arguments), 404)
    status_only(answer(_mono16(), uri, {"smooth": "maybe"}), 415)
    reply = answer(_mono16(), uri, {"smooth": "maybe", "returnUnsupportedImage": ""})
    assert reply.status == 301
    assert reply.headers["Location"] == "../../../../app/images/unsupported.png"


def test_rendered_valid_arguments_then_quality():
    uri = "/instances/%s/frames/0/rendered" % MONO16
    get = _mono16({uri + "?width=64": b"PNG"})
    # the rendering arguments are checked without "quality"
    status_only(answer(get, uri, {"width": "64", "quality": "0"}), 415)
    assert uri + "?width=64" in get.calls


@pytest.mark.parametrize("kind, accept", [("image-uint8", "text/html"),
                                          ("image-uint16", "image/jpeg")])
def test_rgb_source_on_integer_image_routes_checks_accept_first(kind, accept):
    get = FakeOrthanc({
        "/instances/%s" % RGB8: b"{}",
        "/instances/%s/frames" % RGB8: b"[0]",
        "/instances/%s/preview" % RGB8: b"PNG",
        "/instances/%s/frames/0/preview" % RGB8: b"PNG",
        "/instances/%s/frames/0/rendered" % RGB8: b"PNG",
    })
    reply = answer(get, "/instances/%s/frames/0/%s" % (RGB8, kind),
                   {"returnUnsupportedImage": ""}, {"accept": accept})
    status_only(reply, 404)


def test_rgb_source_on_integer_image_route_is_415():
    get = FakeOrthanc({"/instances/%s" % RGB8: b"{}", "/instances/%s/frames" % RGB8: b"[0]"})
    status_only(answer(get, "/instances/%s/frames/0/image-uint8" % RGB8), 415)


# --- Rules that changed after 1.10.1, selected by ApiVersion ---------------------------------
# Seen on Orthanc 1.10.1 (ApiVersion 16), 1.12.7 (27) and 1.13.0 (31).

def _versioned(api_version: int, uri: str, get: FakeOrthanc, arguments=None, headers=None):
    plain = PlainOrthanc(get, True, Identity(api_version=api_version))
    return plain.answer(make_request(uri, arguments, headers), "test")


def _other_level() -> FakeOrthanc:
    return FakeOrthanc({"/studies/%s" % STUDY: b"{}"})


def _two_frames() -> FakeOrthanc:
    return FakeOrthanc({"/instances/%s" % MONO16_2F: b"{}",
                        "/instances/%s/frames" % MONO16_2F: b"[0, 1]",
                        "/instances/%s/frames/0/preview" % MONO16_2F: b"PNG",
                        "/instances/%s/frames/1/preview" % MONO16_2F: b"PNG"})


_REDIRECT = object()


@pytest.mark.parametrize("api_version, uri, get, arguments, expected", [
    # An id of another level: 415 (or the redirect) on 1.10.1, an unknown instance from 1.12.7.
    (16, "/instances/%s/preview" % STUDY, _other_level, {}, 415),
    (16, "/instances/%s/preview" % STUDY, _other_level, {"returnUnsupportedImage": ""},
     _REDIRECT),
    (27, "/instances/%s/preview" % STUDY, _other_level, {}, 404),
    (31, "/instances/%s/preview" % STUDY, _other_level, {}, 404),
    (31, "/instances/%s/frames/1/rendered" % STUDY, _other_level,
     {"returnUnsupportedImage": ""}, 404),
    # A frame beyond the instance's: 404 on 1.10.1, 415 (or the redirect) from 1.12.7.
    (16, "/instances/%s/frames/2/preview" % MONO16_2F, _two_frames, {}, 404),
    (16, "/instances/%s/frames/2/preview" % MONO16_2F, _two_frames,
     {"returnUnsupportedImage": ""}, 404),
    (27, "/instances/%s/frames/2/preview" % MONO16_2F, _two_frames, {}, 415),
    (31, "/instances/%s/frames/-1/image-uint8" % MONO16_2F, _two_frames, {}, 415),
    (31, "/instances/%s/frames/9/preview" % MONO16_2F, _two_frames,
     {"returnUnsupportedImage": ""}, _REDIRECT),
    # An unparsed frame stays a 404 everywhere.
    (31, "/instances/%s/frames/x/preview" % MONO16_2F, _two_frames,
     {"returnUnsupportedImage": ""}, 404),
])
def test_image_failures_follow_the_running_version(api_version, uri, get, arguments, expected):
    reply = _versioned(api_version, uri, get(), arguments)
    if expected is _REDIRECT:
        assert reply.status == 301 and reply.headers["Location"].endswith(
            "app/images/unsupported.png")
    else:
        status_only(reply, expected)


@pytest.mark.parametrize("api_version, arguments, headers, expected", [
    # quality with white space around it (a "+" arrives as a space on 1.13.0)
    (16, {"quality": " 50"}, {}, 415),
    (27, {"quality": " 50"}, {}, 415),
    (31, {"quality": " 50"}, {}, "fetch"),
    (31, {"quality": "\t50\n"}, {}, "fetch"),
    (31, {"quality": "-4294967246"}, {}, 415),   # no wrap-around of a minus sign
    (16, {"quality": "-4294967246"}, {}, "fetch"),
    (31, {"quality": "5 0"}, {}, 415),
    # q out of range on a range that matches nothing: 415 on 1.10.1, no match from 1.12.7
    (16, {}, {"accept": "image/gif;q=2"}, 415),
    (27, {}, {"accept": "image/gif;q=2"}, 404),
    (31, {}, {"accept": "image/gif;q=2"}, 404),
    (31, {}, {"accept": "image/gif;q=2, image/png"}, "fetch"),
    (31, {}, {"accept": "image/jpeg;q=2, image/png"}, 415),
    # the last q of a range counts from 1.12.7 (the first on 1.10.1)
    (16, {}, {"accept": "image/jpeg;q=0.5;q=2"}, "fetch"),
    (31, {}, {"accept": "image/jpeg;q=0.5;q=2"}, 415),
    (31, {}, {"accept": "image/jpeg;q=x;q=0.5"}, "fetch"),
])
def test_image_arguments_follow_the_running_version(api_version, arguments, headers, expected):
    uri = "/instances/%s/preview" % MONO16
    get = _mono16()
    reply = _versioned(api_version, uri, get, arguments, headers)
    if expected == "fetch":  # accepted: every check of Orthanc's passes
        assert (reply.status, reply.reason) == (415, "image cannot be encoded")
    else:
        status_only(reply, expected)


@pytest.mark.parametrize("api_version, kind, code, status, details", [
    # An instance without pixel data: 1.13.0 explains it (1.12.7: a 500 without Details).
    (31, "raw", 8, 400, "Cannot extract a frame from a DICOM file that does not have pixel data."),
    (31, "raw.gz", 8, 400,
     "Cannot extract a frame from a DICOM file that does not have pixel data."),
    (27, "raw", 2, 500, None),
    (16, "raw", 2, 500, None),
    (31, "matlab", 2, 500, None),
])
def test_raw_frame_without_pixel_data_follows_the_running_version(api_version, kind, code,
                                                                  status, details):
    uri = "/instances/%s/frames/0/%s" % (PDF, kind)
    reply = _versioned(api_version, uri, FakeOrthanc({uri: code}))
    body = json.loads(reply.body)
    assert (reply.status, body["OrthancStatus"], body.get("Details")) == (status, code, details)
    assert reply.body.startswith(b'{\n\t"Details"' if details else b'{\n\t"HttpError"')


def test_unsupported_media_type_code_is_a_415_without_body():
    """From 1.12.8 (seen on 1.13.0) a plugin receives 3000 for Orthanc's bodiless 415."""
    uri = "/instances/%s/tags" % MONO16
    status_only(_versioned(31, uri, FakeOrthanc({uri: 3000})), 415)


@pytest.mark.parametrize("api_version, arguments, forwarded", [
    # 1.10.1 hands arguments percent-encoded: forwarded normalized
    (16, {"short": "", "x": "a b"}, "?short=&x=a%20b"),
    # 1.13.0 hands them decoded, and RestApiGet reads its query as it is
    (31, {"short": "", "x": "a b"}, "?short=&x=a b"),
    (31, {"quality": " 50", "z": "%41"}, "?quality= 50&z=%41"),
    (31, {"x": "a&b#c"}, "?x=a%26b%23c"),   # only the query's structure is escaped
    (31, {}, ""),
])
def test_forwarded_arguments_follow_the_running_version(api_version, arguments, forwarded):
    uri = "/instances/%s/tags" % MONO16
    plain = PlainOrthanc(FakeOrthanc(), True, Identity(api_version=api_version))
    assert plain.uri_with(uri, arguments) == uri + forwarded


@pytest.mark.parametrize("api_version, value, expected", [
    # 1.10.1: any value redirects; from 1.12.7 a Boolean, checked when the image is unsupported
    (16, "0", _REDIRECT),
    (16, "x", _REDIRECT),
    (27, "", _REDIRECT),
    (27, "true", _REDIRECT),
    (31, "1", _REDIRECT),
    (27, "false", 415),
    (31, "0", 415),
    (27, "x", 'Expected a Boolean for GET argument "returnUnsupportedImage", found: x'),
    (31, "TRUE", 'Expected a Boolean for GET argument "returnUnsupportedImage", found: TRUE'),
])
def test_return_unsupported_image_follows_the_running_version(api_version, value, expected):
    uri = "/instances/%s/preview" % PDF
    get = FakeOrthanc({"/instances/%s" % PDF: b"{}", "/instances/%s/frames" % PDF: b"[0]"})
    reply = _versioned(api_version, uri, get, {"returnUnsupportedImage": value})
    if expected is _REDIRECT:
        assert reply.status == 301 and reply.headers == {
            "Location": "../../app/images/unsupported.png"}
    elif isinstance(expected, int):
        status_only(reply, expected)
    else:
        assert reply.status == 400
        assert reply.body == error_body(3, uri, details=expected).encode()


def test_return_unsupported_image_is_not_read_for_an_unknown_instance():
    status_only(_versioned(31, "/instances/nonexistent/preview", FakeOrthanc(),
                           {"returnUnsupportedImage": "x"}), 404)


@pytest.mark.parametrize("api_version, route, arguments, details", [
    (27, "file", {"transcode": "x"}, "Unknown transfer syntax: x"),
    (31, "file", {"transcode": "=="}, "Unknown transfer syntax: =="),
    (16, "file", {"transcode": "x"}, None),
    (31, "metadata", {"expand": "=="}, 'Expected a Boolean for GET argument "expand", found: =='),
    (16, "metadata", {"expand": "x"}, None),
    (31, "metadata", {"expand": "true"}, None),
])
def test_argument_details_follow_the_running_version(api_version, route, arguments, details):
    uri = "/instances/%s/%s" % (MONO16, route)
    reply = _versioned(api_version, uri, FakeOrthanc({uri + "?" + "&".join(
        "%s=%s" % item for item in arguments.items()): 3}), arguments)
    assert reply.status == 400
    assert reply.body == error_body(3, uri, details=details).encode()


def test_an_unknown_requested_tag_is_named_as_orthanc_names_it():
    uri = "/studies/%s/series" % STUDY
    plain = PlainOrthanc(FakeOrthanc(), True)
    known = {"expand": "", "requestedTags": "PatientName"}
    listing = {"expand": "", "requestedTags": "PatientName;NoSuchTag;Other"}
    get = FakeOrthanc({plain.uri_with(uri, known): b"[]", plain.uri_with(uri, listing): 8,
                       plain.uri_with(uri, dict(known, requestedTags="NoSuchTag")): 8})
    reply = PlainOrthanc(get, True).answer(make_request(uri, listing), "test")
    body = json.loads(reply.body)
    assert (reply.status, body["OrthancStatus"]) == (400, 8)
    assert body["Details"] == "Invalid requested-tags argument: Unknown DICOM tag NoSuchTag"
    # Asked one tag at a time, up to the first refused.
    assert get.calls[1:] == [plain.uri_with(uri, known),
                             plain.uri_with(uri, dict(known, requestedTags="NoSuchTag"))]
    # Another bad request on another route is left without details.
    other = "/studies/%s/shared-tags" % STUDY
    reply = PlainOrthanc(FakeOrthanc({other: 8}), True).answer(
        make_request(other, {"requestedTags": "x"}), "test")
    assert "Details" not in json.loads(reply.body)
