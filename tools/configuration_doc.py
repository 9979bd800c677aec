#!/usr/bin/env python3
"""Generate ``docs/configuration.md`` from the plugin's own table of settings.

Every setting of :data:`orthanc_cache_plugin.core.settings.SETTINGS` (type, default,
constraints, description) is rendered with an example value, its keyword
argument of ``enable_cache_plugin()`` and its environment variable of the
``orthancteam/orthanc`` Docker image, whose naming rule this module also
implements (:func:`environment_variable`, :func:`configuration_from_environment`)
so that the unit tests can check that every variable maps back onto its setting.

Usage (from the repository root)::

    python3 tools/configuration_doc.py [--output docs/configuration.md] [--check]

``--check`` writes nothing and exits with status 1 when the file differs from
what would be generated. Standard library only; the settings are imported from
this checkout, never from an installed copy of the package.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "configuration.md"

sys.path.insert(0, str(REPO_ROOT))
from orthanc_cache_plugin.core.settings import SECTION, SETTINGS, Setting  # noqa: E402

#: Prefix of the image's variables that map onto Orthanc's configuration.
ENV_PREFIX = "ORTHANC__"

#: An example value of every setting, different from its default. A setting
#: added to core/settings.py needs one here (or an ``example`` attribute of its own).
EXAMPLES: Dict[str, Any] = {
    "Enable": False,
    "Directory": "/srv/orthanc-cache",
    "MaximumSize": 2048,
    "Expiration": 86400,
    "CacheControl": "max-age=604800, s-maxage=604800, public",
    "StoreBinary": True,
    "MaximumEntrySize": 256,
    "MemorySize": 256,
    "WarmUp": False,
    "WarmUpQueueSize": 5000,
    "CacheStatusHeader": "X-Orthanc-Cache",
    "WatchHttpWrites": False,
    "AdminPrefix": "/admin/cache",
    "LockTimeout": 60,
    "Backend": "redis",
    "RedisUrl": "redis://:secret@redis:6379/0",
    "KeyPrefix": "orthanc-cache-production:",
    "RedisTimeout": 250,
}

#: The setting that the introduction and the Docker section take as example.
FEATURED = "MaximumSize"

#: The settings of the docker-compose example (those of them that exist).
COMPOSE_EXAMPLE = ("Directory", "MaximumSize", "StoreBinary", "WarmUp")

_JSON_TYPES = {bool: "boolean", int: "integer", str: "string"}


class DocumentationError(RuntimeError):
    """A setting cannot be documented (no example, a name the image cannot map)."""


# --------------------------------------------------------------------------
# Names and values
# --------------------------------------------------------------------------

def words(camel_case: str) -> List[str]:
    """``MaximumEntrySize`` -> ``["Maximum", "Entry", "Size"]`` (a word starts at each capital)."""
    result: List[str] = []
    for char in camel_case:
        if char.isupper() or not result:
            result.append(char)
        else:
            result[-1] += char
    return result


def keyword_argument(name: str) -> str:
    """The keyword argument of ``enable_cache_plugin()`` for a setting: ``maximum_size``."""
    return "_".join(word.lower() for word in words(name))


def environment_variable(*path: str) -> str:
    """The image's variable for a configuration path: ``("CachePlugin", "MaximumSize")`` ->
    ``ORTHANC__CACHE_PLUGIN__MAXIMUM_SIZE`` (an underscore before each capital, a double
    underscore between levels, upper case, ``ORTHANC__`` in front)."""
    return ENV_PREFIX + "__".join("_".join(words(level)).upper() for level in path)


def configuration_path(variable: str) -> List[str]:
    """What the image does with a variable name: ``ORTHANC__CACHE_PLUGIN__MAXIMUM_SIZE`` ->
    ``["CachePlugin", "MaximumSize"]`` (each word capitalized, the rest in lower case)."""
    if not variable.startswith(ENV_PREFIX):
        raise ValueError("not an Orthanc configuration variable: %s" % variable)
    return ["".join(word[:1] + word[1:].lower() for word in level.split("_"))
            for level in variable[len(ENV_PREFIX):].split("__")]


def value_from_environment(text: str) -> Any:
    """What the image does with a variable's value: JSON when it parses, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def environment_value(value: Any) -> str:
    """The text of a variable that the image turns back into ``value``."""
    if isinstance(value, str):
        return json.dumps(value) if value_from_environment(value) != value else value
    return json.dumps(value)


