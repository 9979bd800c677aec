"""Unit tests of orthanc_cache_plugin.core.settings."""

from __future__ import annotations

import dataclasses

import pytest

from orthanc_cache_plugin.core.settings import (
    SECTION,
    SETTINGS,
    Backend,
    Settings,
    SettingsError,
    load_settings,
    mask_url,
    masked,
    redact,
    secrets_in,
)


def test_section_name():
    assert SECTION == "CachePlugin"


def test_defaults_follow_the_specification():
    settings = load_settings({}, {})
    assert settings.enable is True
    assert settings.directory == "/var/lib/orthanc/cache"
    assert settings.maximum_size == 1024
    assert settings.maximum_size_bytes == 1024 * 1024 * 1024
    assert settings.expiration == 604800
    # Not the specification's "max-age=604800, s-maxage=604800, public" (issue #17): browsers
    # and proxies revalidate before each use, so they show every change at once.
    assert settings.cache_control == "no-cache"
    assert settings.store_binary is False
    assert settings.warm_up is True
    assert settings.maximum_entry_size == 64
    assert settings.maximum_entry_size_bytes == 64 * 1024 * 1024
    assert settings.warm_up_queue_size == 1000
    assert settings.cache_status_header == "X-Cache-Status"
    assert settings.admin_prefix == "/cache"


def test_defaults_when_the_section_is_empty_or_other_sections_exist():
    assert load_settings({SECTION: {}}, {}) == load_settings({}, {})
    assert load_settings({"HttpPort": 8042, "Plugins": ["x"]}, {}) == load_settings({}, {})


def test_as_configuration_uses_file_names():
    configuration = load_settings({}, {}).as_configuration()
    assert configuration == {setting.name: setting.default for setting in SETTINGS}
    assert list(configuration) == ["Enable", "Directory", "MaximumSize", "Expiration",
                                   "CacheControl", "StoreBinary", "MaximumEntrySize", "MemorySize",
                                   "WarmUp", "WarmUpQueueSize", "CacheStatusHeader",
                                   "WatchHttpWrites",
                                   "AdminPrefix", "LockTimeout", "Backend", "RedisUrl",
                                   "KeyPrefix", "RedisTimeout"]


def test_every_setting_is_documented():
    for setting in SETTINGS:
        assert setting.description.strip(), setting.name
        assert isinstance(setting.default, setting.type), setting.name


def test_section_values():
    section = {"Enable": False, "Directory": "/tmp/c", "MaximumSize": 10, "Expiration": 60,
               "CacheControl": "no-cache", "StoreBinary": True, "MaximumEntrySize": 2,
               "MemorySize": 0, "WarmUp": False, "WarmUpQueueSize": 5, "CacheStatusHeader": "",
               "WatchHttpWrites": False, "AdminPrefix": "/admin/cache", "LockTimeout": 0,
               "Backend": "redis", "RedisUrl": "unix:///run/redis.sock?db=2",
               "KeyPrefix": "test:", "RedisTimeout": 50}
    settings = load_settings({SECTION: section}, {})
    assert settings == Settings(False, "/tmp/c", 10, 60, "no-cache", True, 2, 0, False, 5, "",
                                False, "/admin/cache", 0, "redis", "unix:///run/redis.sock?db=2",
                                "test:", 50)
    assert settings.store_backend is Backend.REDIS
    assert settings.as_configuration() == section
    assert settings.maximum_size_bytes == 10 * 1024 * 1024


def test_section_keeps_defaults_for_missing_values():
    settings = load_settings({SECTION: {"StoreBinary": True}}, {})
    assert settings.store_binary is True
    assert settings.directory == "/var/lib/orthanc/cache"
    assert settings.maximum_size == 1024


def test_overrides_by_python_name():
    settings = load_settings({SECTION: {"Directory": "/from/file", "MaximumSize": 10}},
                             {"directory": "/from/python", "warm_up_queue_size": 7,
                              "store_binary": True})
    assert settings.directory == "/from/python"
    assert settings.maximum_size == 10          # not overridden: the file's value
    assert settings.warm_up_queue_size == 7
    assert settings.store_binary is True


