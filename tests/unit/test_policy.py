"""Unit tests of cache.policy: each decision as a table, without a store or Orthanc.

A row gives what the controller would have read (the stored entry, whether
the store wrote, whether it works...) and the expected next state or
decision, as ``(status, outcome, reason)``.
"""

from __future__ import annotations

import ast
import inspect
from datetime import timedelta
from typing import Optional, Tuple, Union

import pytest

from orthanc_cache_plugin.cache import policy
from orthanc_cache_plugin.cache.policy import Decision, Miss, Proof, ReadStore, Storage
from orthanc_cache_plugin.core.data import Entry, Fetched, Outcome
from orthanc_cache_plugin.core.routes import match
from orthanc_cache_plugin.core.settings import load_settings
from orthanc_cache_plugin.http.validators import Evaluation

MB = 1024 * 1024
STAMP = "orthanc 1.13.0|20230220T140000"
ETAG = 'W/"ours"'

ANSWER = Fetched("application/json", b'{"tags": 1}', {"X-Origin": "yes"})
WHOLE = Entry(STAMP, "application/json", b'{"tags": 1}', {"X-Origin": "yes"})
MARKER = Entry(STAMP, "application/zip", None)                 # validators only
OUTDATED = Entry("orthanc 1.13.0|20230220T130000", "application/json", b"old")
OTHER_ORTHANC = Entry("orthanc 1.10.1|20230220T140000", "application/json", b"old")

MATCH = Evaluation(True, "If-None-Match matches")
SINCE = Evaluation(True, "not modified since If-Modified-Since")
PLAIN = Evaluation(False, "unconditional request")
OTHER = Evaluation(False, "If-None-Match does not match")

KEEP = Storage(None)
BINARY = Storage("binary (StoreBinary is off)")
LARGE = Storage("larger than MaximumEntrySize or an eighth of MaximumSize")

Summary = Union[Tuple[int, Outcome, str], Tuple[str, Optional[Entry]]]


def summary(step: policy.Step) -> Summary:
    """A decision as (status, outcome, reason); a state as its name (and stored entry)."""
    if isinstance(step, Decision):
        return step.status, step.outcome, step.reason
    if isinstance(step, Miss):
        return "Miss", step.stored
    return type(step).__name__, None


def check(step: policy.Step, answer: Optional[Fetched]) -> None:
    """A 304 carries no answer; a 200 carries ``answer``."""
    if isinstance(step, Decision):
        assert (step.answer is None) == (step.status == 304)
        if step.status == 200:
            assert step.answer == answer


def revalidated(reason: str) -> Tuple[int, Outcome, str]:
    return 304, Outcome.REVALIDATED, reason


# --- The one 304 rule --------------------------------------------------------------------------

@pytest.mark.parametrize("precondition, proof, expected", [
    (MATCH, Proof.ETAG_SENT, revalidated("If-None-Match matches")),
    (MATCH, Proof.STORED, revalidated("If-None-Match matches")),
    (MATCH, Proof.FETCHED, revalidated("If-None-Match matches (checked with Orthanc)")),
    (SINCE, Proof.SHARED,
     revalidated("not modified since If-Modified-Since (checked by a concurrent request)")),
    (MATCH, Proof.SAME_CONTENT, revalidated("If-None-Match matches (same content)")),
] + [(precondition, proof, None) for precondition in (PLAIN, OTHER) for proof in Proof])
def test_not_modified(precondition, proof, expected):
    found = policy.not_modified(precondition, proof)
    assert (None if found is None else summary(found)) == expected
    assert found is None or found.answer is None


@pytest.mark.parametrize("if_none_match, expected", [
    (None, False),
    (ETAG, True),
    ('"ours"', True),                    # the strong form: weak comparison
    ('"other", ' + ETAG, True),
    ("*", False),                        # matches anything: not our tag
    ('"other"', False),
    ("garbage", False),                  # malformed: ignored
])
def test_etag_sent(if_none_match, expected):
    headers = {} if if_none_match is None else {"if-none-match": if_none_match}
    assert policy.etag_sent(headers, ETAG) is expected


# --- Before reading, after reading the store ---------------------------------------------------

@pytest.mark.parametrize("precondition, our_etag_sent, expected", [
    (MATCH, True, revalidated("If-None-Match matches")),
    (MATCH, False, ("ReadStore", None)),     # "*": the store or Orthanc must show it exists
    (SINCE, False, ("ReadStore", None)),
    (OTHER, False, ("ReadStore", None)),
    (PLAIN, False, ("ReadStore", None)),
])
def test_on_request(precondition, our_etag_sent, expected):
    step = policy.on_request(precondition, STAMP, our_etag_sent)
    assert summary(step) == expected
    if isinstance(step, ReadStore):
        assert step == ReadStore(precondition, STAMP)


