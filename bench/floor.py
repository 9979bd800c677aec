"""The floor: the fastest a Python plugin can answer the plugin's cached routes.

An Orthanc ``PythonScript`` that registers the same route patterns as the
cache plugin for ``shared-tags`` and ``instances-tags`` and answers each
URI + query string with bytes kept in a dict, fetched once with
``orthanc.RestApiGet`` on the first request.  No versioning, no store, no
validators beyond one fixed ETag per answer (so that revalidations can be
answered 304 with a single comparison).  Never use it for real: it serves
stale answers forever.

``bench/run.py`` compares the plugin with it: whatever a Python plugin
cannot avoid (Orthanc calling into Python under the GIL, the callback's
arguments, AnswerBuffer copying the body) is in the floor too.
"""

import hashlib

import orthanc

_ANSWERS = {}  # "uri?query" -> (body, etag)

# The cache plugin's patterns (orthanc_cache_plugin.core.routes), same regexes.
_PATTERNS = ["/%s/([^/]+)/%s" % (level, route)
             for level in ("patients", "studies", "series")
             for route in ("shared-tags", "instances-tags")]


def on_get(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    arguments = request.get("get") or {}
    key = uri + "?" + "&".join("%s=%s" % item for item in sorted(arguments.items())) \
        if arguments else uri
    answer = _ANSWERS.get(key)
    if answer is None:
        body = orthanc.RestApiGet(key)
        answer = (body, 'W/"%s"' % hashlib.md5(body).hexdigest())
        _ANSWERS[key] = answer
    output.SetHttpHeader("ETag", answer[1])
    if request["headers"].get("if-none-match") == answer[1]:
        output.SendHttpStatusCode(304)
        return
    output.AnswerBuffer(answer[0], "application/json")


for _pattern in _PATTERNS:
    orthanc.RegisterRestCallback(_pattern, on_get)
orthanc.LogWarning("benchmark floor: %d routes answered from memory" % len(_PATTERNS))