def test_overrides_by_file_name():
    settings = load_settings({SECTION: {"Directory": "/from/file"}},
                             {"Directory": "/from/python", "MaximumEntrySize": 3})
    assert settings.directory == "/from/python"
    assert settings.maximum_entry_size == 3


def test_overrides_do_not_modify_their_inputs():
    configuration = {SECTION: {"Directory": "/from/file"}}
    overrides = {"directory": "/x"}
    load_settings(configuration, overrides)
    assert configuration == {SECTION: {"Directory": "/from/file"}}
    assert overrides == {"directory": "/x"}


def test_settings_are_frozen():
    settings = load_settings({}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.directory = "/elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize("name, value", [
    ("Enable", "yes"),
    ("Enable", 1),
    ("Directory", 5),
    ("Directory", None),
    ("Directory", ""),
    ("Directory", "   "),
    ("MaximumSize", "1024"),
    ("MaximumSize", 10.5),
    ("MaximumSize", 1024.0),
    ("MaximumSize", True),           # a bool is not a number here
    ("MaximumSize", 0),
    ("MaximumSize", -1),
    ("Expiration", 0),
    ("Expiration", None),
    ("CacheControl", ["public"]),
    ("CacheControl", ""),
    ("StoreBinary", "false"),
    ("StoreBinary", 0),
    ("StoreBinary", None),
    ("MaximumEntrySize", 0),
    ("WarmUp", "true"),
    ("WarmUpQueueSize", 0),
    ("WarmUpQueueSize", False),
    ("Backend", "memcached"),
    ("Backend", "Redis"),
    ("RedisUrl", "http://127.0.0.1:6379"),
    ("RedisUrl", "127.0.0.1:6379"),
    ("KeyPrefix", ""),
    ("RedisTimeout", 0),
])
def test_invalid_section_values(name, value):
    with pytest.raises(SettingsError) as error:
        load_settings({SECTION: {name: value}}, {})
    assert name in str(error.value)


@pytest.mark.parametrize("name, file_name, value", [
    ("maximum_size", "MaximumSize", "big"),
    ("expiration", "Expiration", -5),
    ("store_binary", "StoreBinary", "on"),
    ("directory", "Directory", ""),
    ("WarmUp", "WarmUp", None),
])
def test_invalid_override_values(name, file_name, value):
    with pytest.raises(SettingsError) as error:
        load_settings({}, {name: value})
    assert file_name in str(error.value)


def test_unknown_name_in_the_section():
    with pytest.raises(SettingsError) as error:
        load_settings({SECTION: {"MaximumSise": 10}}, {})
    assert "MaximumSise" in str(error.value)


@pytest.mark.parametrize("name", ["maximum_sise", "MaxSize", "maximumsize", "Maximum_Size", ""])
def test_unknown_override_name(name):
    with pytest.raises(SettingsError) as error:
        load_settings({}, {name: 10})
    assert "unknown" in str(error.value)
    if name:
        assert name in str(error.value)


@pytest.mark.parametrize("section", [[], "CachePlugin", 5, None, True])
def test_section_must_be_an_object(section):
    with pytest.raises(SettingsError) as error:
        load_settings({SECTION: section}, {})
    assert SECTION in str(error.value)


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


def test_a_refused_redis_url_is_not_repeated_in_the_message():
    """The URL may hold a password: the message says what is expected, not what was given."""
    with pytest.raises(SettingsError) as error:
        load_settings({SECTION: {"RedisUrl": "redis:/user:secret@host"}}, {})
    assert "secret" not in str(error.value) and "RedisUrl" in str(error.value)


def test_the_default_backend_is_the_disk():
    assert load_settings({}, {}).store_backend is Backend.DISK


# -- secrets ------------------------------------------------------------------------------------

REDIS_URL = next(setting for setting in SETTINGS if setting.name == "RedisUrl")


def test_the_secret_settings():
    assert [setting.name for setting in SETTINGS if setting.secret] == ["RedisUrl"]


