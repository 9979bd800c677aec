"""Orthanc PythonScript of bench/ladder.py: the floor plus chosen parts of a hit's work.

``BENCH_LADDER`` (environment) lists the parts, comma-separated:

* ``filter``: an incoming-HTTP-request filter that accepts everything
  (the plugin registers one to announce writes);
* ``lastupdate``: ``RestApiGet`` of the study's ``LastUpdate`` (the plugin's
  version lookup);
* ``store``: read the answer from a diskcache store (``least-recently-stored``,
  SQLite connections kept per OS thread);
* ``lru``: the store evicts ``least-recently-used``, as the plugin's does:
  every read then updates the entry's access time in a write transaction;
* ``fresh-connections``: diskcache's own per-thread connections, which the
  Python plugin's fresh thread state per callback turns into a new SQLite
  connection per request, as in the plugin today;
* ``log``: one ``orthanc.LogInfo`` per request (filtered out without --verbose);
* ``onchange``: a change callback that does nothing (the plugin registers one
  for warm-up and freshness): costs ingest, not hits.

Without parts it is the floor (bench/floor.py): bytes from a dict.
"""

import hashlib
import os
import threading

import orthanc

PARTS = set(filter(None, os.environ.get("BENCH_LADDER", "").split(",")))
_ANSWERS = {}
_STORE = None


class _PerOsThread:
    """Like threading.local, but keyed by OS thread: survives the thread state that
    Orthanc's Python plugin creates and drops around every callback."""

    def __init__(self):
        object.__setattr__(self, "_values", {})

    def __getattr__(self, name):
        try:
            return self._values[(threading.get_ident(), name)]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self._values[(threading.get_ident(), name)] = value

    def __delattr__(self, name):
        self._values.pop((threading.get_ident(), name), None)


if "store" in PARTS:
    import diskcache

    _STORE = diskcache.Cache(
        os.environ["BENCH_LADDER_STORE"], size_limit=1 << 30, statistics=False,
        eviction_policy="least-recently-used" if "lru" in PARTS else "least-recently-stored")
    if "fresh-connections" not in PARTS:
        _STORE._local = _PerOsThread()

if "filter" in PARTS:
    def on_incoming_request(uri, **request):
        return True

    orthanc.RegisterIncomingHttpRequestFilter(on_incoming_request)


if "onchange" in PARTS:
    def on_change(change_type, level, resource_id):
        pass

    orthanc.RegisterOnChangeCallback(on_change)


def on_get(output, uri, **request):
    answer = _ANSWERS.get(uri)
    if answer is None:
        body = orthanc.RestApiGet(uri)
        answer = _ANSWERS[uri] = (body, 'W/"%s"' % hashlib.md5(body).hexdigest())
        if _STORE is not None:
            _STORE.set(uri, body)
    if "lastupdate" in PARTS:
        orthanc.RestApiGet("/studies/%s/metadata/LastUpdate" % request["groups"][0])
    body = _STORE.get(uri) if _STORE is not None else answer[0]
    if "log" in PARTS:
        orthanc.LogInfo("HIT GET %s: stored at this version" % uri)
    output.SetHttpHeader("ETag", answer[1])
    output.AnswerBuffer(body, "application/json")


orthanc.RegisterRestCallback("/studies/([^/]+)/shared-tags", on_get)
orthanc.LogWarning("benchmark ladder: %s" % (",".join(sorted(PARTS)) or "floor"))
