"""Unit tests of orthanc_cache_plugin.store.episodes (fail once, warn once, retry, works again).

One table: each row is a story of events on a fake clock, and what the log
and the counters say at its end.  Events: ``fail`` (a failure with a
reason), ``stale`` (a failure on a resource already replaced), ``at`` (the
clock moves to a time), ``due`` / ``not due`` (whether an attempt to reopen
is due now), ``backoff`` (the attempt failed), ``works`` / ``works elsewhere``
(a call worked, on the current resource or on a replaced one), ``stop``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import pytest

from orthanc_cache_plugin.store.episodes import FailureEpisode
from support.clock import Clock

FAILED = "S failed (%s); requests go to Orthanc until it works again"
AGAIN = "S works again"


class Story(NamedTuple):
    name: str
    events: Sequence[Tuple[str, ...]]
    warnings: List[str]
    failures: int
    failing: bool
    longest: Optional[float] = None


STORIES = [
    Story("nothing happens", [("due", "no"), ("works",)], [], 0, False),
    Story("one failure, one warning with its reason",
          [("fail", "OSError: disk I/O error")], [FAILED % "OSError: disk I/O error"], 1, True),
    Story("later failures of the episode are counted, not told",
          [("fail", "first"), ("fail", "second"), ("at", "3"), ("fail", "third")],
          [FAILED % "first"], 3, True),
    Story("works again: told once, and the next failure is a new episode",
          [("fail", "first"), ("works",), ("works",), ("fail", "second")],
          [FAILED % "first", AGAIN, FAILED % "second"], 2, True),
    Story("no attempt before the delay, one when it has passed",
          [("fail", "x"), ("at", "4.9"), ("due", "no"), ("at", "5"), ("due", "yes"),
           ("due", "no")], [FAILED % "x"], 1, True),
    Story("the delay counts from the last failure",
          [("fail", "x"), ("at", "3"), ("fail", "y"), ("at", "5"), ("due", "no"),
           ("at", "8"), ("due", "yes")], [FAILED % "x"], 2, True),
    Story("an attempt dates the next one",
          [("fail", "x"), ("at", "5"), ("due", "yes"), ("at", "9.9"), ("due", "no"),
           ("at", "10"), ("due", "yes")], [FAILED % "x"], 1, True),
    Story("without a longest delay, backoff changes nothing",
          [("fail", "x"), ("at", "5"), ("due", "yes"), ("fail", "x"), ("backoff",),
           ("at", "10"), ("due", "yes")], [FAILED % "x"], 2, True),
    Story("each failed attempt doubles the delay, up to the longest",
          [("fail", "x"),
           ("at", "5"), ("due", "yes"), ("fail", "x"), ("backoff",),  # next: 10 s later
           ("at", "14.9"), ("due", "no"), ("at", "15"), ("due", "yes"), ("fail", "x"),
           ("backoff",),  # 20 s, but at most 12
           ("at", "26.9"), ("due", "no"), ("at", "27"), ("due", "yes")],
          [FAILED % "x"], 3, True, longest=12.0),
    Story("working again resets the delay",
          [("fail", "x"), ("at", "5"), ("due", "yes"), ("fail", "x"), ("backoff",),
           ("at", "15"), ("due", "yes"), ("works",), ("fail", "y"), ("at", "20"),
           ("due", "yes")],
          [FAILED % "x", AGAIN, FAILED % "y"], 3, True, longest=60.0),
    Story("a stale failure is counted only",
          [("stale",), ("due", "no"), ("fail", "x"), ("at", "3"), ("stale",), ("at", "5"),
           ("due", "yes")], [FAILED % "x"], 3, True),
    Story("a call on a replaced resource does not end the episode",
          [("fail", "x"), ("works elsewhere",), ("at", "5"), ("due", "yes"), ("works",)],
          [FAILED % "x", AGAIN], 1, False),
    Story("stopped: no attempt, no word",
          [("fail", "x"), ("stop",), ("at", "100"), ("due", "no"), ("works",)],
          [FAILED % "x"], 1, False),
]


@pytest.mark.parametrize("story", STORIES, ids=[story.name for story in STORIES])
def test_failure_episodes(story: Story) -> None:
    warnings: List[str] = []
    clock = Clock(0.0)
    episode = FailureEpisode("S", warnings.append, clock, 5.0, story.longest)
    for event in story.events:
        kind = event[0]
        if kind == "fail":
            episode.failed(event[1])
        elif kind == "stale":
            episode.counted()
        elif kind == "at":
            clock.now = float(event[1])
        elif kind == "due":
            assert episode.retry_due() is (event[1] == "yes"), (event, clock.now)
        elif kind == "backoff":
            episode.backoff()
        elif kind == "works":
            episode.works()
        elif kind == "works elsewhere":
            episode.works(lambda: False)
        elif kind == "stop":
            episode.stop()
        else:
            raise AssertionError("unknown event %r" % (event,))
    assert (warnings, episode.failures, episode.failing) == \
        (story.warnings, story.failures, story.failing)
