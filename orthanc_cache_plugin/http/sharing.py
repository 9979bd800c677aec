"""Who may reuse an answer: the Cache-Control and Vary that cached routes send (pure).

The setting ``CacheControl`` says how long browsers and shared caches (nginx, a
CDN) may keep an answer.  Where Orthanc decides *per request* who may read it
(its own users, the authorization plugin's tokens, an incoming-request filter
of a script), a shared cache must not hand one user's copy to another user or
to a request without credentials, whatever that setting says: the value sent
then drops ``public`` and ``s-maxage`` and says ``private``
(:func:`private_cache_control`), and ``Vary`` names the request headers that
carry credentials.  :class:`Access` holds the facts (gathered by the adapter
from Orthanc's configuration and from what the startup script registers) and
:func:`sharing` turns them into the headers sent, with the reasons, which the
adapter logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Mapping, Sequence, Tuple

#: Orthanc's configuration section of the authorization plugin.
AUTHORIZATION_SECTION = "Authorization"

#: The token headers and GET arguments that each of the authorization plugin's
#: ``StandardConfigurations`` adds (orthanc-authorization, Plugin/Plugin.cpp).
STANDARD_TOKENS: Mapping[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "osimis-web-viewer": (("token",), ("token",)),
    "stone-webviewer": (("Authorization",), ()),
    "orthanc-explorer-2": (("Authorization", "token"), ("token",)),
    "ohif": (("Authorization",), ()),
    "volview": (("Authorization",), ()),
    "stl": (("Authorization",), ()),
}

#: A header name (RFC 9110 section 5.1: a token); anything else cannot be named in Vary.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Cache-Control directives that let a shared cache reuse an answer for another request.
_SHARED_ONLY = ("public", "s-maxage")


@dataclass(frozen=True)
class Access:
    """How the running Orthanc decides who may read an answer."""

    #: Orthanc's own HTTP authentication (``AuthenticationEnabled``, ``RegisteredUsers``).
    orthanc_users: bool = False
    #: An ``Authorization`` section: the authorization plugin asks a web service per request.
    authorization_plugin: bool = False
    #: Request headers and GET arguments carrying the authorization plugin's tokens.
    token_headers: Tuple[str, ...] = ()
    token_arguments: Tuple[str, ...] = ()
    #: An incoming-request filter of the startup script, registered after
    #: ``enable_cache_plugin()`` (which calls it) or before (which keeps ours out).
    script_filter: bool = False
    earlier_filter: bool = False
    #: A Lua script of ``LuaScripts`` that defines ``IncomingHttpRequestFilter``, or that
    #: could not be read (it may).
    lua_filter: bool = False

    def reasons(self) -> Tuple[str, ...]:
        """Why access is decided per request, in words; empty when it is not."""
        found: List[str] = []
        if self.orthanc_users:
            found.append("Orthanc's users")
        if self.authorization_plugin:
            tokens = ["token headers " + ", ".join(self.token_headers)] if self.token_headers \
                else []
            if self.token_arguments:
                tokens.append("GET arguments " + ", ".join(self.token_arguments))
            found.append("the authorization plugin"
                         + (" (%s)" % "; ".join(tokens) if tokens else ""))
        if self.script_filter:
            found.append("a filter of the startup script")
        if self.earlier_filter:
            found.append("a filter registered before enable_cache_plugin()")
        if self.lua_filter:
            found.append("a Lua IncomingHttpRequestFilter")
        return tuple(found)

    @property
    def per_request(self) -> bool:
        return bool(self.reasons())

    def by_path(self) -> Tuple[str, ...]:
        """The reasons that decide access from the request's path (all but Orthanc's users):
        they would not know a DICOMweb path below the cache's own root for what it is."""
        return tuple(reason for reason in self.reasons() if reason != "Orthanc's users")


def _strings(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str) and item)


def _unique(names: Sequence[str]) -> Tuple[str, ...]:
    """``names`` in order, each once, whatever its case (header names are case-insensitive)."""
    seen, kept = set(), []
    for name in names:
        if name.lower() not in seen:
            seen.add(name.lower())
            kept.append(name)
    return tuple(kept)


