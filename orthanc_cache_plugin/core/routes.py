"""The cached routes, as data: one table, read by registration, keys and warm-up.

Each :class:`Route` says which URIs it covers, which resource it belongs to
(whose state versions its answers), what kind of answer it gives, and which
request header, if any, changes that answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Dict, Mapping, Optional, Tuple


class Level(Enum):
    """A level of Orthanc's resource tree, named as in its REST API."""

    PATIENT = "patients"
    STUDY = "studies"
    SERIES = "series"
    INSTANCE = "instances"

    @property
    def version_metadata(self) -> str:
        """The metadata that Orthanc updates when something is stored below the resource."""
        return "ReceptionDate" if self is Level.INSTANCE else "LastUpdate"


class Answer(Enum):
    """What kind of body a route answers; JSON is always stored server-side."""

    JSON = "json"
    BINARY = "binary"


class Negotiation(Enum):
    """Which request header selects the representation of a route."""

    NONE = "none"
    IMAGE = "image"            # Accept: image/png (default), image/jpeg, PAM
    DICOM_FILE = "dicom-file"  # Accept: application/dicom (default) or application/dicom+json
    DICOMWEB_JSON = "dicomweb-json"  # Accept: DICOM JSON only; other values are DICOMweb's


@dataclass(frozen=True)
class Route:
    """One cached route, e.g. ``/studies/{id}/shared-tags``.

    ``suffix`` is a regular expression for what follows ``/{level}/{id}``;
    its groups (a frame number, an image kind) are passed to Orthanc unchanged.
    ``warm_variants`` are the query strings computed at warm-up; empty when
    the route is not warmed.
    ``other_methods`` are the methods besides GET that Orthanc accepts there;
    the plugin forwards them untouched.
    ``file_arguments`` (names compared without case) mark a route whose answer
    Orthanc takes from its index alone unless the request has one of them
    (``requestedTags`` outside the main DICOM tags makes it read files).  Such
    an answer shows what no version follows (``IsStable``, labels): without
    those arguments it is computed by Orthanc and validated by its content;
    with them, Orthanc's index answer without them is read at each request
    and its digest is part of the version (docs/freshness.md).
    ``from_index`` marks a route that Orthanc always answers from its index
    (a patient's, study's or series' attachments): computed by Orthanc and
    validated by its content, never stored, so that nothing needs to follow
    what it shows (the DICOMweb plugin rewrites a series' attachment 4301
    whenever the series becomes stable).
    ``dicomweb`` marks a route of :data:`DICOMWEB_ROUTES`: its groups are DICOM
    UIDs, not Orthanc ids, and its answer is the DICOMweb plugin's.
    ``uid_argument`` names the GET argument that holds the study's UID, for a
    route whose path has no id (a QIDO search restricted to one study).
    """

    name: str
    level: Level
    suffix: str
    answer: Answer
    negotiation: Negotiation = Negotiation.NONE
    warm_variants: Tuple[str, ...] = ()
    other_methods: Tuple[str, ...] = ()
    file_arguments: Tuple[str, ...] = ()
    from_index: bool = False
    dicomweb: bool = False
    uid_argument: str = ""

    @property
    def index_answers(self) -> bool:
        """Whether some answers of the route come from Orthanc's index alone (validated
        by content: a Last-Modified cannot tell them apart)."""
        return self.from_index or bool(self.file_arguments)

    @property
    def pattern(self) -> str:
        """The regular expression registered with Orthanc."""
        if self.uid_argument:
            return "/%s%s" % (self.level.value, self.suffix)
        return "/%s/([^/?]+)%s" % (self.level.value, self.suffix)

    @property
    def vary(self) -> Tuple[str, ...]:
        """Request headers that select the representation (for the Vary header)."""
        return () if self.negotiation is Negotiation.NONE else ("Accept",)


_TAG_VARIANTS = ("", "short", "simplify")
_PARENT_LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES)


def _parent_routes(level: Level) -> Tuple[Route, ...]:
    return (
        Route("archive", level, "/archive", Answer.BINARY, other_methods=("POST",)),
        Route("attachments", level, "/attachments", Answer.JSON, from_index=True),
        Route("instances-tags", level, "/instances-tags", Answer.JSON, warm_variants=_TAG_VARIANTS),
        Route("media", level, "/media", Answer.BINARY, other_methods=("POST",)),
        Route("shared-tags", level, "/shared-tags", Answer.JSON, warm_variants=_TAG_VARIANTS),
    )


