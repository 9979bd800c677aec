"""Small named strings kept in files beside the stored entries.

The plugin remembers a few values across restarts (what computed the stored
answers, the generations, the last change seen, the Housekeeper's progress)
in files named ``state-NAME`` in the store's directory.  Outside diskcache,
they are never evicted, expired or cleared with the entries, and a damaged
database started afresh leaves them (see :mod:`.disk`).
"""

from __future__ import annotations

import os
import threading
from typing import Optional

#: Prefix of a state file's name; diskcache never makes such a file.
PREFIX = "state-"


class StateFiles:
    """Named strings in files ``state-NAME`` in ``directory``; errors are ignored."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, PREFIX + name)

    def get(self, name: str) -> Optional[str]:
        """The string kept under ``name``; None if absent or unreadable."""
        try:
            with open(self.path(name), encoding="utf-8") as file:
                return file.read()
        except (OSError, ValueError):
            return None

    def set(self, name: str, value: str) -> None:
        """Keep ``value`` under ``name``, replacing the file atomically; errors are ignored
        (the disk store's own failure handling reports a broken directory)."""
        path = self.path(name)
        temporary = "%s.%d.%d" % (path, os.getpid(), threading.get_ident())
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                file.write(value)
            os.replace(temporary, path)
        except OSError:
            pass
