"""Unit tests of orthanc_cache_plugin.http.sharing: the Cache-Control and Vary sent, and why."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orthanc_cache_plugin.http.sharing import (
    Access,
    Sharing,
    access_of,
    describe,
    private_cache_control,
    sharing,
)

SEED = "max-age=604800, s-maxage=604800, public"
USERS = Access(orthanc_users=True)
TOKENS = Access(authorization_plugin=True, token_headers=("token",))
FILTER = Access(script_filter=True)


@pytest.mark.parametrize("configured, private", [
    (SEED, "max-age=604800, private"),
    ("no-cache", "no-cache, private"),
    ("private, no-cache", "private, no-cache"),          # already private: unchanged
    ("no-cache, private", "no-cache, private"),
    ("public", "private"),
    ("PUBLIC, Max-Age=60, S-MAXAGE=600", "Max-Age=60, private"),
    ("s-maxage = 600, max-age=60", "max-age=60, private"),
    ('private="Set-Cookie", max-age=60', "private, max-age=60"),  # qualified: all of it
    ('no-cache="a, b", public', 'no-cache="a, b", private'),     # commas inside quotes
    ("max-age=60,,public , immutable", "max-age=60, immutable, private"),
    ("no-store", "no-store, private"),
    ("private, public, private", "private"),
    ("publicity=1", "publicity=1, private"),                     # not "public"
])
def test_private_cache_control(configured, private):
    assert private_cache_control(configured) == private


#: (access, compression, configured) -> (Cache-Control, Vary) sent.
@pytest.mark.parametrize("access, compression, configured, sent, vary", [
    # Access the same for every request: the setting as it is.
    (Access(), True, "no-cache", "no-cache", ("Accept-Encoding",)),
    (Access(), True, SEED, SEED, ("Accept-Encoding",)),
    (Access(), False, SEED, SEED, ()),
    # Orthanc's users.
    (USERS, True, SEED, "max-age=604800, private", ("Accept-Encoding", "Authorization")),
    (USERS, False, "no-cache", "no-cache, private", ("Authorization",)),
    (USERS, True, "private, no-cache", "private, no-cache",
     ("Accept-Encoding", "Authorization")),
    # The authorization plugin: its token headers too; GET arguments are in the URL.
    (TOKENS, True, SEED, "max-age=604800, private",
     ("Accept-Encoding", "Authorization", "token")),
    (Access(authorization_plugin=True), False, "no-cache", "no-cache, private",
     ("Authorization",)),
    (Access(authorization_plugin=True, token_headers=("authorization", "X-Token", "bad name:"),
            token_arguments=("token",)), False, SEED, "max-age=604800, private",
     ("Authorization", "X-Token")),
    # Request filters of a script (after or before enable_cache_plugin()), Lua's.
    (FILTER, True, SEED, "max-age=604800, private", ("Accept-Encoding", "Authorization")),
    (Access(earlier_filter=True), False, SEED, "max-age=604800, private", ("Authorization",)),
    (Access(lua_filter=True), False, "no-cache", "no-cache, private", ("Authorization",)),
    # All at once.
    (replace(TOKENS, orthanc_users=True, script_filter=True), True, SEED,
     "max-age=604800, private", ("Accept-Encoding", "Authorization", "token")),
])
def test_headers_sent(access, compression, configured, sent, vary):
    decided = sharing(configured, access, compression)
    assert (decided.cache_control, decided.vary) == (sent, vary)
    assert bool(decided.reasons) == access.per_request


@pytest.mark.parametrize("configuration, expected", [
    ({}, Access()),
    ({"RemoteAccessAllowed": False}, Access()),
    # Orthanc turns authentication on by itself when remote access is allowed.
    ({"RemoteAccessAllowed": True}, USERS),
    ({"RemoteAccessAllowed": True, "AuthenticationEnabled": False}, Access()),
    ({"AuthenticationEnabled": True}, USERS),
    # The authorization plugin's section, even empty: it decides per request.
    ({"Authorization": {}}, Access(authorization_plugin=True)),
    ({"Authorization": {"TokenHttpHeaders": ["token"], "TokenGetArguments": ["t"]}},
     Access(authorization_plugin=True, token_headers=("token",), token_arguments=("t",))),
    ({"Authorization": {"TokenHttpHeaders": "token", "TokenGetArguments": [1, "", "t"]}},
     Access(authorization_plugin=True, token_arguments=("t",))),
    ({"Authorization": {"TokenHttpHeaders": ["token", "Token"],
                        "StandardConfigurations": ["orthanc-explorer-2", "ohif", "unknown"]}},
     Access(authorization_plugin=True, token_headers=("token", "Authorization"),
            token_arguments=("token",))),
    ({"Authorization": {"StandardConfigurations": ["osimis-web-viewer"]}},
     Access(authorization_plugin=True, token_headers=("token",), token_arguments=("token",))),
    ({"Authorization": "yes"}, Access()),
])
def test_access_of_the_configuration(configuration, expected):
    assert access_of(configuration) == expected


def test_the_log_line_says_what_is_sent_and_why():
    decided = sharing(SEED, replace(USERS, authorization_plugin=True, token_headers=("token",)),
                      True)
    assert describe(SEED, decided) == (
        "Cache-Control 'max-age=604800, s-maxage=604800, public' sent as "
        "'max-age=604800, private', Vary 'Accept-Encoding, Authorization, token': access is "
        "decided per request (Orthanc's users, the authorization plugin (token headers token))")
    assert describe("no-cache", sharing("no-cache", Access(), False)) == (
        "Cache-Control 'no-cache', no Vary: access is the same for every request (no "
        "authentication, authorization plugin or request filter)")
    assert describe("private, no-cache", sharing("private, no-cache", FILTER, False)) == (
        "Cache-Control 'private, no-cache', Vary 'Authorization': access is decided per "
        "request (a filter of the startup script)")


def test_reasons_in_words():
    everything = Access(True, True, ("token",), ("t",), True, True, True)
    assert everything.reasons() == (
        "Orthanc's users", "the authorization plugin (token headers token; GET arguments t)",
        "a filter of the startup script", "a filter registered before enable_cache_plugin()",
        "a Lua IncomingHttpRequestFilter")
    assert Access(authorization_plugin=True).reasons() == ("the authorization plugin",)
    assert Access().reasons() == () and not Access().per_request


def test_sharing_defaults():
    assert Sharing("no-cache") == Sharing("no-cache", (), ())


@pytest.mark.parametrize("access, by_path", [
    (Access(), ()),
    (USERS, ()),
    (FILTER, ("a filter of the startup script",)),
    (replace(USERS, lua_filter=True), ("a Lua IncomingHttpRequestFilter",)),
    (TOKENS, ("the authorization plugin (token headers token)",)),
])
def test_what_decides_access_from_the_path(access, by_path):
    # Orthanc's users apply to every path alike; the others read the path.
    assert access.by_path() == by_path
