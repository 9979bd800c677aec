"""The Redis store (``Backend: redis``) inside a real Orthanc, on a real redis-server.

Beside a plain Orthanc holding the same files (the oracle): a miss then a
hit with plain Orthanc's body, the entries under the prefix in Redis; Redis
stopped: the same answers (BYPASS, or HIT from the memory front until the
first failed call empties it), never a 5xx, one warning; Redis back (empty,
on the same port): hits again after the retry delay; Orthanc restarted:
its entries and its generations in Redis give hits once it has joined.
"""

from __future__ import annotations

import re
import time
from typing import Callable

import pytest

from orthanc_cache_plugin.core.data import Outcome
from orthanc_cache_plugin.store.redis_backend import RedisStore
from orthanc_cache_plugin.store.redis_connection import RedisConnection
from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer
from support.redis_server import RedisServer

#: Also run on Debian 12's Orthanc 1.10.1 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

NO_GZIP = {"Accept-Encoding": "identity"}
STATUS = "X-Cache-Status"
#: Seconds after an upload before the plugin stores answers (freshness.SETTLE is 3 s).
SETTLE = 3.2
PREFIX = "orthanc-cache-test:"


def test_answers_from_redis_and_through_its_outage(
        cached_orthanc: Callable[..., OrthancServer],
        orthanc_factory: Callable[..., OrthancServer]) -> None:
    with RedisServer() as redis:
        server = cached_orthanc({"Backend": "redis", "RedisUrl": redis.url,
                                 "KeyPrefix": PREFIX})
        plain = orthanc_factory()
        files = make_study("PAT-redis", 2, 2, seed="redis")
        uploaded = [(server.upload(dicom), plain.upload(dicom)) for dicom in files]
        assert all(ours["ID"] == theirs["ID"] for ours, theirs in uploaded)
        study, series = uploaded[0][0]["ParentStudy"], uploaded[0][0]["ParentSeries"]
        time.sleep(SETTLE)
        path = "/studies/%s/shared-tags" % study
        others = ["/series/%s/instances-tags" % series, "/studies/%s/instances-tags?short" % study]
        expected = {each: plain.get(each, headers=NO_GZIP).content for each in [path] + others}

        def answer(each: str) -> str:
            response = server.get(each, headers=NO_GZIP)
            assert response.status_code == 200, (each, response.status_code)
            assert response.content == expected[each], each
            return response.headers[STATUS]

        assert server.wait_for_log(r"active, store in redis://127\.0\.0\.1:%d/0 \(keys %s\*\) "
                                   r"\(available\)" % (redis.port, re.escape(PREFIX)))
        assert [answer(path), answer(path)] == ["MISS", "HIT"]
        keys = redis.keys("*")
        assert keys and all(key.startswith(PREFIX.encode()) for key in keys)
        entry = (PREFIX + "e:" + path).encode()
        assert any(key.startswith(entry) for key in keys), keys
        time.sleep(RedisStore.FIGURES_PERIOD)  # the counts are read once a second
        statistics = server.get("/cache/statistics").json()
        assert statistics["Entries"] >= 1 and statistics["StoreAvailable"] is True

        # Redis stopped: Orthanc's answers, never an error, one warning.
        redis.stop()
        outcomes = [answer(each) for each in others + [path] * 3]
        time.sleep(0.6)  # the memory front's touches fail within a tick, emptying it
        outcomes += [answer(each) for each in [path] + others]
        assert set(outcomes) <= {"BYPASS", "HIT"} and outcomes[-3:] == ["BYPASS"] * 3, outcomes
        failed = "cache store redis://127.0.0.1:%d/0 (keys %s*) failed" % (redis.port, PREFIX)
        # Requests no longer reach the store once the node stops hearing the others: the
        # metrics' reading of its counts (every 0.25 s) notices the failure.
        assert server.wait_for_log(re.escape(failed), timeout=5)
        assert server.wait_for_log(re.escape("cannot hear the other nodes' changes"))
        assert server.log_text().count(failed) == 1
        assert server.get("/cache/statistics").json()["StoreAvailable"] is False

        # Redis back, empty, on the same port: the store reconnects by itself.
        redis.start()
        server.wait_for_log(re.escape("cache store redis://127.0.0.1:%d/0 (keys %s*) works again"
                                      % (redis.port, PREFIX)),
                            timeout=RedisConnection.RETRY_DELAY * 3 + 5)
        # ...and the node hears the other nodes again (a second "hears" line).
        assert server.wait_for_log(r"hears the other nodes' changes(.|\n)*"
                                   r"hears the other nodes' changes", timeout=20)
        assert [answer(path), answer(path)] == ["MISS", "HIT"]
        assert server.log_text().count(failed) == 1

        # Orthanc restarted: the entries are in Redis, the versions there too (and in the
        # state files); the node joins the others before Orthanc answers HTTP.
        server.restart()
        assert answer(path) == "HIT"
        assert server.outcomes(path)[-1] == Outcome.HIT
