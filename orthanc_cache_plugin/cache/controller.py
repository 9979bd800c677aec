"""Carries out the cache policy for one GET: the reads, fetches and writes.

What to do and what to answer is decided in :mod:`.policy`, which has no
I/O; :class:`CacheController` performs each step it names and hands it what
was read.  It talks to Orthanc through an :class:`Origin` (implemented in
:mod:`..host.adapter`, faked in unit tests), to the disk through a
:class:`~.store.Store`, and coalesces concurrent misses (:mod:`.flights`).
Every reply names its outcome and the reason for it, which the adapter logs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, NamedTuple, Optional, Protocol, Tuple

from ..core.data import (
    GZIP,
    UNKNOWN_IDENTITY,
    Entry,
    Fetched,
    Identity,
    Reply,
    Request,
    Version,
)
from ..core.keys import cache_key, claim_name, entity_tag, normalized_query
from ..core.routes import Answer, answered_from_index
from ..core.settings import Settings
from ..freshness.versions import SETTLE
from ..http.encoding import (
    FAST_LEVEL,
    Coding,
    choose_coding,
    compress,
    compressible,
    etag_for,
)
from ..http.negotiation import NotAcceptable, Unsupported, representation_of
from ..http.sharing import Sharing
from ..http.validators import Validators, caching_headers, evaluate_preconditions
from ..store.facade import Store
from . import policy
from .flights import Flight, Flights


class Origin(Protocol):
    """Orthanc, as seen by the controller."""

    def version(self, request: Request, now: datetime) -> Optional[Version]:
        """The state of the request's resource at ``now``; None when Orthanc does not know it."""

    def fetch(self, request: Request, query: str, representation: str) -> Optional[Fetched]:
        """Orthanc's 200 answer in ``representation``; None when Orthanc answers an error."""

    def plain_answer(self, request: Request, reason: str) -> Reply:
        """Orthanc's own answer to ``request``, when the cache has nothing to add."""

    def index_digest(self, request: Request) -> Optional[str]:
        """A digest of Orthanc's answer to ``request`` without its file arguments
        (``routes.index_arguments``); None when Orthanc answers it an error."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Job(NamedTuple):  # a tuple: built on every request, faster than a frozen dataclass
    """One GET of a known resource in a representation, as the steps of serving share it."""

    request: Request
    query: str
    representation: str
    version: Version
    key: str
    #: The content coding this client gets JSON in (http.encoding).
    coding: Coding


class CacheController:
    """Serves GETs of cached routes from the store, Orthanc and validators."""

    def __init__(self, settings: Settings, store: Store, origin: Origin,
                 identity: Identity = UNKNOWN_IDENTITY, sharing: Optional[Sharing] = None,
                 clock: Callable[[], datetime] = _utcnow):
        self.settings = settings
        self.store = store
        self.origin = origin
        #: The running Orthanc (its salt, and its ApiVersion: Accept is read as that
        #: version reads it); replaced whole once known.
        self.identity = identity
        #: The Cache-Control and Vary of every answer (sharing.py); replaced whole when a
        #: script registers a request filter.
        self.sharing = sharing if sharing is not None else Sharing(settings.cache_control)
        self._clock = clock
        #: Whether JSON may go out gzip-compressed as stored: not where Orthanc
        #: compresses plugin answers again (host.adapter decides, and logs why).
        self.gzip_offered = True
        #: Misses being computed, by key and version: concurrent ones wait (flights.py).
        self.flights: Flights[Fetched] = Flights()
        #: How a request waiting for another node sleeps and tells time (tests inject them).
        self.sleep: Callable[[float], Any] = time.sleep
        self.monotonic: Callable[[], float] = time.monotonic

    def serve(self, request: Request) -> Reply:
        """Answer one GET; never raises for a store failure."""
        now = self._clock()
        version = self.origin.version(request, now)
        if version is None:
            return self.origin.plain_answer(request, "unknown resource")
        try:
            representation = representation_of(request.route, request.headers,
                                               self.identity.api_version)
        except (NotAcceptable, Unsupported) as refusal:
            return self.origin.plain_answer(request, str(refusal))
        query = normalized_query(request.arguments)
        coding = choose_coding(request.headers.get("accept-encoding"), self.gzip_offered and
                               request.route.answer is Answer.JSON).coding
        if answered_from_index(request.route, request.arguments):
            # Nothing to save by storing it, and what it shows moves no version
            # (IsStable, labels, a parent's attachments: docs/freshness.md).
            version = replace(version, settled=False, held=policy.INDEX_ANSWER)
        elif request.route.file_arguments:
            digest = self.origin.index_digest(request)
            if digest is None:
                return self.origin.plain_answer(request, "Orthanc answers an error")
            version = replace(version, token=version.token + "|" + digest)
        job = _Job(request, query, representation, version,
                   cache_key(request.uri, query, representation, request.variant), coding)
        if not version.settled:
            return self._serve_unsettled(job, now)

        # One entity-tag per coding (http.encoding): a 304 always names the bytes it
        # validates.
        validators = Validators(etag_for(entity_tag(self.identity.salt, job.key,
                                                    version.token), coding),
                                version.modified)
        headers = self._headers(request, validators, now)
        # LastUpdate does not date what an index answer shows (IsStable, labels): an
        # If-Modified-Since cannot tell its contents apart, only the ETag can.
        precondition = evaluate_preconditions(
            request.headers,
            Validators(validators.etag, None) if request.route.index_answers else validators,
            now)
        sent = policy.etag_sent(request.headers, validators.etag)
        step: policy.Step = policy.on_request(precondition, self._stamp(version), sent)
        if isinstance(step, policy.ReadStore):
            step = step.next(self.store.get(job.key, self._stamp(version)))
        if isinstance(step, policy.Miss):
            return self._miss(job, step, headers)
        return self._reply(job, step, headers)

    def _miss(self, job: _Job, miss: policy.Miss, headers: Dict[str, str]) -> Reply:
        """Nothing usable stored: compute the answer, once for concurrent requests.

        The first request missing the key at its version leads a flight and
        computes; those arriving meanwhile wait for it (at most LockTimeout
        seconds) and use its answer, or compute on their own (flights.py).
        """
        if self.settings.lock_timeout <= 0:
            return self._compute(job, miss, headers, None)

        flight, leading = self.flights.join((job.key, job.version.token))
        if not leading:
            shared = flight.wait(self.settings.lock_timeout)
            if shared is not None:
                return self._reply(job, miss.shared(shared), headers)
            # Timed out, or the leader had nothing to share (Orthanc answered it an
            # error, the store failed...): ask Orthanc ourselves, outside the flight.
            return self._compute(job, miss, headers, None)
        claim = ""
        try:
            if miss.read_again:
                # A flight that landed between our read and join() may have stored it.
                stored = self.store.get(job.key, miss.stamp)
                found = policy.whole(stored, miss.stamp)
                if found is not None:
                    flight.land(found)
                step = miss.again(stored)
                if isinstance(step, policy.Decision):
                    return self._reply(job, step, headers)
                miss = step
            claims = self.store.claims
            if claims is not None:
                # Other nodes may miss it too: the first to claim it computes.
                claim = claim_name(job.key, miss.stamp)
                taken = claims.claim(claim, self.settings.lock_timeout)
                if taken is False:  # another node computes it: wait for its entry
                    claim = ""
                    found = policy.whole(self._await_other_node(job, miss), miss.stamp)
                    if found is not None:
                        flight.land(found)
                        return self._reply(job, miss.shared(found, "another node"), headers)
                elif not taken:
                    claim = ""  # the store fails: compute, as every request meanwhile
            return self._compute(job, miss, headers, flight)
        finally:
            flight.land(None)  # no effect when the answer was shared
            if claim and self.store.claims is not None:
                self.store.claims.release(claim)

    def _await_other_node(self, job: _Job, miss: policy.Miss) -> Optional[Entry]:
        """The entry another node stores while it holds the claim of this key and version,
        once it gave the claim up; None when it took longer than LockTimeout or the store
        failed.  Looks at the claim (a small key) more and more sparsely: 5 ms, 10 ms... up
        to 100 ms, and at the entry, which may be large, only once the claim is gone.  The
        other node gives the claim up without an entry when Orthanc answered it an error,
        or when it keeps only validators (binaries without StoreBinary): this node then
        computes the answer itself."""
        claims = self.store.claims
        assert claims is not None
        name, delay = claim_name(job.key, miss.stamp), 0.005
        deadline = self.monotonic() + self.settings.lock_timeout
        while self.monotonic() < deadline:
            self.sleep(delay)
            delay = min(delay * 2, 0.1)
            held = claims.claimed(name)
            if held is None:
                return None
            if not held:
                return self.store.get(job.key, miss.stamp)
        return None

    def _compute(self, job: _Job, miss: policy.Miss, headers: Dict[str, str],
                 flight: Optional[Flight[Fetched]]) -> Reply:
        """Ask Orthanc for the answer of a settled version, keep it, and share it
        with the requests waiting on ``flight`` (when leading one)."""
        fetched = self.origin.fetch(job.request, job.query, job.representation)
        if fetched is None:
            # Followers ask Orthanc themselves and get their own plain answer.
            return self.origin.plain_answer(job.request, policy.ORTHANC_ERROR)
        kept, storage, written = self._keep(job.request, job.key, miss.stamp, fetched)
        if flight is not None and written:
            # The version is settled, so the answer is the same for every request of
            # this key and version: followers may use this very body whether it was
            # stored whole or, as binaries without StoreBinary and answers above
            # MaximumEntrySize, only as validators (reading it back from the store
            # would not work for those, and would cost a read).  When the store
            # failed, they ask Orthanc themselves, as every request does while the
            # store is unavailable (BYPASS).
            flight.land(kept)
        decision = miss.fetched(kept, storage, written, self.store.available)
        # Orthanc's own bytes for a client that takes identity: nothing to decompress.
        return self._reply(job, decision, headers, fetched if kept is not fetched else None)

    def _serve_unsettled(self, job: _Job, now: datetime) -> Reply:
        """Answer while the resource may still change under the same version.

        Nothing is read from or written to the store.  The ETag covers a
        digest of the body, and Last-Modified is dated a second before the
        change, so a validator taken now never matches a later content.
        Concurrent requests are not coalesced either: the content may change
        under the same version token, so a request must not be handed an
        answer computed before it arrived (and this lasts only SETTLE seconds).
        """
        fetched = self.origin.fetch(job.request, job.query, job.representation)
        if fetched is None:
            return self.origin.plain_answer(job.request, policy.ORTHANC_ERROR)
        digest = hashlib.blake2b(fetched.body, digest_size=16).hexdigest()
        # A client that takes gzip gets it, compressed for this request (as Orthanc does
        # with HttpCompressionEnabled, which the plugin's deployment turns off): Orthanc
        # Explorer 2's lists, computed at each request, are as large as they are common.
        coding = job.coding if not fetched.encoding and compressible(
            fetched.content_type, len(fetched.body)) else Coding.IDENTITY
        identity = fetched
        if coding is Coding.GZIP:
            fetched = Fetched(fetched.content_type, compress(fetched.body, FAST_LEVEL),
                              fetched.headers, GZIP)
        etag = etag_for(entity_tag(self.identity.salt, job.key,
                                   job.version.token + "|" + digest), coding)
        modified = None
        if job.version.modified is not None:
            modified = min(job.version.modified, now.replace(microsecond=0)) - timedelta(seconds=1)
        headers = self._headers(job.request, Validators(etag, modified), now)
        # If-Modified-Since cannot tell two contents of the same second apart: ETag only.
        precondition = evaluate_preconditions(job.request.headers, Validators(etag, None), now)
        return self._reply(job._replace(coding=coding),
                           policy.on_unsettled(precondition, fetched, SETTLE, job.version.held),
                           headers, identity)

    def warm(self, request: Request, wait: Callable[[float], Any] = time.sleep) -> bool:
        """Compute and store ``request``'s answer unless stored at the current version.

        Returns True when an answer was stored.  A version that has not settled
        yet is waited for with ``wait(seconds)`` (the warm-up passes one that
        returns early when Orthanc stops).
        """
        version = self.origin.version(request, self._clock())
        if version is not None and not version.settled and version.modified is not None:
            # Stable resources settle within seconds: wait rather than skip.
            wait((version.modified + SETTLE - self._clock()).total_seconds())
            version = self.origin.version(request, self._clock())
        if version is None or not version.settled:
            return False
        query = normalized_query(request.arguments)
        key, stamp = cache_key(request.uri, query, "", request.variant), self._stamp(version)
        if policy.whole(self.store.get(key, stamp), stamp) is not None:
            return False
        fetched = self.origin.fetch(request, query, "")
        if fetched is None:
            return False
        _, storage, written = self._keep(request, key, stamp, fetched)
        return written and storage.keeps_body

    def _stamp(self, version: Version) -> str:
        """What a stored entry must carry to be current: the resource's version, and
        the salt (an entry computed by another Orthanc version is never served)."""
        return self.identity.salt + "|" + version.token

    def _headers(self, request: Request, validators: Validators, now: datetime) -> Dict[str, str]:
        sharing = self.sharing
        headers = caching_headers(validators, sharing.cache_control, now)
        vary = sharing.vary + request.route.vary
        if self.gzip_offered and request.route.answer is Answer.JSON \
                and "Accept-Encoding" not in vary:
            vary += ("Accept-Encoding",)
        if vary:
            headers["Vary"] = ", ".join(vary)
        return headers

    def _keep(self, request: Request, key: str, stamp: str,
              fetched: Fetched) -> Tuple[Fetched, policy.Storage, bool]:
        """Store the answer, or only its validators when the storage rule says so.

        JSON is kept gzip-compressed (compressed once, here: on a miss or a
        warm-up), so that the same MaximumSize and MemorySize hold many more
        answers.  Returns the answer as kept, the rule's verdict (on the kept
        size), and whether the store wrote the entry.
        """
        kept = fetched
        if not fetched.encoding and compressible(fetched.content_type, len(fetched.body)):
            packed = compress(fetched.body)
            if len(packed) < len(fetched.body):  # not when it only adds gzip's framing
                kept = Fetched(fetched.content_type, packed, fetched.headers, GZIP)
        storage = policy.storage(request.route, len(kept.body), self.settings)
        written = self.store.set(key, storage.entry(stamp, kept), tag=request.resource_id)
        return kept, storage, written

    def _reply(self, job: _Job, decision: policy.Decision, headers: Dict[str, str],
               identity: Optional[Fetched] = None) -> Reply:
        """The reply of a decision, with the caching headers (over the answer's own), its
        body in the job's coding (``identity``: Orthanc's own bytes, when at hand)."""
        answer = decision.answer
        if answer is None:
            return Reply(decision.status, decision.outcome, decision.reason, headers=headers)
        body = answer.body
        if answer.encoding == GZIP:
            if job.coding is Coding.GZIP:
                headers = dict(headers, **{"Content-Encoding": "gzip"})
            else:
                body = identity.body if identity is not None \
                    else self.store.identity_body(job.key, body)
        return Reply(decision.status, decision.outcome, decision.reason, answer.content_type,
                     body, dict(answer.headers, **headers))
