"""Calls into Orthanc: its REST API as a plugin sees it, and its log.

In the host layer, the only one that imports ``orthanc``.  Every call of
the package goes through here, so that a failed
call always comes back as the same value, Orthanc's error code, and every
log line carries the same prefix (operators grep for it) and none holds a
secret of the settings (:func:`hide`).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence, Union

import orthanc

from ..core.settings import redact
from .registration import REGISTRATION

LOG_PREFIX = "cache plugin: "


def hide(secrets: Sequence[str]) -> None:
    """Mask ``secrets`` in every later log line (their text may come from an exception)."""
    REGISTRATION.secrets = tuple(secrets)


def warn(message: str) -> None:
    orthanc.LogWarning(LOG_PREFIX + redact(message, REGISTRATION.secrets))


def info(message: str) -> None:
    orthanc.LogInfo(LOG_PREFIX + redact(message, REGISTRATION.secrets))


def error(message: str) -> None:
    orthanc.LogError(LOG_PREFIX + redact(message, REGISTRATION.secrets))


def error_without_prefix(message: str) -> None:
    """An error in words that may not be the plugin's (a script's callback failed)."""
    orthanc.LogError(redact(message, REGISTRATION.secrets))


def _error_code(failure: Exception) -> int:
    """Orthanc's error code (``ErrorCode`` value) of a failed call; -1 when it has none."""
    return failure.args[0] if failure.args and isinstance(failure.args[0], int) else -1


def _answer_or_code(call: Callable[[], Any]) -> Union[bytes, int]:
    try:
        answer: bytes = call()
        return answer
    except orthanc.OrthancException as failure:
        return _error_code(failure)


def get(uri: str) -> Union[bytes, int]:
    """Orthanc's built-in answer to a GET: the body, or the error code."""
    return _answer_or_code(lambda: orthanc.RestApiGet(uri))


def get_after_plugins(uri: str) -> Union[bytes, int]:
    """The answer to a GET of any route, plugins' routes included: the body, or the
    error code."""
    return _answer_or_code(lambda: orthanc.RestApiGetAfterPlugins(uri))


def post(uri: str, body: bytes) -> Union[bytes, int]:
    """Orthanc's built-in answer to a POST: the body, or the error code."""
    return _answer_or_code(lambda: orthanc.RestApiPost(uri, body))


def delete(uri: str) -> Union[bytes, int]:
    """Orthanc's built-in DELETE: ``b""`` when done (a plugin gets no body), or the error code."""
    return _answer_or_code(lambda: orthanc.RestApiDelete(uri) or b"")


def get_json(uri: str) -> Any:
    """The JSON of a GET that must succeed (``/system``, ``/changes``); raises
    ``orthanc.OrthancException`` when it fails, for the caller's own recovery."""
    return json.loads(orthanc.RestApiGet(uri))


def touch_and_undo(uri: str) -> bool:
    """PUT an empty value at ``uri`` and DELETE it again (a change logged in
    /changes that leaves nothing behind); False when either call fails."""
    try:
        orthanc.RestApiPut(uri, b"")
        orthanc.RestApiDelete(uri)
    except orthanc.OrthancException:
        return False
    return True
