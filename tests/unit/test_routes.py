"""Unit tests of orthanc_cache_plugin.core.routes: the table of cached routes."""

from __future__ import annotations

import re

import pytest

from orthanc_cache_plugin.core.routes import (
    DICOMWEB_ROUTES,
    ROUTES,
    Answer,
    Level,
    Negotiation,
    answered_from_index,
    dicomweb_root,
    index_arguments,
    match,
    routes_of,
)

PARENT_ROUTES = ("archive", "attachments", "instances-tags", "media", "shared-tags")
PARENT_LEVELS = ("patients", "studies", "series")
FRAME_KINDS = ("preview", "image-uint8", "image-uint16", "image-int16", "rendered",
               "matlab", "raw", "raw.gz", "numpy")
INSTANCE_ROUTES = ("file", "frames", "metadata", "preview", "simplified-tags", "tags", "header",
                   "pdf")

#: The lists of children Orthanc Explorer 2 reads: (level, name).
CHILD_LISTS = (("patients", "studies"), ("studies", "series"), ("studies", "instances"),
               ("series", "instances"))
#: Orthanc Explorer 2's reads: the child lists and the study (``getStudy``).
OE2_READS = CHILD_LISTS + (("studies", "study"),)

#: Every URI shape of the specification's list, with the route name and groups expected.
SAMPLES = (
    [("/%s/abc/%s" % (level, name), name, ("abc",)) for level, name in CHILD_LISTS] +
    [("/studies/abc", "study", ("abc",))] +
    [("/%s/abc/%s" % (level, name), name, ("abc",))
     for level in PARENT_LEVELS for name in PARENT_ROUTES]
    + [("/instances/abc/%s" % name, name, ("abc",)) for name in INSTANCE_ROUTES]
    + [("/instances/abc/frames/7/%s" % kind,
        "frame-image" if kind in FRAME_KINDS[:5] else "frame-data", ("abc", "7", kind))
       for kind in FRAME_KINDS]
)

#: URIs that are not cached: Orthanc answers them alone.
NOT_CACHED = [
    "/instances/abc/raw",                 # not an Orthanc 1.10 route (REPORT R3)
    "/instances/abc/rendered",            # instance-level images other than preview
    "/instances/abc/image-uint8",
    "/instances/abc/matlab",
    "/instances/abc/numpy",
    "/instances/abc",
    "/instances/abc/",
    "/instances/abc/frames/",
    "/instances/abc/frames/0",
    "/instances/abc/frames/0/",
    "/instances/abc/frames/0/jpeg",
    "/instances/abc/frames/0/raw.gz.gz",
    "/instances/abc/frames/0/rawxgz",     # the dot of raw.gz is literal
    "/instances/abc/frames/0/1/raw",
    "/instances/abc/archive",             # parent routes are not instance routes
    "/instances/abc/shared-tags",
    "/studies/abc/",
    "/studies/abc/tags",
    "/studies/abc/file",
    "/studies/abc/archive/",
    "/studies/abc/archive/x",
    "/studies/abc/def/archive",
    "/studies//archive",
    "/xstudies/abc/archive",
    "/studies/abc/archivex",
    "/studies/abc/shared-tags?short",
    "/patients/abc/instances",            # lists Orthanc Explorer 2 does not read
    "/patients/abc/series",
    "/series/abc/studies",
    "/studies/abc/studies",
    "/instances/abc/instances",
    "/studies/abc/series/",
    "/studies/abc/series/def",
    "/series/abc",                        # descriptions: DELETE cannot be forwarded
    "/system",
    "/tools/find",
    "",
]


def test_spec_routes_are_all_present():
    names = {(route.level.value, route.name) for route in ROUTES}
    for level in PARENT_LEVELS:
        for name in PARENT_ROUTES:
            assert (level, name) in names
    for name in INSTANCE_ROUTES + ("frame-image", "frame-data"):
        assert ("instances", name) in names
    for read in OE2_READS:
        assert read in names
    assert len(ROUTES) == 3 * 5 + 5 + 10


@pytest.mark.parametrize("uri, name, groups", SAMPLES)
def test_sample_matches_exactly_one_route(uri, name, groups):
    matching = [route for route in ROUTES if re.fullmatch(route.pattern, uri)]
    assert len(matching) == 1, (uri, [route.name for route in matching])
    route, found_groups = match(uri)
    assert route is matching[0]
    assert route.name == name
    assert found_groups == groups
    assert route.level.value == uri.split("/")[1]


@pytest.mark.parametrize("uri", NOT_CACHED)
def test_other_uris_match_no_route(uri):
    assert match(uri) is None
    assert not [route for route in ROUTES if re.fullmatch(route.pattern, uri)]


def test_every_route_has_a_sample():
    covered = {id(match(uri)[0]) for uri, _, _ in SAMPLES}
    assert covered == {id(route) for route in ROUTES}


def test_route_names_are_unique_per_level():
    keys = [(route.level, route.name) for route in ROUTES]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("route", ROUTES,
                         ids=lambda route: "%s-%s" % (route.level.value, route.name))
def test_pattern_is_registered_form(route):
    assert route.pattern.startswith("/%s/([^/?]+)" % route.level.value)
    assert route.pattern == "/%s/([^/?]+)%s" % (route.level.value, route.suffix)
    re.compile(route.pattern)


@pytest.mark.parametrize("uri", [
    "/studies/a b/shared-tags",           # ids are passed on as they come
    "/studies/%C3%A9/archive",
    "/studies/\u00e9t\u00e9/archive",
    "/instances/" + "x" * 3000 + "/tags",
])
def test_any_id_without_slash_is_captured(uri):
    route, groups = match(uri)
    assert groups[0] == uri.split("/")[2]


