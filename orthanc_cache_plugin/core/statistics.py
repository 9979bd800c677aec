"""Counters of what the cache did, for Prometheus metrics and the admin API."""

from __future__ import annotations

import threading
from typing import Any, Dict

from .data import Figures, Outcome

#: Every outcome a reply can have, by its name in the header and the log.
OUTCOMES = tuple(outcome.value for outcome in Outcome)


class Statistics:
    """Thread-safe counts of outcomes since Orthanc started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(OUTCOMES, 0)

    def count(self, outcome: Outcome) -> None:
        with self._lock:
            self._counts[outcome.value] += 1

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def metrics(self, figures: Figures) -> Dict[str, int]:
        """Values for ``/tools/metrics-prometheus``, named ``orthanc_cache_*``."""
        counts = self.counts()
        return {
            "orthanc_cache_hits": counts["HIT"],
            "orthanc_cache_misses": counts["MISS"] + counts["STALE-REFRESHED"],
            "orthanc_cache_not_modified": counts["REVALIDATED"],
            "orthanc_cache_bypasses": counts["BYPASS"],
            "orthanc_cache_entries": figures.entries,
            "orthanc_cache_size_bytes": figures.size,
            "orthanc_cache_warm_up_queue": figures.warm_up_queue,
            "orthanc_cache_warm_ups": figures.warm_ups_done,
        }

    def report(self, figures: Figures, directory: str, available: bool,
               configuration: Dict[str, Any]) -> Dict[str, Any]:
        """The JSON of ``GET {AdminPrefix}/statistics``."""
        counts = self.counts()
        return {
            "Hits": counts["HIT"],
            "Misses": counts["MISS"] + counts["STALE-REFRESHED"],
            "StaleRefreshed": counts["STALE-REFRESHED"],
            "NotModified": counts["REVALIDATED"],
            "Bypasses": counts["BYPASS"],
            "PassedThrough": counts["PASS"],
            "Entries": figures.entries,
            "Size": figures.size,
            "Directory": directory,
            "StoreAvailable": available,
            "WarmUpQueue": figures.warm_up_queue,
            "WarmUpsDone": figures.warm_ups_done,
            "Configuration": configuration,
        }