@pytest.mark.parametrize("url, shown, secrets", [
    ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0", {"secret"}),
    ("redis://:secret@host:6379/0", "redis://:***@host:6379/0", {"secret"}),
    ("rediss://:secret@host/1", "rediss://:***@host/1", {"secret"}),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", set()),
    ("redis://user@host/0", "redis://user@host/0", set()),  # a user name, to the client
    ("redis://:@host/0", "redis://:***@host/0", set()),
    ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2", set()),
    ("unix:///run/redis.sock?db=0&password=secret", "unix:///run/redis.sock?db=0&password=***",
     {"secret"}),
    ("unix://user:secret@/run/redis.sock?db=0", "unix://user:***@/run/redis.sock?db=0",
     {"secret"}),
    ("redis://host/0?PASSWORD=secret&ssl_password=other&db=1",
     "redis://host/0?PASSWORD=***&ssl_password=***&db=1", {"secret", "other"}),
    ("redis://:p%40ss%2Fw@host/0", "redis://:***@host/0", {"p%40ss%2Fw", "p@ss/w"}),
    ("redis://:pa@ss@host/0", "redis://:***@host/0", {"pa@ss"}),      # unencoded @
    ("redis://:pa/ss@host/0", "redis://:***@host/0", {"pa/ss"}),      # unencoded /
    ("redis://us:er:secret@host/0", "redis://us:***@host/0", {"er:secret"}),
    ("not a url", "***", {"not a url"}),
])
def test_masked_urls(url, shown, secrets):
    assert mask_url(url) == shown
    assert masked(REDIS_URL, url) == shown
    assert set(secrets_in(REDIS_URL, url)) == secrets
    for secret in secrets:
        assert secret not in shown.replace("***", "")


def test_settings_that_are_not_secret_are_shown_as_they_are():
    directory = next(setting for setting in SETTINGS if setting.name == "Directory")
    assert masked(directory, "/srv/a:b@c") == "/srv/a:b@c"
    assert secrets_in(directory, "/srv/a:b@c") == ()


def test_statistics_and_repr_never_show_a_password():
    settings = load_settings({SECTION: {"RedisUrl": "redis://orthanc:hunter22@redis:6379/0"}}, {})
    assert settings.as_configuration()["RedisUrl"] == "redis://orthanc:***@redis:6379/0"
    assert settings.as_configuration(reveal_secrets=True)["RedisUrl"] == \
        "redis://orthanc:hunter22@redis:6379/0"
    assert "hunter22" not in repr(settings) and "redis://orthanc:***@redis" in repr(settings)
    assert settings.secrets() == ("hunter22",)
    assert load_settings({}, {}).secrets() == ()


@pytest.mark.parametrize("text, expected", [
    ("Error connecting to redis://:hunter22@redis:6379/0", "Error connecting to redis://:***@redis:6379/0"),
    ("AUTH hunter22 hunter22", "AUTH *** ***"),
    ("nothing here", "nothing here"),
    ("p@ss/word and p%40ss%2Fword", "*** and ***"),
])
def test_redact(text, expected):
    assert redact(text, ("p%40ss%2Fword", "p@ss/word", "hunter22")) == expected


def test_short_secrets_are_not_searched_for_in_free_text():
    """Replacing every "ab" would garble log lines; URLs the plugin shows are masked anyway."""
    assert redact("a cab", ("ab",)) == "a cab"
    assert mask_url("redis://:ab@host/0") == "redis://:***@host/0"


@pytest.mark.parametrize("value", [["redis://:hunter22@h/0"], {"url": "redis://:hunter22@h"},
                                   "http://:hunter22@h/0", "redis:/:hunter22@h"])
def test_a_refused_secret_is_never_repeated(value):
    with pytest.raises(SettingsError) as error:
        load_settings({SECTION: {"RedisUrl": value}}, {})
    assert "hunter22" not in str(error.value) and "RedisUrl" in str(error.value)
    with pytest.raises(SettingsError) as error:
        load_settings({}, {"redis_url": value})
    assert "hunter22" not in str(error.value)