def configuration_from_environment(environment: Mapping[str, str]) -> Dict[str, Any]:
    """The configuration the image builds from the ``ORTHANC__*`` variables of ``environment``."""
    configuration: Dict[str, Any] = {}
    for variable, text in environment.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        *parents, leaf = configuration_path(variable)
        node = configuration
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value_from_environment(text)
    return configuration


def example_of(setting: Setting) -> Any:
    """The example value of ``setting``."""
    example = getattr(setting, "example", None)
    if example is None:
        example = EXAMPLES.get(setting.name)
    if example is None:
        raise DocumentationError("setting %s has no example: add one to EXAMPLES in %s"
                                 % (setting.name, Path(__file__).name))
    return example


def check_names(setting: Setting) -> None:
    """Raise :class:`DocumentationError` unless the image maps the setting's variable back
    onto its name (it would not for a name starting in lower case, for instance)."""
    variable = environment_variable(SECTION, setting.name)
    if configuration_path(variable) != [SECTION, setting.name]:
        raise DocumentationError("%s does not map back onto %s.%s in the orthancteam/orthanc "
                                 "image" % (variable, SECTION, setting.name))


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value)


def _type_of(setting: Setting) -> str:
    text = _JSON_TYPES.get(setting.type, setting.type.__name__)
    if setting.minimum is not None:
        text += ", at least %d" % setting.minimum
    choices = getattr(setting, "choices", ())
    pattern = getattr(setting, "pattern", None)
    if choices:
        text += ", one of %s" % ", ".join(_json(choice) for choice in choices)
    elif pattern is not None:
        text += ", %s" % pattern[1]
    elif setting.type is str and not getattr(setting, "may_be_empty", False):
        text += ", not empty"
    return text


def _section(values: Mapping[str, Any]) -> str:
    return json.dumps({SECTION: dict(values)}, indent=2)


def _setting_reference(setting: Setting) -> List[str]:
    example = example_of(setting)
    variable = environment_variable(SECTION, setting.name)
    return [
        "### `%s`" % setting.name,
        "",
        setting.description,
        "",
        "| | |",
        "|---|---|",
        "| Type | %s |" % _type_of(setting),
        "| Default | `%s` |" % _json(setting.default),
        "| Example | `%s` |" % _json(example),
        "| Keyword argument | `enable_cache_plugin(%s=%r)` |" % (keyword_argument(setting.name),
                                                                 example),
        "| Environment variable | `%s=%s` |" % (variable, shlex.quote(environment_value(example))),
        "",
    ]


