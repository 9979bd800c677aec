"""The cache policy of one GET: what to read next, and what to answer, with no I/O.

The controller (controller.py) walks a few states.  Each is a value whose
methods take what the controller has just read (the stored entry, Orthanc's
answer, a concurrent request's answer, whether the store wrote) and return
either the next state or the final :class:`Decision`: a 304, or a 200 with
the answer to send, its outcome and the reason.  The controller does the
reads, fetches and writes in between, so every rule here is a pure function
of its inputs, tested as tables (tests/unit/test_policy.py)::

    on_request ──▶ Decision (304: the client holds our very entity-tag)
        │
     ReadStore.next(stored) ──▶ Decision (304 or HIT: current at this version)
        │
       Miss ──shared(answer)──▶ Decision (the answer of a concurrent request)
        │──again(stored)─────▶ Decision, or Miss (a leader reads the store again)
        └──fetched(answer, storage, written, store_available)──▶ Decision

Unsettled versions never reach the store: :func:`on_unsettled` decides
their answer from Orthanc's alone.  The storage rule (what the store may
keep of an answer) is :func:`storage`, stated once for serving and warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Mapping, Optional, Union

from ..core.data import Entry, Fetched, Outcome
from ..core.routes import Answer, Route
from ..core.settings import Settings
from ..http.validators import Evaluation, parse_if_none_match


@dataclass(frozen=True)
class Decision:
    """How to answer: the status, what the cache did and why, and the answer to send.

    ``answer`` is None exactly for a 304, which has no body; the controller adds
    the caching headers to either.
    """

    status: int
    outcome: Outcome
    reason: str
    answer: Optional[Fetched] = None


class Proof(Enum):
    """What shows that the representation exists at this version.

    Matching validators alone do not allow a 304: ``If-None-Match: *`` and
    ``If-Modified-Since`` match a representation Orthanc may not have (a
    missing archive, an error).  Each proof names where that was checked.
    """

    #: The client holds our very entity-tag, sent only with a 200 of this key and version.
    ETAG_SENT = "etag sent"
    #: A stored entry of this version (whole or validators only).
    STORED = "stored"
    #: Orthanc has just answered 200.
    FETCHED = "fetched"
    #: A concurrent request of this key and version got Orthanc's 200.
    SHARED = "shared"
    #: An unsettled version: the entity-tag covers a digest of the body Orthanc just sent.
    SAME_CONTENT = "same content"


_CHECKED = {
    Proof.ETAG_SENT: "",
    Proof.STORED: "",
    Proof.FETCHED: " (checked with Orthanc)",
    Proof.SHARED: " (checked by a concurrent request)",
    Proof.SAME_CONTENT: " (same content)",
}


def not_modified(precondition: Evaluation, proof: Proof) -> Optional[Decision]:
    """The 304, when the client's validators match: the one place a 304 is decided."""
    if not precondition.not_modified:
        return None
    return Decision(304, Outcome.REVALIDATED, precondition.reason + _CHECKED[proof])


def etag_sent(headers: Mapping[str, str], etag: str) -> bool:
    """True when the client holds our very entity-tag ``etag`` (``*`` is not enough).

    We only ever send that tag with a 200 for this key and version, so the
    representation exists and a 304 is safe without reading the store or
    asking Orthanc.
    """
    condition = parse_if_none_match(headers.get("if-none-match", ""))
    return condition is not None and not condition.any and condition.matches(etag)


def current(stored: Optional[Entry], stamp: str) -> Optional[Entry]:
    """``stored`` when it was computed at this version by this Orthanc (``stamp``,
    see :meth:`.controller.CacheController._stamp`), else None."""
    return stored if stored is not None and stored.version == stamp else None


def whole(stored: Optional[Entry], stamp: str) -> Optional[Fetched]:
    """The stored answer, when it is current and kept with its body (not validators only)."""
    entry = current(stored, stamp)
    return None if entry is None else _answer_of(entry)


def _answer_of(entry: Entry) -> Optional[Fetched]:
    if entry.body is None:
        return None
    return Fetched(entry.content_type, entry.body, entry.headers, entry.encoding)


@dataclass(frozen=True)
class Storage:
    """What the store may keep of one answer: all of it, or only its validators.

    ``why_not`` says why the body may not be kept; None when it may.
    """

    why_not: Optional[str]

    @property
    def keeps_body(self) -> bool:
        return self.why_not is None

    def entry(self, stamp: str, answer: Fetched) -> Entry:
        """The entry to write: validators only still allow 304s without asking Orthanc."""
        if not self.keeps_body:
            return Entry(stamp, answer.content_type, None, answer.headers)
        return Entry(stamp, answer.content_type, answer.body, answer.headers, answer.encoding)


