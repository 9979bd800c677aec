"""Orthanc cache plugin: server-side copies of expensive GET answers and HTTP validators.

Use it from Orthanc's Python startup script::

    from orthanc_cache_plugin import enable_cache_plugin
    enable_cache_plugin()

Everything but the :mod:`.host` layer is plain Python that runs (and is
tested) without Orthanc.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["enable_cache_plugin", "__version__"]


def enable_cache_plugin(**overrides: Any) -> bool:
    """Register the cache with the running Orthanc; returns True when it is active.

    Settings come from the ``CachePlugin`` section of Orthanc's configuration;
    keyword arguments override them (``directory="/tmp/cache"`` or
    ``Directory="/tmp/cache"``).  Invalid settings are reported in Orthanc's
    log and leave Orthanc serving without the cache.
    """
    from .host.adapter import enable

    return enable(overrides)
