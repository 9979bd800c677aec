"""Orthanc Python startup script enabling the cache plugin.

Point Orthanc's ``PythonScript`` setting at this file.  Settings are read
from the ``CachePlugin`` section of Orthanc's configuration.
"""

import sys

# Where the Dockerfile and the README's set-up place the package when it is
# not installed in site-packages.
sys.path.append("/usr/share/orthanc/plugins/")

from orthanc_cache_plugin import enable_cache_plugin  # noqa: E402

enable_cache_plugin()