def storage(route: Route, body_length: int, settings: Settings) -> Storage:
    """The storage rule: JSON always, binaries with StoreBinary, nothing too large."""
    # An entry of more than an eighth of the store would evict most of it.
    largest = min(settings.maximum_entry_size_bytes, settings.maximum_size_bytes // 8)
    if body_length > largest:
        return Storage("larger than MaximumEntrySize or an eighth of MaximumSize")
    if route.answer is Answer.BINARY and not settings.store_binary:
        return Storage("binary (StoreBinary is off)")
    return Storage(None)


def on_request(precondition: Evaluation, stamp: str,
               our_etag_sent: bool) -> Union[Decision, ReadStore]:
    """A settled version's GET, before anything is read: a 304 when the client
    sent our very entity-tag (see :func:`etag_sent`), else the stored entry decides."""
    if our_etag_sent:
        found = not_modified(precondition, Proof.ETAG_SENT)
        if found is not None:
            return found
    return ReadStore(precondition, stamp)


@dataclass(frozen=True)
class ReadStore:
    """The stored entry of the key decides, if it is current at this version."""

    precondition: Evaluation
    #: What an entry must carry to be current (see :func:`current`).
    stamp: str

    def next(self, stored: Optional[Entry]) -> Union[Decision, Miss]:
        """A 304 or a HIT from a current entry; a miss otherwise."""
        entry = current(stored, self.stamp)
        if entry is not None:
            found = not_modified(self.precondition, Proof.STORED)
            if found is not None:
                return found
            answer = _answer_of(entry)
            if answer is not None:
                return Decision(200, Outcome.HIT, "stored at this version", answer)
        return Miss(self.precondition, self.stamp, stored)


@dataclass(frozen=True)
class Miss:
    """Nothing usable stored: Orthanc computes the answer, once for concurrent requests."""

    precondition: Evaluation
    stamp: str
    #: What the store held for the key: names the outcome (MISS or STALE-REFRESHED).
    stored: Optional[Entry]

    @property
    def read_again(self) -> bool:
        """Whether a request that takes the lead reads the store again first.

        A flight that landed between the first read and taking the lead may
        have stored the answer.  An entry current at this version already is
        all the store will hold for it: a settled version fixes the answer,
        so another flight writes the same validators.
        """
        return current(self.stored, self.stamp) is None

    def again(self, stored: Optional[Entry]) -> Union[Decision, Miss]:
        """What the second read of a leader allows, as the first read would."""
        return ReadStore(self.precondition, self.stamp).next(stored)

    def shared(self, answer: Fetched, where: str = "") -> Decision:
        """The answer of the concurrent request this one waited for (same key and version),
        on this node or ``where``."""
        found = not_modified(self.precondition, Proof.SHARED)
        if found is not None:
            return found
        return Decision(200, Outcome.HIT, "computed by a concurrent request"
                        + (" on " + where if where else ""), answer)

    def fetched(self, answer: Fetched, storage: Storage, written: bool,
                store_available: bool) -> Decision:
        """Orthanc's 200 ``answer``, after the store was asked to keep it as ``storage``
        allows (``written``: whether it did), and whether the store works now."""
        found = not_modified(self.precondition, Proof.FETCHED)
        if found is not None:
            return found
        if self.stored is None:
            outcome, reason = Outcome.MISS, "not stored"
        elif current(self.stored, self.stamp) is None:
            outcome, reason = Outcome.STALE_REFRESHED, "outdated version replaced"
        else:
            outcome, reason = Outcome.MISS, "only validators stored"
        notes = [reason]
        if not store_available:
            notes.append("store unavailable")
        if not (written and storage.keeps_body):
            # A write fails only when the store does.
            notes.append("not kept: " + (storage.why_not or "store unavailable"))
        return Decision(200, outcome if store_available else Outcome.BYPASS, ", ".join(notes),
                        answer)


#: The reason of Orthanc's own error answer (never stored nor shared: each request gets
#: its own, as plain Orthanc gives it).
ORTHANC_ERROR = "Orthanc answered an error"

#: Why an answer read from Orthanc's index alone is never stored (a list of children
#: without requestedTags, a parent's attachments: cheaper to compute than to version,
#: see freshness.md).
INDEX_ANSWER = "an answer of Orthanc's index, validated by its content"

#: Where the walk of a settled version's GET stands: answered, or what to read next.
Step = Union[Decision, ReadStore, Miss]


def on_unsettled(precondition: Evaluation, answer: Fetched, settle: timedelta,
                 held: str = "") -> Decision:
    """A version changed less than ``settle`` ago, or ``held`` unsettled (the reason):
    Orthanc's ``answer``, never stored.

    ``precondition`` must be evaluated against an entity-tag that covers the
    body (the content may change under the same version) and no Last-Modified
    (it cannot tell two contents of the same second apart).
    """
    found = not_modified(precondition, Proof.SAME_CONTENT)
    if found is not None:
        return found
    if held == INDEX_ANSWER:  # by design, not a failure: computed by Orthanc
        return Decision(200, Outcome.MISS, "never stored: " + held, answer)
    if held:
        return Decision(200, Outcome.BYPASS, "not served from the store: " + held, answer)
    return Decision(200, Outcome.MISS,
                    "changed less than %d s ago: not stored" % settle.total_seconds(), answer)