#: The lists of children that Orthanc Explorer 2 reads (its ``src/orthancApi.js``), and
#: its study: arguments such as ``expand`` and ``requestedTags`` go to Orthanc as given.
_REQUESTED_TAGS = ("requestedtags",)
_CHILD_LISTS = (
    Route("studies", Level.PATIENT, "/studies", Answer.JSON, file_arguments=_REQUESTED_TAGS),
    Route("series", Level.STUDY, "/series", Answer.JSON, file_arguments=_REQUESTED_TAGS),
    Route("instances", Level.STUDY, "/instances", Answer.JSON, file_arguments=_REQUESTED_TAGS),
    Route("instances", Level.SERIES, "/instances", Answer.JSON, file_arguments=_REQUESTED_TAGS),
    # Its study page (``getStudy``): the study with requestedTags.  Orthanc deletes a study
    # there too: the plugin forwards the DELETE (host.adapter.OrthancOrigin.forward).
    Route("study", Level.STUDY, "", Answer.JSON, other_methods=("DELETE",),
          file_arguments=_REQUESTED_TAGS),
)

_INSTANCE = Level.INSTANCE
_IMAGE_KINDS = "preview|image-uint8|image-uint16|image-int16|rendered"
_FRAME_DATA_KINDS = r"matlab|raw|raw\.gz|numpy"

#: Every cached route; the patterns do not overlap.  ``/instances/{id}/raw``,
#: listed by the original specification, is not an Orthanc route (raw frames
#: are ``frames/{n}/raw``), so it is left to Orthanc.
ROUTES: Tuple[Route, ...] = tuple(
    route for level in _PARENT_LEVELS for route in _parent_routes(level)
) + _CHILD_LISTS + (
    Route("file", _INSTANCE, "/file", Answer.BINARY, Negotiation.DICOM_FILE),
    Route("frames", _INSTANCE, "/frames", Answer.JSON),
    Route("frame-image", _INSTANCE, "/frames/([^/?]+)/(%s)" % _IMAGE_KINDS, Answer.BINARY,
          Negotiation.IMAGE),
    Route("frame-data", _INSTANCE, "/frames/([^/?]+)/(%s)" % _FRAME_DATA_KINDS, Answer.BINARY),
    Route("header", _INSTANCE, "/header", Answer.JSON),
    Route("metadata", _INSTANCE, "/metadata", Answer.JSON),
    Route("pdf", _INSTANCE, "/pdf", Answer.BINARY),
    Route("preview", _INSTANCE, "/preview", Answer.BINARY, Negotiation.IMAGE),
    Route("simplified-tags", _INSTANCE, "/simplified-tags", Answer.JSON),
    Route("tags", _INSTANCE, "/tags", Answer.JSON),
)


#: The DICOMweb answers cached (docs/dicomweb.md): WADO-RS metadata of a study and of a
#: series, and the QIDO lists of one study (its own search by StudyInstanceUID included),
#: as OHIF and the Stone Web Viewer read them.
#: The plugin serves them below :func:`dicomweb_root` (a reverse proxy sends it those
#: GETs); each is the DICOMweb plugin's answer to the same path below its own ``Root``,
#: versioned by the study that its StudyInstanceUID names.
def _dicomweb(name: str, suffix: str, uid_argument: str = "") -> Route:
    return Route(name, Level.STUDY, suffix, Answer.JSON, Negotiation.DICOMWEB_JSON,
                 dicomweb=True, uid_argument=uid_argument)


DICOMWEB_ROUTES: Tuple[Route, ...] = (
    _dicomweb("dicomweb-study-search", "", uid_argument="StudyInstanceUID"),
    _dicomweb("dicomweb-study-metadata", "/metadata"),
    _dicomweb("dicomweb-series", "/series"),
    _dicomweb("dicomweb-series-metadata", "/series/([^/?]+)/metadata"),
    _dicomweb("dicomweb-instances", "/series/([^/?]+)/instances"),
)


def dicomweb_root(admin_prefix: str) -> str:
    """Where the plugin serves :data:`DICOMWEB_ROUTES`: ``{AdminPrefix}/dicom-web/``."""
    return admin_prefix.rstrip("/") + "/dicom-web/"


def index_arguments(route: Route, arguments: Mapping[str, str]) -> Optional[Dict[str, str]]:
    """The arguments of Orthanc's index answer that validates a request with file
    arguments (``arguments`` without them); None when it has none of them."""
    kept = {name: value for name, value in arguments.items()
            if name.lower() not in route.file_arguments}
    return kept if len(kept) < len(arguments) else None


def answered_from_index(route: Route, arguments: Mapping[str, str]) -> bool:
    """Whether Orthanc answers this request of ``route`` from its index alone."""
    return route.from_index or (bool(route.file_arguments)
                                and index_arguments(route, arguments) is None)


def routes_of(level: Level) -> Tuple[Route, ...]:
    """The routes of one level, in table order."""
    return tuple(route for route in ROUTES if route.level is level)


def match(uri: str) -> Optional[Tuple[Route, Tuple[str, ...]]]:
    """The route covering ``uri`` and its groups (resource id first), if any."""
    for route in ROUTES:
        found = re.fullmatch(route.pattern, uri)
        if found:
            return route, found.groups()
    return None
