"""The plugin's settings: defaults, the ``CachePlugin`` section, validation.

Settings come from the ``CachePlugin`` section of Orthanc's configuration;
keyword arguments of :func:`orthanc_cache_plugin.enable_cache_plugin`
override them.  Every setting is declared once, as a field of :class:`Settings`;
:data:`SETTINGS` lists them for the documentation and its drift test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote

SECTION = "CachePlugin"


class SettingsError(ValueError):
    """A setting has an invalid value; the message names it."""


class Backend(Enum):
    """Where the server-side store keeps its entries (the setting ``Backend``)."""

    #: A diskcache database in ``Directory``: one node, nothing else to run.
    DISK = "disk"
    #: A Redis or Valkey server at ``RedisUrl``, keys under ``KeyPrefix``.
    REDIS = "redis"


@dataclass(frozen=True)
class Setting:
    """One configuration entry: its name in Orthanc's file, type, default, meaning."""

    name: str
    type: type
    default: Any
    description: str
    minimum: Optional[int] = None
    may_be_empty: bool = False
    #: The only values allowed (a closed set), if any.
    choices: Tuple[str, ...] = ()
    #: A regular expression the start of the value must match, and what it means.
    pattern: Optional[Tuple[str, str]] = None
    #: The value holds a secret (a password in a URL...): it is masked wherever the plugin
    #: shows it (statistics, log, error messages; see :func:`masked`).
    secret: bool = False


def _setting(name: str, kind: type, default: Any, description: str,
             minimum: Optional[int] = None, may_be_empty: bool = False,
             choices: Tuple[str, ...] = (), pattern: Optional[Tuple[str, str]] = None,
             secret: bool = False) -> Any:
    """A field of :class:`Settings`, carrying its :class:`Setting` (no Python default:
    :func:`load_settings` always gives every value)."""
    return field(metadata={"setting": Setting(name, kind, default, description, minimum,
                                               may_be_empty, choices, pattern, secret)})


#: What a secret is shown as.
MASK = "***"
#: Query arguments of a URL whose value is a secret (``?password=...``): names holding these.
_SECRET_ARGUMENTS = ("password", "passwd", "secret", "token")
#: Secrets shorter than this are not searched for in free text (see :func:`redact`): replacing
#: every "ab" of a log line would garble it.  Where the plugin formats a URL itself, its
#: password is masked whatever its length (:func:`mask_url`).
_SHORTEST_REDACTED = 4


