"""The caching policy: for one GET, decide 304, hit or miss, and say why.

:class:`CacheController` has no transport in it.  It talks to Orthanc
through an :class:`Origin` (implemented in :mod:`.orthanc_adapter`, faked in
unit tests) and to the disk through a :class:`~.store.Store`.  Every reply
names its outcome and the reason for it, which the adapter logs.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

from .data import Entry, Fetched, Outcome, Reply, Request, Version
from .flights import Flight, Flights
from .freshness import SETTLE
from .keys import cache_key, entity_tag, normalized_query
from .negotiation import NotAcceptable, Unsupported, representation_of
from .routes import Answer, Route
from .settings import Settings
from .store import Store
from .validators import (
    Evaluation,
    Validators,
    caching_headers,
    evaluate_preconditions,
    parse_if_none_match,
)


class Origin(Protocol):
    """Orthanc, as seen by the controller."""

    def version(self, request: Request, now: datetime) -> Optional[Version]:
        """The state of the request's resource at ``now``; None when Orthanc does not know it."""

    def fetch(self, request: Request, query: str, representation: str) -> Optional[Fetched]:
        """Orthanc's 200 answer in ``representation``; None when Orthanc answers an error."""

    def plain_answer(self, request: Request, reason: str) -> Reply:
        """Orthanc's own answer to ``request``, when the cache has nothing to add."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CacheController:
    """Serves GETs of cached routes from the store, Orthanc and validators."""

    def __init__(self, settings: Settings, store: Store, origin: Origin, salt: str = "",
                 vary: Tuple[str, ...] = (), clock: Callable[[], datetime] = _utcnow):
        self.settings = settings
        self.store = store
        self.origin = origin
        #: What else shapes every answer (Orthanc's version...); see keys.entity_tag.
        self.salt = salt
        #: The running Orthanc's ``ApiVersion``: Accept is read as that version reads it.
        self.api_version = 16
        self._vary = vary
        self._clock = clock
        #: Misses being computed, by key and version: concurrent ones wait (flights.py).
        self.flights: Flights[Fetched] = Flights()

    def serve(self, request: Request) -> Reply:
        """Answer one GET; never raises for a store failure."""
        now = self._clock()
        version = self.origin.version(request, now)
        if version is None:
            return self.origin.plain_answer(request, "unknown resource")
        try:
            representation = representation_of(request.route, request.headers, self.api_version)
        except (NotAcceptable, Unsupported) as refusal:
            return self.origin.plain_answer(request, str(refusal))

        query = normalized_query(request.arguments)
        key = cache_key(request.uri, query, representation)
        if not version.settled:
            return self._serve_unsettled(request, key, query, representation, version, now)
        validators = Validators(entity_tag(self.salt, key, version.token), version.modified)
        headers = self._headers(request, validators, now)

        precondition = evaluate_preconditions(request.headers, validators, now)
        if precondition.not_modified and self._etag_sent(request, validators):
            return Reply(304, Outcome.REVALIDATED, precondition.reason, headers=headers)
        stored = self.store.get(key)
        found = self._stored_reply(stored, version, precondition, headers)
        if found is not None:
            return found
        return self._miss(request, key, query, representation, version, stored, precondition,
                          headers)

    def _miss(self, request: Request, key: str, query: str, representation: str,
              version: Version, stored: Optional[Entry], precondition: Evaluation,
              headers: Dict[str, str]) -> Reply:
        """Nothing usable stored: compute the answer, once for concurrent requests.

        The first request missing ``key`` at ``version`` leads a flight and
        computes; those arriving meanwhile wait for it (at most LockTimeout
        seconds) and use its answer, or compute on their own (flights.py).
        """
        if self.settings.lock_timeout <= 0:
            return self._compute(request, key, query, representation, version, stored,
                                 precondition, headers, None)

        flight, leading = self.flights.join((key, version.token))
        if not leading:
            shared = flight.wait(self.settings.lock_timeout)
            if shared is not None:
                return self._shared_reply(shared, precondition, headers)
            # Timed out, or the leader had nothing to share (Orthanc answered it an
            # error, the store failed...): ask Orthanc ourselves, outside the flight.
            return self._compute(request, key, query, representation, version, stored,
                                 precondition, headers, None)
        try:
            if stored is None or stored.version != self._stamp(version):
                # A flight that landed between our read and join() may have stored it.
                stored = self.store.get(key)
                if stored is not None and stored.version == self._stamp(version) \
                        and stored.body is not None:
                    flight.land(Fetched(stored.content_type, stored.body, stored.headers))
                found = self._stored_reply(stored, version, precondition, headers)
                if found is not None:
                    return found
            return self._compute(request, key, query, representation, version, stored,
                                 precondition, headers, flight)
        finally:
            flight.land(None)  # no effect when the answer was shared

    def _stored_reply(self, stored: Optional[Entry], version: Version, precondition: Evaluation,
                      headers: Dict[str, str]) -> Optional[Reply]:
        """The 304 or hit that a stored entry allows, if any."""
        current = stored if stored is not None and stored.version == self._stamp(version) \
            else None
        if precondition.not_modified and current is not None:
            return Reply(304, Outcome.REVALIDATED, precondition.reason, headers=headers)
        if current is not None and current.body is not None:
            return Reply(200, Outcome.HIT, "stored at this version", current.content_type,
                         current.body, dict(current.headers, **headers))
        return None

    def _compute(self, request: Request, key: str, query: str, representation: str,
                 version: Version, stored: Optional[Entry], precondition: Evaluation,
                 headers: Dict[str, str], flight: Optional[Flight[Fetched]]) -> Reply:
        """Ask Orthanc for the answer of a settled version, keep it, and share it
        with the requests waiting on ``flight`` (when leading one)."""
        fetched = self.origin.fetch(request, query, representation)
        if fetched is None:
            # Followers ask Orthanc themselves and get their own plain answer.
            return self.origin.plain_answer(request, "Orthanc answered an error")
        written, stored_now = self._keep(request, key, version, fetched)
        if flight is not None and written:
            # The version is settled, so the answer is the same for every request of
            # this key and version: followers may use this very body whether it was
            # stored whole or, as binaries without StoreBinary and answers above
            # MaximumEntrySize, only as validators (reading it back from the store
            # would not work for those, and would cost a read).  When the store
            # failed, they ask Orthanc themselves, as every request does while the
            # store is unavailable (BYPASS).
            flight.land(fetched)
        if precondition.not_modified:
            return Reply(304, Outcome.REVALIDATED, precondition.reason + " (checked with Orthanc)",
                         headers=headers)
        outcome = Outcome.MISS
        if stored is None:
            reason = "not stored"
        elif stored.version != self._stamp(version):
            outcome, reason = Outcome.STALE_REFRESHED, "outdated version replaced"
        else:
            reason = "only validators stored"
        if not self.store.available:
            outcome = Outcome.BYPASS
        reason += \
            ("" if self.store.available else ", store unavailable") + \
            ("" if stored_now else ", not kept: " + self._why_not_kept(request.route, fetched))
        return Reply(200, outcome, reason, fetched.content_type, fetched.body,
                     dict(fetched.headers, **headers))

    @staticmethod
    def _shared_reply(shared: Fetched, precondition: Evaluation,
                      headers: Dict[str, str]) -> Reply:
        """The answer of a concurrent request of the same key and version (see _compute)."""
        if precondition.not_modified:
            return Reply(304, Outcome.REVALIDATED,
                         precondition.reason + " (checked by a concurrent request)",
                         headers=headers)
        return Reply(200, Outcome.HIT, "computed by a concurrent request", shared.content_type,
                     shared.body, dict(shared.headers, **headers))

    def _serve_unsettled(self, request: Request, key: str, query: str, representation: str,
                         version: Version, now: datetime) -> Reply:
        """Answer while the resource may still change under the same version.

        Nothing is read from or written to the store.  The ETag covers a
        digest of the body, and Last-Modified is dated a second before the
        change, so a validator taken now never matches a later content.
        Concurrent requests are not coalesced either: the content may change
        under the same version token, so a request must not be handed an
        answer computed before it arrived (and this lasts only SETTLE seconds).
        """
        fetched = self.origin.fetch(request, query, representation)
        if fetched is None:
            return self.origin.plain_answer(request, "Orthanc answered an error")
        digest = hashlib.blake2b(fetched.body, digest_size=16).hexdigest()
        etag = entity_tag(self.salt, key, version.token + "|" + digest)
        modified = None
        if version.modified is not None:
            modified = min(version.modified, now.replace(microsecond=0)) - timedelta(seconds=1)
        headers = self._headers(request, Validators(etag, modified), now)
        # If-Modified-Since cannot tell two contents of the same second apart: ETag only.
        precondition = evaluate_preconditions(request.headers, Validators(etag, None), now)
        if precondition.not_modified:
            return Reply(304, Outcome.REVALIDATED, precondition.reason + " (same content)",
                         headers=headers)
        reason = "changed less than %d s ago: not stored" % SETTLE.total_seconds()
        return Reply(200, Outcome.MISS, reason, fetched.content_type, fetched.body,
                     dict(fetched.headers, **headers))

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
        key = cache_key(request.uri, normalized_query(request.arguments), "")
        stored = self.store.get(key)
        if (stored is not None and stored.version == self._stamp(version)
                and stored.body is not None):
            return False
        fetched = self.origin.fetch(request, normalized_query(request.arguments), "")
        return fetched is not None and self._keep(request, key, version, fetched)[1]

    def _stamp(self, version: Version) -> str:
        """What a stored entry must carry to be current: the resource's version, and
        the salt (an entry computed by another Orthanc version is never served)."""
        return self.salt + "|" + version.token

    @staticmethod
    def _etag_sent(request: Request, validators: Validators) -> bool:
        """True when the client holds our very entity-tag (not ``*``).

        We only ever send that tag with a 200 for this key and version, so
        the representation exists and a 304 is safe without asking Orthanc.
        """
        condition = parse_if_none_match(request.headers.get("if-none-match", ""))
        return condition is not None and not condition.any and condition.matches(validators.etag)

    def _headers(self, request: Request, validators: Validators, now: datetime) -> Dict[str, str]:
        headers = caching_headers(validators, self.settings.cache_control, now)
        vary = self._vary + request.route.vary
        if vary:
            headers["Vary"] = ", ".join(vary)
        return headers

    def _storable(self, route: Route, fetched: Fetched) -> bool:
        return ((route.answer is Answer.JSON or self.settings.store_binary)
                and len(fetched.body) <= self._largest_entry)

    @property
    def _largest_entry(self) -> int:
        # An entry of more than an eighth of the store would evict most of it.
        return min(self.settings.maximum_entry_size_bytes, self.settings.maximum_size_bytes // 8)

    def _why_not_kept(self, route: Route, fetched: Fetched) -> str:
        if len(fetched.body) > self._largest_entry:
            return "larger than MaximumEntrySize or an eighth of MaximumSize"
        if route.answer is Answer.BINARY and not self.settings.store_binary:
            return "binary (StoreBinary is off)"
        return "store unavailable"

    def _keep(self, request: Request, key: str, version: Version,
              fetched: Fetched) -> Tuple[bool, bool]:
        """Store the answer, or only its validators when the body may not be kept.

        Returns whether the store wrote the entry, and whether it holds the body.
        """
        body = fetched.body if self._storable(request.route, fetched) else None
        written = self.store.set(key, Entry(self._stamp(version), fetched.content_type, body,
                                            fetched.headers), tag=request.resource_id)
        return written, written and body is not None