@pytest.mark.parametrize("stored, precondition, expected", [
    (WHOLE, PLAIN, (200, Outcome.HIT, "stored at this version")),
    (WHOLE, OTHER, (200, Outcome.HIT, "stored at this version")),
    (WHOLE, MATCH, revalidated("If-None-Match matches")),
    (WHOLE, SINCE, revalidated("not modified since If-Modified-Since")),
    (MARKER, MATCH, revalidated("If-None-Match matches")),   # validators suffice for a 304
    (MARKER, PLAIN, ("Miss", MARKER)),
    (None, PLAIN, ("Miss", None)),
    (None, MATCH, ("Miss", None)),                            # only Orthanc can show it exists
    (OUTDATED, PLAIN, ("Miss", OUTDATED)),
    (OUTDATED, MATCH, ("Miss", OUTDATED)),
    (OTHER_ORTHANC, PLAIN, ("Miss", OTHER_ORTHANC)),
])
def test_read_store(stored, precondition, expected):
    step = ReadStore(precondition, STAMP).next(stored)
    assert summary(step) == expected
    check(step, ANSWER)
    if isinstance(step, Miss):
        assert step == Miss(precondition, STAMP, stored)


@pytest.mark.parametrize("stored, expected", [
    (None, True),
    (OUTDATED, True),
    (OTHER_ORTHANC, True),
    (MARKER, False),     # current: a concurrent flight would write the same validators
])
def test_a_leader_reads_again_unless_the_entry_is_current(stored, expected):
    assert Miss(PLAIN, STAMP, stored).read_again is expected


@pytest.mark.parametrize("first, second, expected", [
    (None, WHOLE, (200, Outcome.HIT, "stored at this version")),
    (OUTDATED, None, ("Miss", None)),
    (None, OUTDATED, ("Miss", OUTDATED)),
    (None, MARKER, ("Miss", MARKER)),
])
def test_a_second_read_decides_as_the_first(first, second, expected):
    step = Miss(PLAIN, STAMP, first).again(second)
    assert summary(step) == expected
    check(step, ANSWER)


@pytest.mark.parametrize("precondition, expected", [
    (PLAIN, (200, Outcome.HIT, "computed by a concurrent request")),
    (OTHER, (200, Outcome.HIT, "computed by a concurrent request")),
    (MATCH, revalidated("If-None-Match matches (checked by a concurrent request)")),
    (SINCE, revalidated("not modified since If-Modified-Since (checked by a concurrent request)")),
])
def test_shared(precondition, expected):
    step = Miss(precondition, STAMP, None).shared(ANSWER)
    assert summary(step) == expected
    check(step, ANSWER)


# --- After Orthanc answered ------------------------------------------------------------------

@pytest.mark.parametrize("stored, precondition, storage, written, available, expected", [
    (None, PLAIN, KEEP, True, True, (200, Outcome.MISS, "not stored")),
    (OUTDATED, PLAIN, KEEP, True, True,
     (200, Outcome.STALE_REFRESHED, "outdated version replaced")),
    (OTHER_ORTHANC, PLAIN, KEEP, True, True,
     (200, Outcome.STALE_REFRESHED, "outdated version replaced")),
    (MARKER, PLAIN, BINARY, True, True,
     (200, Outcome.MISS, "only validators stored, not kept: binary (StoreBinary is off)")),
    (None, PLAIN, BINARY, True, True,
     (200, Outcome.MISS, "not stored, not kept: binary (StoreBinary is off)")),
    (None, PLAIN, LARGE, True, True, (200, Outcome.MISS, "not stored, not kept: larger than "
                                      "MaximumEntrySize or an eighth of MaximumSize")),
    (OUTDATED, PLAIN, LARGE, True, True,
     (200, Outcome.STALE_REFRESHED, "outdated version replaced, not kept: larger than "
                                    "MaximumEntrySize or an eighth of MaximumSize")),
    # The store fails: BYPASS, whatever was stored.
    (None, PLAIN, KEEP, False, False,
     (200, Outcome.BYPASS, "not stored, store unavailable, not kept: store unavailable")),
    (OUTDATED, PLAIN, KEEP, False, False, (200, Outcome.BYPASS, "outdated version replaced, "
                                           "store unavailable, not kept: store unavailable")),
    (None, PLAIN, BINARY, False, False, (200, Outcome.BYPASS, "not stored, store unavailable, "
                                         "not kept: binary (StoreBinary is off)")),
    # A write refused by a store that works again, or one that fails only afterwards.
    (None, PLAIN, KEEP, False, True,
     (200, Outcome.MISS, "not stored, not kept: store unavailable")),
    (None, PLAIN, KEEP, True, False, (200, Outcome.BYPASS, "not stored, store unavailable")),
    # Validators that match: a 304, whatever the store did.
    (None, MATCH, KEEP, True, True, revalidated("If-None-Match matches (checked with Orthanc)")),
    (OUTDATED, SINCE, BINARY, False, False,
     revalidated("not modified since If-Modified-Since (checked with Orthanc)")),
])
def test_fetched(stored, precondition, storage, written, available, expected):
    step = Miss(precondition, STAMP, stored).fetched(ANSWER, storage, written, available)
    assert summary(step) == expected
    check(step, ANSWER)