def render() -> str:
    """The whole of ``docs/configuration.md``."""
    for setting in SETTINGS:
        check_names(setting)
    examples = {setting.name: example_of(setting) for setting in SETTINGS}
    if FEATURED not in examples:
        raise DocumentationError("the introduction's setting %s is gone: change FEATURED"
                                 % FEATURED)
    maximum_size = FEATURED
    first_variable = environment_variable(SECTION, maximum_size)
    lines: List[str] = [
        "# Configuration reference",
        "",
        "<!-- Generated by tools/configuration_doc.py from orthanc_cache_plugin/core/settings.py;"
        " do not edit by hand. -->",
        "",
        "The plugin reads the `%s` section of Orthanc's configuration file when"
        " `enable_cache_plugin()` runs. Keyword arguments of `enable_cache_plugin()`"
        " override it, under the names of the *Keyword argument* rows below or the"
        " file's names (`enable_cache_plugin(%s=%r)` or `enable_cache_plugin(%s=%r)`)."
        % (SECTION, keyword_argument(maximum_size), examples[maximum_size], maximum_size,
           examples[maximum_size]),
        "An unknown name or an invalid value is reported in Orthanc's log and leaves the"
        " plugin off, while Orthanc keeps serving.",
        "",
        "Read [deployment.md](deployment.md) before changing the default `CacheControl`:"
        " it says what browsers, proxies and CDNs may then do with answers, and who may see"
        " them.",
        "",
        "Regenerate this page from the repository root, after changing"
        " `orthanc_cache_plugin/core/settings.py`, with:",
        "",
        "```sh",
        "python3 tools/configuration_doc.py",
        "```",
        "",
        "## Defaults",
        "",
        "```json",
        _section({setting.name: setting.default for setting in SETTINGS}),
        "```",
        "",
        "| Setting | Type | Default | Environment variable |",
        "|---|---|---|---|",
    ]
    for setting in SETTINGS:
        lines.append("| [`%s`](#%s) | %s | `%s` | `%s` |" % (
            setting.name, setting.name.lower(),
            _JSON_TYPES.get(setting.type, setting.type.__name__),
            _json(setting.default), environment_variable(SECTION, setting.name)))
    lines += ["", "## Settings", ""]
    for setting in SETTINGS:
        lines += _setting_reference(setting)

    environment = {environment_variable(SECTION, name): environment_value(examples[name])
                   for name in COMPOSE_EXAMPLE if name in examples}
    lines += [
        "## Docker: environment variables of the `orthancteam/orthanc` image",
        "",
        "The `orthancteam/orthanc` image (formerly `osimis/orthanc`) builds Orthanc's"
        " configuration from its JSON files, Docker secrets and environment variables, later"
        " sources overriding earlier ones. A variable `ORTHANC__...` sets one entry of the"
        " configuration: the image splits its name at each double underscore into levels"
        " and turns every level into CamelCase (each word between single underscores"
        " capitalized, the rest in lower case). Its value is read as JSON when it parses"
        " (numbers, `true`, `false`, objects), and kept as a string otherwise. So"
        " `%s=%s` becomes:" % (first_variable, environment_value(examples[maximum_size])),
        "",
        "```json",
        json.dumps(configuration_from_environment(
            {first_variable: environment_value(examples[maximum_size])}), indent=2),
        "```",
        "",
        "To name the variable of a setting, put an underscore before each capital of every"
        " level, a double underscore between levels, write it in upper case and add"
        " `ORTHANC__` in front: `%s.%s` is `%s`. Every setting of the plugin maps back onto"
        " its name (`tools/configuration_doc.py` checks it). A string that would parse as"
        " JSON (`\"123\"`, `\"true\"`) must be given with its JSON quotes to stay a string."
        % (SECTION, maximum_size, first_variable),
        "",
        "The repository's `Dockerfile` sets `ORTHANC__PYTHON_SCRIPT`, which makes the image"
        " load the Python plugin with the script that enables the cache. In a"
        " `docker-compose.yml` (quote every value: Compose wants strings):",
        "",
        "```yaml",
        "services:",
        "  orthanc:",
        "    build: .",
        "    environment:",
    ]
    lines += ["      %s: %s" % (variable, json.dumps(text))
              for variable, text in environment.items()]
    lines += [
        "```",
        "",
        "which the image turns into:",
        "",
        "```json",
        json.dumps(configuration_from_environment(environment), indent=2),
        "```",
        "",
        "The whole section can also be given at once in the image's `ORTHANC_JSON` variable,"
        " or in a JSON file of `/etc/orthanc/`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="file to write (default: docs/configuration.md)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit with status 1 if the file is not up to date")
    arguments = parser.parse_args(list(argv))
    try:
        text = render()
    except DocumentationError as error:
        print("error: %s" % error, file=sys.stderr)
        return 2
    if arguments.check:
        current = (arguments.output.read_text(encoding="utf-8") if arguments.output.exists()
                   else None)
        if current != text:
            print("%s is out of date: run python3 tools/configuration_doc.py" % arguments.output,
                  file=sys.stderr)
            return 1
        return 0
    arguments.output.write_text(text, encoding="utf-8")
    print("wrote %s" % arguments.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