def _url_parts(url: str) -> Optional[Tuple[str, str, str, str]]:
    """(scheme and ``://``, user information or "", the rest of the authority and the path,
    the query with its ``?`` and what follows) of a URL; None when it has no ``://``.

    The user information is everything before the last ``@`` ahead of the query, so that a
    password holding an unencoded ``/`` or ``@`` is still taken whole."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    before_query, question, query = rest.partition("?")
    userinfo, at, location = before_query.rpartition("@")
    if not at:
        return scheme + separator, "", before_query, question + query
    return scheme + separator, userinfo + "@", location, question + query


def _is_secret_argument(name: str) -> bool:
    lowered = unquote(name).lower()
    return any(word in lowered for word in _SECRET_ARGUMENTS)


def mask_url(url: str) -> str:
    """``url`` with its password shown as ``***``: ``redis://user:secret@host/0`` ->
    ``redis://user:***@host/0``; ``unix:///run/redis.sock?db=0&password=secret`` ->
    ``unix:///run/redis.sock?db=0&password=***``.

    The user name stays (it tells which account the plugin uses); user information without
    ``:`` is a user name to the Redis client (``redis://name@host``), kept too.  Query
    arguments named like a password (``password``, ``ssl_password``, ``token``...) are
    masked.  Not a URL: everything masked."""
    parts = _url_parts(url)
    if parts is None:
        return MASK
    scheme, userinfo, location, query = parts
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + MASK + "@"
    if query:
        arguments = re.split(r"([&;])", query[1:])
        for index in range(0, len(arguments), 2):
            name, equals, _ = arguments[index].partition("=")
            if equals and _is_secret_argument(name):
                arguments[index] = name + "=" + MASK
        query = "?" + "".join(arguments)
    return scheme + userinfo + location + query


def _secrets_of_url(url: str) -> List[str]:
    """The passwords a URL holds, as written and decoded (the client decodes ``%40``)."""
    parts = _url_parts(url)
    if parts is None:
        return [url]
    found = []
    userinfo = parts[1][:-1]
    if ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    for argument in re.split(r"[&;]", parts[3][1:]):
        name, equals, value = argument.partition("=")
        if equals and _is_secret_argument(name):
            found.append(value)
    return found + [unquote(secret) for secret in found]


def masked(setting: Setting, value: Any) -> Any:
    """``value`` as the plugin shows it: a secret setting's URL without its password
    (:func:`mask_url`), any other secret as ``***``; other settings as they are."""
    if not setting.secret:
        return value
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return MASK


def secrets_in(setting: Setting, value: Any) -> Tuple[str, ...]:
    """The secret strings of a setting's value, which no text the plugin writes may hold."""
    if not setting.secret or not isinstance(value, str):
        return ()
    found = _secrets_of_url(value) if "://" in value else [value]
    return tuple(sorted({secret for secret in found if secret}, key=len, reverse=True))


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every occurrence of ``secrets`` (longest first) replaced by ``***``:
    for messages whose text the plugin does not choose (an exception from the Redis client,
    from a script).  Secrets shorter than 4 characters are left (see _SHORTEST_REDACTED)."""
    for secret in secrets:
        if len(secret) >= _SHORTEST_REDACTED and secret in text:
            text = text.replace(secret, MASK)
    return text


@dataclass(frozen=True)
class Settings:
    """Effective settings, in Python names (``MaximumSize`` is ``maximum_size``).

    Each field declares its setting once (:func:`_setting`): the name in
    Orthanc's configuration file, type, default and meaning, which loading,
    validation and the documentation (tools/configuration_doc.py) all read.
    """

    enable: bool = _setting(
        "Enable", bool, True,
        "Turn the plugin on. When false, no route is registered and Orthanc answers alone.")
    directory: str = _setting(
        "Directory", str, "/var/lib/orthanc/cache",
        "Folder of the server-side store (created when missing). Give every Orthanc "
        "process its own folder.")
    maximum_size: int = _setting(
        "MaximumSize", int, 1024,
        "Size limit of the server-side store in MB; least-recently-used entries are "
        "evicted beyond it.", minimum=1)
    expiration: int = _setting(
        "Expiration", int, 604800,
        "Seconds after which a stored entry expires (7 days).", minimum=1)
    cache_control: str = _setting(
        "CacheControl", str, "no-cache",
        "Cache-Control header sent with every cached route's 200 and 304. The default, "
        "no-cache, lets browsers and proxies keep answers but makes them ask Orthanc before "
        "each use (a 304 when nothing changed), so they always show current data. "
        "\"max-age=604800, s-maxage=604800, public\" lets any cache serve its copy for a "
        "week without asking: only for archives whose studies never change, as changes "
        "then show up to a week late. Wherever Orthanc decides access per request (its "
        "users, the authorization plugin, a filter of your script), public and s-maxage "
        "are replaced by private, and Vary names the credential headers: see "
        "docs/deployment.md. Expires is Date plus its max-age (Date itself without one).")
    store_binary: bool = _setting(
        "StoreBinary", bool, False,
        "Also keep binary answers (file, preview, frames, archive, media, pdf) in the "
        "server-side store. JSON answers are always stored.")
    maximum_entry_size: int = _setting(
        "MaximumEntrySize", int, 64,
        "Largest answer in MB kept in the server-side store (and at most an eighth of "
        "MaximumSize); larger answers are served but not stored.", minimum=1)
    memory_size: int = _setting(
        "MemorySize", int, 64,
        "MB of the most recently used stored answers also kept in Orthanc's memory, so "
        "that a hit reads no file (each answer at most an eighth of it); 0 to read every "
        "hit from disk.", minimum=0)
    warm_up: bool = _setting(
        "WarmUp", bool, True,
        "Compute and store the JSON routes of a patient, study or series when Orthanc "
        "reports it stable.")
    warm_up_queue_size: int = _setting(
        "WarmUpQueueSize", int, 1000,
        "Most resources waiting for warm-up; beyond it, new ones are skipped (and "
        "computed on their first request instead).", minimum=1)
    cache_status_header: str = _setting(
        "CacheStatusHeader", str, "X-Cache-Status",
        "Response header saying what the cache did (HIT, MISS, STALE-REFRESHED, "
        "REVALIDATED, BYPASS, PASS); empty to send none.", may_be_empty=True)
    watch_http_writes: bool = _setting(
        "WatchHttpWrites", bool, True,
        "See REST writes before Orthanc runs them (its incoming-request filter), so the "
        "next GET is fresh at once, and remember each resource's LastUpdate between "
        "changes. Off: writes are seen through Orthanc's change events, a moment after "
        "they are answered, and every request asks Orthanc for LastUpdate; use it where "
        "clients send header bytes that are not UTF-8 (with a filter registered, the "
        "Python plugin answers them with a 500 on every route). With the Python plugin "
        "4.0 (Debian 12) memory grows under sustained traffic either way, less without "
        "the filter: see docs/freshness.md.")
    admin_prefix: str = _setting(
        "AdminPrefix", str, "/cache",
        "Where the admin API lives: GET {prefix}/statistics, DELETE {prefix}, "
        "DELETE {prefix}/{level}/{id}, POST {prefix}/{level}/{id}/warm-up.")
    lock_timeout: int = _setting(
        "LockTimeout", int, 30,
        "Seconds a request that misses waits for a concurrent request already computing "
        "the same answer (same route, query, representation and version), then uses its "
        "answer instead of asking Orthanc again; past it, or when that request fails, it "
        "asks Orthanc itself. 0 to never wait.", minimum=0)
    backend: str = _setting(
        "Backend", str, Backend.DISK.value,
        "Where the server-side store keeps its entries: \"disk\" (a diskcache database in "
        "Directory) or \"redis\" (a Redis or Valkey server at RedisUrl, needing the "
        "package's redis extra, which the nodes of a cluster share: what one computed is a "
        "hit on the others; see docs/deployment.md). Directory keeps the plugin's small "
        "state files either way.",
        choices=tuple(backend.value for backend in Backend))
    redis_url: str = _setting(
        "RedisUrl", str, "redis://127.0.0.1:6379/0",
        "The Redis or Valkey server of Backend \"redis\": redis://[user:password@]host:port/db, "
        "rediss://... for TLS, or unix:///path/to/socket?db=0[&password=...]. The password "
        "is shown as *** wherever the plugin shows the URL (statistics, log, errors).",
        pattern=(r"(redis|rediss|unix)://", "a redis://, rediss:// or unix:// URL"),
        secret=True)
    key_prefix: str = _setting(
        "KeyPrefix", str, "orthanc-cache:",
        "Start of every key and channel the plugin uses in Redis; DELETE {AdminPrefix}, "
        "entry counts and sizes touch only these keys. The same on every node of a "
        "cluster (they share answers), another for each cluster (test, production).")
    redis_timeout: int = _setting(
        "RedisTimeout", int, 100,
        "Milliseconds each Redis call (connecting, sending, each wait for an answer) may "
        "take; past it the request goes to Orthanc and the store is left alone for a "
        "while.", minimum=1)

    @property
    def maximum_size_bytes(self) -> int:
        return self.maximum_size * 1024 * 1024

    @property
    def maximum_entry_size_bytes(self) -> int:
        return self.maximum_entry_size * 1024 * 1024

    @property
    def memory_size_bytes(self) -> int:
        return self.memory_size * 1024 * 1024

    @property
    def store_backend(self) -> Backend:
        return Backend(self.backend)

    def as_configuration(self, reveal_secrets: bool = False) -> Dict[str, Any]:
        """The settings under their configuration-file names, secrets masked (:func:`masked`)
        unless ``reveal_secrets``."""
        found = {}
        for entry in fields(self):
            setting, value = entry.metadata["setting"], getattr(self, entry.name)
            found[setting.name] = value if reveal_secrets else masked(setting, value)
        return found

    def secrets(self) -> Tuple[str, ...]:
        """Every secret string the settings hold (longest first), for :func:`redact`."""
        found = {secret for entry in fields(self)
                 for secret in secrets_in(entry.metadata["setting"], getattr(self, entry.name))}
        return tuple(sorted(found, key=len, reverse=True))

    def __repr__(self) -> str:  # a dataclass would show the secrets
        return "Settings(%s)" % ", ".join("%s=%r" % item
                                          for item in self.as_configuration().items())


#: Every setting, in the order of the documentation.
SETTINGS: Tuple[Setting, ...] = tuple(entry.metadata["setting"] for entry in fields(Settings))
_BY_NAME = {setting.name: setting for setting in SETTINGS}
_FILE_NAMES = {entry.name: entry.metadata["setting"].name for entry in fields(Settings)}
_PYTHON_NAMES = {file_name: python_name for python_name, file_name in _FILE_NAMES.items()}


def _check(setting: Setting, value: Any, origin: str) -> Any:
    # bool is a subclass of int in Python: refuse True where a number is expected.
    # A secret's value is never repeated in the message (it goes to Orthanc's log).
    shown = "a %s" % type(value).__name__ if setting.secret else repr(value)
    if setting.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SettingsError("%s: %s must be an integer, got %s" % (origin, setting.name, shown))
    if setting.type is not int and not isinstance(value, setting.type):
        raise SettingsError("%s: %s must be a %s, got %s"
                            % (origin, setting.name, setting.type.__name__, shown))
    if setting.minimum is not None and value < setting.minimum:
        raise SettingsError("%s: %s must be at least %d, got %s"
                            % (origin, setting.name, setting.minimum, shown))
    if setting.type is str and not setting.may_be_empty and not value.strip():
        raise SettingsError("%s: %s must not be empty" % (origin, setting.name))
    if setting.choices and value not in setting.choices:
        raise SettingsError("%s: %s must be one of %s, got %s"
                            % (origin, setting.name, ", ".join(setting.choices), shown))
    if setting.pattern is not None and not re.match(setting.pattern[0], value):
        # Not the value itself: a URL may hold a password.
        raise SettingsError("%s: %s must be %s" % (origin, setting.name, setting.pattern[1]))
    return value


def load_settings(configuration: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
    """Merge defaults, the ``CachePlugin`` section and keyword overrides.

    ``configuration`` is Orthanc's whole configuration (a parsed JSON object);
    ``overrides`` uses either Python names (``maximum_size``) or the file's
    names (``MaximumSize``).  Unknown names and wrong types raise
    :class:`SettingsError` with a message meant for Orthanc's log.
    """
    section = configuration.get(SECTION, {})
    if not isinstance(section, dict):
        raise SettingsError("the %s section of the configuration must be a JSON object" % SECTION)
    values = {setting.name: setting.default for setting in SETTINGS}
    for name, value in section.items():
        if name not in _BY_NAME:
            raise SettingsError("unknown setting %s.%s (known: %s)"
                                % (SECTION, name, ", ".join(sorted(_BY_NAME))))
        values[name] = _check(_BY_NAME[name], value, "configuration " + SECTION)
    for name, value in overrides.items():
        file_name = _FILE_NAMES.get(name, name)
        if file_name not in _BY_NAME:
            raise SettingsError("unknown keyword argument %s of enable_cache_plugin()" % name)
        values[file_name] = _check(_BY_NAME[file_name], value, "enable_cache_plugin()")
    return Settings(**{_PYTHON_NAMES[name]: value for name, value in values.items()})
