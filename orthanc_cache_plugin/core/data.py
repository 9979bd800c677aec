"""The values the modules hand each other: requests, answers, stored entries, versions.

Kept in one module that imports nothing of the package but the route
table, so that any module may use them without depending on another's
logic (store/memory.py and store/facade.py, cache/controller.py and http/plain_answers.py...).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Dict, Mapping, Optional, Tuple

from .routes import Route

#: Bumped when the stored layout or the answers' derivation changes, so that
#: entries written by an older plugin are never read back (3: bodies may be gzip).
FORMAT = 3

#: The content coding of a body kept gzip-compressed (``Entry.encoding``).
GZIP = "gzip"


@dataclass(frozen=True)
class Request:
    """A GET on a cached route, as Orthanc hands it to the plugin."""

    route: Route
    groups: Tuple[str, ...]
    uri: str
    arguments: Mapping[str, str]
    headers: Mapping[str, str]
    #: What else than the URI, the query and the representation the answer depends on,
    #: for its key: empty for Orthanc's routes; for a DICOMweb route (whose ``uri`` is
    #: then the DICOMweb plugin's path and whose first group the Orthanc study), that
    #: plugin's version and the base of the URLs it writes for this client.
    variant: str = ""

    @property
    def resource_id(self) -> str:
        return self.groups[0]


@dataclass(frozen=True)
class Fetched:
    """A 200 answer computed by Orthanc; ``encoding`` is :data:`GZIP` when ``body`` is
    the answer compressed (as the store keeps JSON), "" when it is Orthanc's bytes."""

    content_type: str
    body: bytes
    headers: Dict[str, str] = field(default_factory=dict)
    encoding: str = ""


class Outcome(str, Enum):
    """What the cache did for one request: the ``X-Cache-Status`` header, the first
    word of the request's log line, and the counters (statistics.py)."""

    #: Served from the store.
    HIT = "HIT"
    #: Computed by Orthanc (and stored when the version has settled).
    MISS = "MISS"
    #: Computed by Orthanc, replacing a stored answer of an earlier version.
    STALE_REFRESHED = "STALE-REFRESHED"
    #: 304 Not Modified.
    REVALIDATED = "REVALIDATED"
    #: The store failed: Orthanc's answer, without the cache.
    BYPASS = "BYPASS"
    #: Orthanc's own answer, not cacheable (errors, other methods).
    PASS = "PASS"


@dataclass
class Reply:
    """What to send back, and what the cache did, and why (logged)."""

    status: int
    outcome: Outcome
    reason: str
    content_type: Optional[str] = None
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One stored answer: the resource ``version`` it belongs to, its content
    type and extra headers, and its body (None when only its existence and
    validators are kept, e.g. binaries with StoreBinary off); ``encoding`` is
    :data:`GZIP` when the body is kept compressed (JSON: compressed once, when
    stored), "" when it is the answer's own bytes."""

    version: str
    content_type: str
    body: Optional[bytes]
    headers: Dict[str, str] = field(default_factory=dict)
    encoding: str = ""

    def encode(self) -> bytes:
        """Serialize as one JSON line then the raw body: no pickle on disk.

        The line holds the body's length and CRC-32, so that a damaged or
        truncated entry is never served."""
        body = self.body or b""
        meta = {"format": FORMAT, "version": self.version, "type": self.content_type,
                "headers": self.headers, "has_body": self.body is not None,
                "encoding": self.encoding,
                "length": len(body), "crc32": zlib.crc32(body)}
        return json.dumps(meta, sort_keys=True).encode() + b"\n" + body

    @classmethod
    def decode(cls, raw: bytes) -> Optional[Entry]:
        """The entry in ``raw``, or None when it is not one this version wrote."""
        meta_line, separator, body = raw.partition(b"\n")
        if not separator:
            return None
        try:
            meta = json.loads(meta_line)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                return None
            if meta["length"] != len(body) or meta["crc32"] != zlib.crc32(body):
                return None
            return cls(meta["version"], meta["type"], body if meta["has_body"] else None,
                       dict(meta["headers"]), str(meta["encoding"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Identity:
    """What the running Orthanc is, as far as answers depend on it: read once Orthanc
    answers REST calls (``/system``), then shared by everything that needs it."""

    #: What else shapes every answer (Orthanc's version, the plugin's, the format);
    #: salts entity-tags and stamps entries (see keys.entity_tag).
    salt: str = ""
    #: Orthanc's ``ApiVersion``: selects the rules that changed between versions (Accept,
    #: arguments, error details); 16 is Orthanc 1.10's.
    api_version: int = 16


#: Until Orthanc answers REST calls.
UNKNOWN_IDENTITY = Identity()


@dataclass(frozen=True)
class Version:
    """State of a resource as far as its cached answers are concerned.

    ``token`` identifies it; ``modified`` is when it last changed (whole
    seconds, the Last-Modified of its answers); ``settled`` says whether
    answers computed now may be stored and validated by version alone.
    """

    token: str
    modified: Optional[datetime]
    settled: bool
    #: Why no version settles now, when something else than a recent change holds them
    #: (:meth:`.freshness.Generations.hold`); empty otherwise.
    held: str = ""


@dataclass(frozen=True)
class Figures:
    """How full the store is and how far warm-up got: for the metrics and the admin API."""

    entries: int
    size: int
    warm_up_queue: int
    warm_ups_done: int


@dataclass(frozen=True)
class GenerationUpdate:
    """What changed in the generations (:class:`.freshness.Generations`), as nodes tell
    each other through a shared store: a new base (empty: none), new generations of
    resources, and whether remembered ``LastUpdate`` values must be read again (a new
    instance, which moves them and no generation).  Merging updates is commutative and
    idempotent (the newest generation wins), so their order does not matter."""

    base: str = ""
    touched: Dict[str, str] = field(default_factory=dict)
    forget: bool = False

    def __bool__(self) -> bool:
        return bool(self.base or self.touched or self.forget)

