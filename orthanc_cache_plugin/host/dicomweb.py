"""The DICOMweb plugin's answers, as the origin of the routes of ``DICOMWEB_ROUTES``.

A Python plugin cannot stand in front of the DICOMweb plugin's own routes
(docs/dicomweb.md: a callback there cannot reach DICOMweb, and asking its own
route again calls itself).  So the cache serves the same paths below a root of
its own, ``{AdminPrefix}/dicom-web/``, where a reverse proxy sends the viewers'
GETs of those routes (docs/deployment.md); each is the DICOMweb plugin's answer
to the same path below its ``Root``, asked with ``RestApiGetAfterPlugins`` (no
callback of the cache is there, so nothing loops), its URLs rewritten for the
client (:mod:`..http.dicomweb_urls`).

Whatever the cache does not answer itself (another ``Accept``, a UID that names
no single study, an error of the DICOMweb plugin, a base that JSON escapes, the
DICOMweb plugin absent) gets :data:`HANDED_BACK`, which the proxy turns into
the same request to the DICOMweb plugin: the client always gets DICOMweb's own
answer, errors included.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Mapping, Optional, Tuple, Union

from ..cache.controller import Origin
from ..core.data import Fetched, Outcome, Reply, Request, Version
from ..http.dicomweb_urls import DicomWebSite, client_base, rebase
from .api import get as _get, get_after_plugins as _get_after_plugins, post as _post

#: The status of a request the cache leaves to the DICOMweb plugin: "Not Acceptable
#: here", which the documented proxy configuration sends on to the DICOMweb plugin.
HANDED_BACK = 406
#: The type of the DICOMweb plugin's JSON answers (metadata and QIDO alike).
DICOM_JSON_TYPE = "application/dicom+json"
#: A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
_UID = re.compile(r"[0-9.]{1,64}")
#: The version named by a development build of the DICOMweb plugin ("mainline").
_LATEST = (999, 0)
#: From this version the DICOMweb plugin keeps each series' metadata in attachment 4301.
METADATA_CACHE_SINCE = (1, 15)
#: The routes it answers from that copy.
_FROM_DICOMWEBS_CACHE = ("dicomweb-study-metadata", "dicomweb-series-metadata")


Versions = Callable[[Request, datetime], Optional[Version]]
UriWith = Callable[[str, Mapping[str, str]], str]


def _version(text: str) -> Tuple[int, ...]:
    numbers = re.match(r"(\d+)\.(\d+)", text)
    return (int(numbers.group(1)), int(numbers.group(2))) if numbers else _LATEST


def handed_back(reason: str) -> Reply:
    """The answer to a request the cache leaves to the DICOMweb plugin (see module doc)."""
    body = json.dumps({"Message": "not served by the cache plugin: ask the DICOMweb plugin",
                       "Reason": reason}, indent=1).encode("utf-8")
    return Reply(HANDED_BACK, Outcome.PASS, "left to the DICOMweb plugin: " + reason,
                 body=body)


class DicomWebOrigin:
    """The DICOMweb plugin, as the origin of the cached DICOMweb routes.

    ``versions`` are Orthanc's (the study a request resolves to), ``uri_with``
    puts GET arguments on a URI as the running Orthanc reads them.
    """

    def __init__(self, configuration: Mapping[str, Any], own_root: str, versions: Versions,
                 uri_with: UriWith):
        section = configuration.get("DicomWeb")
        self._section: Mapping[str, Any] = section if isinstance(section, dict) else {}
        #: Where the cache serves these routes (routes.dicomweb_root).
        self.own_root = own_root
        self._versions = versions
        self._uri_with = uri_with
        #: The DICOMweb plugin's settings and version, once Orthanc runs; None when
        #: nothing is cached (``note`` says why).
        self.site: Optional[DicomWebSite] = None
        self.note = "Orthanc has not started"
        self._learnt = False
        self._lock = threading.Lock()
        #: What decides access from the request's path (the authorization plugin, a
        #: filter): it would take a path below ``own_root`` for another route than
        #: DICOMweb's, so nothing is served there (set by the adapter, sharing.Access).
        self.access_by_path: Tuple[str, ...] = ()

    def learn(self) -> str:
        """Read what the DICOMweb plugin is (once Orthanc answers REST calls, once); what
        the cache does with DICOMweb, for the log."""
        if not self._learnt:
            with self._lock:
                if not self._learnt:
                    self.site, self.note = self._site()
                    self._learnt = True
        if self.site is not None and self.access_by_path:
            return ("DICOMweb is not cached: access is decided from the path, by %s, which "
                    "would not know %s for DICOMweb" % (" and ".join(self.access_by_path),
                                                        self.own_root))
        return self.note

    def _site(self) -> Tuple[Optional[DicomWebSite], str]:
        section = self._section
        if section.get("Enable", True) is not True:  # the plugin's default is true
            return None, "DICOMweb is not cached: DicomWeb.Enable is not true"
        described = _get("/plugins/dicom-web")
        if not isinstance(described, bytes):
            return None, ("DICOMweb is not cached: the DICOMweb plugin is not loaded; "
                          "%s answers %d to every request" % (self.own_root, HANDED_BACK))
        version = _version(str(json.loads(described).get("Version", "")))
        public_root = section.get("PublicRoot")
        site = DicomWebSite(version, str(section.get("Root", "/dicom-web/")),
                            public_root if isinstance(public_root, str) else None,
                            str(section.get("Host", "")), section.get("Ssl") is True)
        if site.served_root == self.own_root:
            # The cache's callbacks would shadow DICOMweb, and ask themselves: never.
            return None, ("DICOMweb is not cached: its Root is the cache's own %s"
                          % self.own_root)
        return site, ("DICOMweb %s answers are cached below %s (its own Root: %s); a "
                      "reverse proxy sends them the viewers' GETs (docs/deployment.md)"
                      % (".".join(map(str, version)), self.own_root, site.served_root))

    def resolve(self, request: Request) -> Union[Request, Reply]:
        """The request of the DICOMweb plugin's path that answers ``request`` (a path below
        :attr:`own_root`), keyed and versioned; or the reply that leaves it to DICOMweb."""
        site = self.site if self._learnt else None
        if site is None:
            return handed_back(self.note)
        if self.access_by_path:
            return handed_back("access is decided from the path, by %s"
                               % " and ".join(self.access_by_path))
        route = request.route
        uids = (request.arguments.get(route.uid_argument, ""),) + request.groups \
            if route.uid_argument else request.groups
        if not all(_UID.fullmatch(uid) for uid in uids):
            return handed_back("not a single UID")
        study_uid = uids[0]
        base = client_base(site, request.headers)
        if base is None:
            return handed_back("the base of its URLs has characters that JSON escapes")
        study = self._study_of(study_uid)
        if study is None:
            return handed_back("no single study has this StudyInstanceUID")
        path = site.served_root + request.uri[len(self.own_root):]
        if route.name in _FROM_DICOMWEBS_CACHE and site.version >= METADATA_CACHE_SINCE:
            # DICOMweb answers these from its own copy (attachment 4301), which it writes
            # again when the series becomes stable: after an instance is overwritten it
            # serves the old metadata until then, and the new one after, with no version
            # of ours moving in between.  So they are asked of DICOMweb at each request
            # and validated by their content, never stored (as Orthanc's index answers).
            route = replace(route, from_index=True)
        return Request(route, (study,) + uids[1:], path, request.arguments,
                       request.headers, "dicomweb %s %s" % (".".join(map(str, site.version)),
                                                            base))

    @staticmethod
    def _study_of(uid: str) -> Optional[str]:
        """The Orthanc study whose StudyInstanceUID is ``uid``; None unless exactly one."""
        found = _post("/tools/lookup", uid.encode("ascii"))
        if not isinstance(found, bytes):
            return None
        studies = [item.get("ID") for item in json.loads(found)
                   if isinstance(item, dict) and item.get("Type") == "Study"]
        return studies[0] if len(studies) == 1 and isinstance(studies[0], str) else None

    # The Origin protocol (cache.controller) ------------------------------------------

    def version(self, request: Request, now: datetime) -> Optional[Version]:
        return self._versions(request, now)

    def fetch(self, request: Request, query: str, representation: str) -> Optional[Fetched]:
        site = self.site
        client = client_base(site, request.headers) if site is not None else None
        if site is None or client is None:
            return None
        body = _get_after_plugins(self._uri_with(request.uri, request.arguments))
        if not isinstance(body, bytes):
            return None
        rebased = rebase(body, site.internal_base(), client)
        return Fetched(DICOM_JSON_TYPE, rebased) if rebased is not None else None

    def plain_answer(self, request: Request, reason: str) -> Reply:
        return handed_back(reason)

    def index_digest(self, request: Request) -> Optional[str]:
        return None  # no DICOMweb route has file arguments


class Origins:
    """Orthanc for its routes, the DICOMweb plugin for the DICOMweb routes: one origin."""

    def __init__(self, orthanc: Origin, dicomweb: DicomWebOrigin):
        self.orthanc = orthanc
        self.dicomweb = dicomweb

    def _of(self, request: Request) -> Origin:
        return self.dicomweb if request.route.dicomweb else self.orthanc

    def version(self, request: Request, now: datetime) -> Optional[Version]:
        return self._of(request).version(request, now)

    def fetch(self, request: Request, query: str, representation: str) -> Optional[Fetched]:
        return self._of(request).fetch(request, query, representation)

    def plain_answer(self, request: Request, reason: str) -> Reply:
        return self._of(request).plain_answer(request, reason)

    def index_digest(self, request: Request) -> Optional[str]:
        return self._of(request).index_digest(request)