def orthanc_users(configuration: Mapping[str, Any]) -> bool:
    """Whether Orthanc authenticates HTTP requests: ``AuthenticationEnabled``, which Orthanc
    turns on by itself when ``RemoteAccessAllowed`` is true and it is absent."""
    return bool(configuration.get("AuthenticationEnabled",
                                  configuration.get("RemoteAccessAllowed", False)))


def access_of(configuration: Mapping[str, Any]) -> Access:
    """What Orthanc's configuration tells of access: its users and the authorization
    plugin's section (its token headers and GET arguments, standard configurations included).
    Filters of scripts are facts the adapter adds."""
    section = configuration.get(AUTHORIZATION_SECTION)
    headers: Tuple[str, ...] = ()
    arguments: Tuple[str, ...] = ()
    if isinstance(section, dict):
        headers = _strings(section.get("TokenHttpHeaders"))
        arguments = _strings(section.get("TokenGetArguments"))
        for standard in _strings(section.get("StandardConfigurations")):
            more_headers, more_arguments = STANDARD_TOKENS.get(standard, ((), ()))
            headers += more_headers
            arguments += more_arguments
    return Access(orthanc_users=orthanc_users(configuration),
                  authorization_plugin=isinstance(section, dict),
                  token_headers=_unique(headers), token_arguments=tuple(dict.fromkeys(arguments)))


def _directives(cache_control: str) -> List[str]:
    """The directives of a Cache-Control value, as written (commas inside quotes kept)."""
    found, current, quoted, escaped = [], "", False, False
    for char in cache_control:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            found.append(current.strip())
            current = ""
            continue
        current += char
    found.append(current.strip())
    return [directive for directive in found if directive]


def _name(directive: str) -> str:
    return directive.split("=", 1)[0].strip().lower()


def private_cache_control(cache_control: str) -> str:
    """``cache_control`` for an answer that only its requester may reuse: without
    ``public`` and ``s-maxage`` (which let shared caches reuse it for anyone), with
    ``private`` (a qualified ``private="..."``, which only withholds some headers, becomes
    plain ``private``).  Unchanged when it already says so: ``"private, no-cache"``."""
    directives = _directives(cache_control)
    kept = ["private" if _name(directive) == "private" else directive
            for directive in directives if _name(directive) not in _SHARED_ONLY]
    kept = list(dict.fromkeys(kept))  # one "private"
    if "private" not in kept:
        kept.append("private")
    if kept == directives:
        return cache_control
    return ", ".join(kept)


@dataclass(frozen=True)
class Sharing:
    """What every cached route's 200 and 304 say to caches on the way."""

    #: The Cache-Control sent.
    cache_control: str
    #: Request headers that change every answer (routes add their own, as ``Accept``).
    vary: Tuple[str, ...] = ()
    #: Why access is decided per request (:meth:`Access.reasons`); empty when it is not.
    reasons: Tuple[str, ...] = ()


def sharing(cache_control: str, access: Access, compression: bool) -> Sharing:
    """The headers sent for the setting ``cache_control``, given how access is decided and
    whether Orthanc or the plugin compresses answers (``Vary: Accept-Encoding``).

    Per request: ``private`` (:func:`private_cache_control`), and ``Vary`` names
    ``Authorization`` and the authorization plugin's token headers, so that even a cache
    that ignores ``private`` keeps one copy per credentials (a browser shared by two users
    too).  Token GET arguments are part of the URL, which caches key on already."""
    vary: Tuple[str, ...] = ("Accept-Encoding",) if compression else ()
    reasons = access.reasons()
    if not reasons:
        return Sharing(cache_control, vary)
    credentials = ("Authorization",) + tuple(name for name in access.token_headers
                                             if _HEADER_NAME.match(name))
    return Sharing(private_cache_control(cache_control), _unique(vary + credentials), reasons)


def describe(configured: str, sent: Sharing) -> str:
    """The log line saying what cached routes send and why."""
    if sent.cache_control == configured:
        text = "Cache-Control '%s'" % configured
    else:
        text = "Cache-Control '%s' sent as '%s'" % (configured, sent.cache_control)
    text += ", Vary '%s'" % ", ".join(sent.vary) if sent.vary else ", no Vary"
    if sent.reasons:
        return text + ": access is decided per request (%s)" % ", ".join(sent.reasons)
    return text + ": access is the same for every request (no authentication, " \
        "authorization plugin or request filter)"
