"""When a stored answer is still current: resource versions and the store generation.

``LastUpdate`` (instances: ``ReceptionDate``) changes when an instance is
stored below a resource, with a resolution of one second.  It does not change
when a child is deleted (Orthanc before 1.12.1), nor for metadata,
attachments or labels.  So a version is made of two parts:

* the resource's ``LastUpdate``;
* the **generation** of this node's store, replaced before and after every
  write that ``LastUpdate`` does not show.  A new generation makes every
  stored answer outdated.  Other nodes learn of such writes through Orthanc's
  change log (``/changes``, in the shared database), which every node polls;
  deletions, which Orthanc does not log, are announced there by writing and
  removing a marker metadata on a resource (see :data:`MARKER_METADATA`).

A generation records when it was made.  A version is **settled** once
``SETTLE`` seconds have passed since the later of ``LastUpdate`` and the
generation's time: before that, another change could still come with the
same ``LastUpdate`` (same second) or be in flight, so answers are neither
stored nor validated by version alone (their ETag includes a digest of the
body).  A write announced before it happens dates its generation ``GRACE``
seconds ahead, which covers writes that take that long.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Dict, Optional, Tuple

from .validators import parse_orthanc_timestamp

#: User-defined metadata written then removed to log a deletion in /changes.
MARKER_METADATA = 65011
#: Changes in /changes that LastUpdate does not show.
LOGGED_HIDDEN_CHANGES = ("UpdatedMetadata", "UpdatedAttachment")
#: Seconds after a change during which answers are not trusted by version: the
#: one-second resolution of LastUpdate, plus time for the write to commit.
SETTLE = timedelta(seconds=3)
#: How far ahead a write announced before it happens dates its generation.
GRACE = timedelta(seconds=2)

_GENERATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)/[0-9a-f]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def new_generation(moment: datetime) -> str:
    """A generation never seen before, dated ``moment``: ``<epoch seconds>/<random>``."""
    seconds = (moment - _EPOCH).total_seconds()
    return "%.6f/%s" % (seconds, os.urandom(6).hex())


@lru_cache(maxsize=16)  # on every request, for the current generation
def generation_time(generation: str) -> Optional[datetime]:
    """When ``generation`` was dated; None for the empty (initial) generation."""
    match = _GENERATION.fullmatch(generation)
    if not match:
        return None
    return _EPOCH + timedelta(seconds=float(match.group(1)))


def later_generation(current: str, now: datetime) -> str:
    """The generation replacing ``current`` after a change: dated now, or
    later when ``current`` announced a write still in its grace period."""
    current_time = generation_time(current)
    return new_generation(max(now, current_time) if current_time else now)


class Generation:
    """This node's store generation (a string replacement is atomic: no lock)."""

    def __init__(self, value: str = ""):
        self.value = value

    def announce(self, now: datetime) -> str:
        """Before a write: a generation dated GRACE ahead, unsettling versions until then."""
        self.value = new_generation(now + GRACE)
        return self.value

    def advance(self, now: datetime) -> str:
        """After a change: a new generation (keeping an announced grace period)."""
        self.value = later_generation(self.value, now)
        return self.value


class RememberedUpdates:
    """Each resource's ``LastUpdate`` as last read, kept until anything may have changed it.

    Asking Orthanc on every request costs more than the rest of a hit (the
    Python plugin holds the GIL through ``RestApiGet``).  ``LastUpdate``
    changes only when an instance is stored below a resource (and, from
    Orthanc 1.12.1, when a child is deleted), so a value read once stays
    right until :meth:`forget_all` is called on any such change: after
    every stored instance (Orthanc's stored-instance callback, which runs
    before the upload or C-STORE is answered), before every HTTP write, on
    every change event, and whenever the change log shows a change (other
    nodes).

    A value read before a change but remembered after it would outlive the
    change: each value is remembered with the epoch taken before it was
    read, and only if no change came in between.
    """

    #: Resources remembered at most; beyond, everything is forgotten at once.
    LIMIT = 50000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[Tuple[str, str], str] = {}
        #: Counts calls to forget_all.
        self.epoch = 0

    def get(self, level: str, resource_id: str) -> Optional[str]:
        """The remembered ``LastUpdate``, or None."""
        return self._values.get((level, resource_id))

    def remember(self, level: str, resource_id: str, last_update: str, epoch: int) -> None:
        """Keep ``last_update``, read after :attr:`epoch` was ``epoch``, if nothing changed
        since."""
        with self._lock:
            if epoch != self.epoch:
                return
            if len(self._values) >= self.LIMIT:
                self._values.clear()
            self._values[(level, resource_id)] = last_update

    def forget_all(self) -> None:
        """Something may have changed: read every ``LastUpdate`` again."""
        with self._lock:
            self.epoch += 1
            self._values.clear()


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


def resource_version(last_update: str, generation: str, now: datetime) -> Version:
    """Combine a resource's ``LastUpdate`` and the store generation."""
    modified = _last_change(last_update, generation)
    settled = modified is not None and now >= modified + SETTLE
    return Version(last_update + "|" + generation, modified, settled)


@lru_cache(maxsize=4096)  # on every request
def _last_change(last_update: str, generation: str) -> Optional[datetime]:
    """The later of ``LastUpdate`` and the generation's date, in whole seconds."""
    times = [moment for moment in (parse_orthanc_timestamp(last_update),
                                   generation_time(generation)) if moment is not None]
    return max(times).replace(microsecond=0) if times else None


#: POSTs that only read or add resources: LastUpdate shows what they change.
_HARMLESS_POSTS = re.compile(
    r"/instances|/tools/(find|lookup|create-archive|create-media|create-media-extended|"
    r"create-dicom)|/(patients|studies|series)/[^/]+/(archive|media)")


_RESOURCE = re.compile(r"/(patients|studies|series|instances)/([^/]+)")


def deleted_resource(method: str, uri: str) -> Optional[Tuple[str, str]]:
    """``(level, id)`` when the request deletes a whole resource."""
    match = _RESOURCE.fullmatch(uri.rstrip("/")) if method == "DELETE" else None
    return (match.group(1), match.group(2)) if match else None


def may_change_stored_answers(method: str, uri: str) -> bool:
    """Whether a request may change an answer without changing its ``LastUpdate``.

    Conservative: every PUT and DELETE, and every POST but reads and uploads.
    """
    if method in ("GET", "HEAD", "OPTIONS"):
        return False
    if method == "POST":
        return not _HARMLESS_POSTS.fullmatch(uri.rstrip("/"))
    return True