@pytest.mark.parametrize("precondition, held, expected", [
    (PLAIN, "", (200, Outcome.MISS, "changed less than 3 s ago: not stored")),
    (OTHER, "", (200, Outcome.MISS, "changed less than 3 s ago: not stored")),
    (MATCH, "", revalidated("If-None-Match matches (same content)")),
    (OTHER, "nodes unheard", (200, Outcome.BYPASS, "not served from the store: nodes unheard")),
    (MATCH, "nodes unheard", revalidated("If-None-Match matches (same content)")),
    # An index answer (a list of children) is never stored by design: no failure.
    (PLAIN, policy.INDEX_ANSWER, (200, Outcome.MISS, "never stored: " + policy.INDEX_ANSWER)),
    (MATCH, policy.INDEX_ANSWER, revalidated("If-None-Match matches (same content)")),
])
def test_on_unsettled(precondition, held, expected):
    step = policy.on_unsettled(precondition, ANSWER, timedelta(seconds=3), held)
    assert summary(step) == expected
    check(step, ANSWER)


# --- What is current, what is kept -----------------------------------------------------------

@pytest.mark.parametrize("stored, current, whole", [
    (None, None, None),
    (WHOLE, WHOLE, ANSWER),
    (MARKER, MARKER, None),
    (OUTDATED, None, None),
    (OTHER_ORTHANC, None, None),
])
def test_current_and_whole(stored, current, whole):
    assert policy.current(stored, STAMP) == current
    assert policy.whole(stored, STAMP) == whole


@pytest.mark.parametrize("uri, length, overrides, why_not", [
    ("/studies/st/shared-tags", MB, {}, None),
    ("/studies/st/shared-tags", 0, {}, None),
    ("/studies/st/shared-tags", 64 * MB, {}, None),
    ("/studies/st/shared-tags", 64 * MB + 1, {}, LARGE.why_not),
    ("/studies/st/shared-tags", MB + 1, {"maximum_entry_size": 1}, LARGE.why_not),
    ("/studies/st/shared-tags", MB, {"maximum_entry_size": 1}, None),
    # An eighth of MaximumSize (8 MB of 64), below MaximumEntrySize.
    ("/studies/st/shared-tags", 8 * MB, {"maximum_size": 64}, None),
    ("/studies/st/shared-tags", 8 * MB + 1, {"maximum_size": 64}, LARGE.why_not),
    ("/studies/st/archive", 10, {}, BINARY.why_not),
    ("/studies/st/archive", 10, {"store_binary": True}, None),
    ("/instances/in/preview", 10, {}, BINARY.why_not),
    # Size is named first: StoreBinary would not help.
    ("/studies/st/archive", 65 * MB, {}, LARGE.why_not),
    ("/studies/st/archive", 65 * MB, {"store_binary": True}, LARGE.why_not),
])
def test_storage(uri, length, overrides, why_not):
    found = match(uri)
    assert found is not None
    settings = load_settings({}, dict({"directory": "/unused"}, **overrides))
    rule = policy.storage(found[0], length, settings)
    assert rule == Storage(why_not)
    assert rule.keeps_body is (why_not is None)


@pytest.mark.parametrize("storage, body", [(KEEP, ANSWER.body), (BINARY, None), (LARGE, None)])
def test_the_entry_to_write(storage, body):
    assert storage.entry(STAMP, ANSWER) == Entry(STAMP, ANSWER.content_type, body,
                                                 ANSWER.headers)


# --- No I/O ----------------------------------------------------------------------------------

def test_policy_imports_no_module_that_does_io():
    """No store, origin, flights nor orthanc: the policy only sees values."""
    modules = set()
    for node in ast.walk(ast.parse(inspect.getsource(policy))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
    assert modules <= {"__future__", "dataclasses", "datetime", "enum", "typing",
                       "..core.data", "..core.routes", "..core.settings",
                       "..http.validators"}
