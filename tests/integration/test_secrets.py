"""No secret leaves the plugin (issue #17): a known Redis password, never shown.

A real redis-server requires a password.  Orthancs use it with the right
password (in the URL's user information, and as ``?password=``), a wrong one,
and one whose settings are refused; each answers cached routes, its admin
API (statistics, evictions, warm-up, refusals), Prometheus metrics and
errors, and the Redis server is stopped under one of them (failure
warnings).  The password is then looked for in every answer (bodies and
headers), in the metrics and in Orthanc's whole log: it is never there, while
the masked URL is where the plugin names its store.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Dict, List

import pytest
import requests

from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer
from support.redis_server import RedisServer

#: Also run on Debian 12's Orthanc 1.10.1 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

PASSWORD = "K7-orthanc-redis-pw"
WRONG = "Wrong-guess-4-redis"
SETTLE = 3.2  # freshness.SETTLE, 3 s
PREFIX = "orthanc-cache-secrets:"


def exercise(server: OrthancServer, seed: str) -> List[requests.Response]:
    """Every kind of answer the plugin gives: hits and misses, 304, errors, admin API."""
    answers = []
    study = [server.upload(dicom) for dicom in make_study("PAT-" + seed, 1, 2, seed=seed)][0]
    time.sleep(SETTLE)
    path = "/studies/%s/shared-tags" % study["ParentStudy"]
    for _ in range(2):
        answers.append(server.get(path))
    answers.append(server.get(path, headers={"If-None-Match": answers[-1].headers["ETag"]}))
    answers += [
        server.get("/studies/unknown/shared-tags"),
        server.get("/instances/unknown/preview"),
        server.put(path, data=b"x"),
        server.get("/cache/statistics"),
        server.post("/cache/statistics"),
        server.delete("/cache/studies/unknown"),
        server.post("/cache/studies/%s/warm-up" % study["ParentStudy"]),
        server.delete("/cache/studies/%s" % study["ParentStudy"]),
        server.delete("/cache"),
    ]
    time.sleep(0.6)  # metrics are published every 0.25 s
    answers.append(server.get("/tools/metrics-prometheus"))
    return answers


def text_of(answers: List[requests.Response]) -> str:
    return "\n".join("%d %r\n%s" % (answer.status_code, dict(answer.headers),
                                    answer.content.decode("utf-8", "replace"))
                     for answer in answers)


def assert_hidden(text: str, what: str) -> None:
    for secret in (PASSWORD, WRONG):
        assert secret not in text, "%s shows a password:\n%s" % (
            what, "\n".join(line for line in text.splitlines() if secret in line))


def test_the_redis_password_is_in_no_answer_metric_or_log_line(
        cached_orthanc: Callable[..., OrthancServer]) -> None:
    with RedisServer(password=PASSWORD) as redis:
        masked = "redis://:***@127.0.0.1:%d/0" % redis.port
        urls = {"right": redis.url,
                "query": "redis://127.0.0.1:%d/0?password=%s" % (redis.port, PASSWORD),
                "wrong": redis.url.replace(PASSWORD, WRONG)}
        assert PASSWORD in urls["right"]
        servers: Dict[str, OrthancServer] = {
            name: cached_orthanc({"Backend": "redis", "RedisUrl": url, "KeyPrefix": PREFIX})
            for name, url in urls.items()}
        answers = {name: exercise(server, name) for name, server in servers.items()}

        # The store works with the right password, in either form, and fails with the wrong one.
        for name in ("right", "query"):
            assert [a.headers["X-Cache-Status"] for a in answers[name][:3]] == \
                ["MISS", "HIT", "REVALIDATED"], name
        assert [a.headers["X-Cache-Status"] for a in answers["wrong"][:2]] == ["BYPASS"] * 2
        statistics = {name: answers[name][6].json() for name in servers}
        assert statistics["right"]["Configuration"]["RedisUrl"] == masked
        assert statistics["right"]["Directory"] == "%s (keys %s*)" % (masked, PREFIX)
        assert statistics["query"]["Configuration"]["RedisUrl"] == \
            "redis://127.0.0.1:%d/0?password=***" % redis.port
        assert statistics["wrong"]["StoreAvailable"] is False
        assert servers["wrong"].wait_for_log(
            r"cache store %s \(keys %s\*\) failed \(\w+" % (re.escape(masked), re.escape(PREFIX)))

        # The server goes away under a working node: failure warnings, errors of the client.
        redis.stop()
        path = answers["right"][0].request.path_url
        for _ in range(3):
            answer = servers["right"].get(path)
            assert answer.status_code == 200, answer.status_code
            assert answer.headers["X-Cache-Status"] in ("MISS", "BYPASS", "HIT")
        servers["right"].wait_for_log(re.escape("cache store %s (keys %s*) failed" % (
            masked, PREFIX)))
        more = [servers["right"].get("/cache/statistics")]

    for name, server in servers.items():
        assert_hidden(text_of(answers[name] + (more if name == "right" else [])),
                      "the answers of %s" % name)
        server.stop()
        log = server.log_text()
        assert "cache plugin: version" in log and "***" in log, name
        assert_hidden(log, "Orthanc's log (%s)" % name)


@pytest.mark.parametrize("url", [
    "http://:%s@127.0.0.1:6379/0" % PASSWORD,           # not a Redis URL
    ["redis://:%s@127.0.0.1:6379/0" % PASSWORD],         # not a string
])
def test_refused_settings_do_not_repeat_the_password(
        cached_orthanc: Callable[..., OrthancServer], url: object) -> None:
    server = cached_orthanc({"Backend": "redis", "RedisUrl": url})
    assert server.get("/studies/unknown/shared-tags").status_code == 404
    server.wait_for_log(r"cache plugin: not started, invalid settings: .*RedisUrl")
    server.stop()
    assert_hidden(server.log_text(), "Orthanc's log")