@pytest.mark.parametrize("uri", ["/instances/a?b/tags", "/instances/a/frames/0?/preview"])
def test_a_question_mark_in_a_segment_is_left_to_orthanc(uri):
    """Internal calls would read it as the start of a query string."""
    assert match(uri) is None


@pytest.mark.parametrize("frame", ["0", "-1", "x", "+1", " 1", "4294967296", "1.0"])
def test_any_frame_segment_is_captured_unparsed(frame):
    _, groups = match("/instances/abc/frames/%s/raw" % frame)
    assert groups == ("abc", frame, "raw")


def test_answer_kinds():
    binary = {(route.level.value, route.name) for route in ROUTES if route.answer is Answer.BINARY}
    assert binary == {(level, name) for level in PARENT_LEVELS for name in ("archive", "media")} | {
        ("instances", name) for name in ("file", "frame-image", "frame-data", "pdf", "preview")}


def test_negotiation_and_vary():
    for route in ROUTES:
        if route.name in ("preview", "frame-image"):
            assert route.negotiation is Negotiation.IMAGE
            assert route.vary == ("Accept",)
        elif route.name == "file":
            assert route.negotiation is Negotiation.DICOM_FILE
            assert route.vary == ("Accept",)
        else:
            assert route.negotiation is Negotiation.NONE, route.name
            assert route.vary == ()


def test_only_oe2_reads_have_file_arguments():
    for route in ROUTES:
        listed = (route.level.value, route.name) in OE2_READS
        assert route.file_arguments == (("requestedtags",) if listed else ()), route.name
        if listed:
            assert route.answer is Answer.JSON and not route.warm_variants


@pytest.mark.parametrize("arguments, expected", [
    ({}, None),
    ({"expand": ""}, None),
    ({"expand": "", "short": ""}, None),
    ({"requestedTags": "0008,0005"}, {}),
    ({"expanded": "", "requestedTags": "0008,0005;PatientComments"}, {"expanded": ""}),
    ({"RequestedTags": "x", "short": "1"}, {"short": "1"}),   # names without case
    ({"requestedtags": ""}, {}),
])
def test_index_arguments_drop_only_file_arguments(arguments, expected):
    route, _ = match("/studies/abc/instances")
    assert index_arguments(route, arguments) == expected


def test_other_methods():
    for route in ROUTES:
        expected = ("POST",) if route.name in ("archive", "media") else \
            ("DELETE",) if route.name == "study" else ()
        assert route.other_methods == expected, route.name


def test_warm_variants():
    for route in ROUTES:
        if route.level is Level.INSTANCE or route.name in ("archive", "media") \
                or route.index_answers:
            assert route.warm_variants == (), route.name
        else:
            assert route.name in ("instances-tags", "shared-tags")
            assert route.warm_variants == ("", "short", "simplify")
        # only JSON answers are warmed
        if route.warm_variants:
            assert route.answer is Answer.JSON


def test_routes_of():
    for level in Level:
        routes = routes_of(level)
        assert all(route.level is level for route in routes)
        assert list(routes) == [route for route in ROUTES if route.level is level]
    assert [route.name for route in routes_of(Level.STUDY)] == list(PARENT_ROUTES) + [
        "series", "instances", "study"]
    assert len(routes_of(Level.INSTANCE)) == 10


def test_version_metadata():
    assert Level.INSTANCE.version_metadata == "ReceptionDate"
    for level in (Level.PATIENT, Level.STUDY, Level.SERIES):
        assert level.version_metadata == "LastUpdate"


def test_answers_from_the_index():
    """A parent's attachments always, child lists without requestedTags (any case)."""
    attachments = match("/series/x/attachments")[0]
    assert attachments.from_index and attachments.index_answers
    assert answered_from_index(attachments, {}) and answered_from_index(attachments, {"full": ""})
    children = match("/studies/x/series")[0]
    assert not children.from_index and children.index_answers
    assert answered_from_index(children, {"expand": ""})
    assert not answered_from_index(children, {"RequestedTags": "0008,0020"})
    for uri in ("/studies/x/shared-tags", "/instances/x/tags", "/series/x/archive"):
        route = match(uri)[0]
        assert not route.index_answers and not answered_from_index(route, {}), uri


def test_dicomweb_routes_name_dicomwebs_paths_below_the_caches_root():
    root = dicomweb_root("/cache/")
    assert root == "/cache/dicom-web/"
    paths = {
        "studies/1.2/metadata": ("dicomweb-study-metadata", ("1.2",)),
        "studies/1.2/series": ("dicomweb-series", ("1.2",)),
        "studies/1.2/series/3.4/metadata": ("dicomweb-series-metadata", ("1.2", "3.4")),
        "studies/1.2/series/3.4/instances": ("dicomweb-instances", ("1.2", "3.4")),
    }
    for path, (name, groups) in paths.items():
        found = [(route.name, re.fullmatch(root.rstrip("/") + route.pattern, root + path))
                 for route in DICOMWEB_ROUTES]
        matched = [(route_name, m.groups()) for route_name, m in found if m]
        assert matched == [(name, groups)], path
        assert match("/" + path) is None or match("/" + path)[0] not in DICOMWEB_ROUTES
    for route in DICOMWEB_ROUTES:
        # Versioned by the study the UID names; JSON only; never among Orthanc's routes.
        assert route.dicomweb and route.level is Level.STUDY and route.answer is Answer.JSON
        assert route.negotiation is Negotiation.DICOMWEB_JSON and route.vary == ("Accept",)
        assert route not in ROUTES and not route.warm_variants and not route.other_methods
