"""docs/configuration.md is what tools/configuration_doc.py generates from the settings table,
and the environment variables it documents map onto the settings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from orthanc_cache_plugin.core.settings import SECTION, SETTINGS, Setting, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "configuration_doc.py"
COMMITTED = REPO_ROOT / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("configuration_doc", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_doc_is_what_the_generator_writes(tool: ModuleType) -> None:
    assert COMMITTED.read_text(encoding="utf-8") == tool.render(), \
        "docs/configuration.md is out of date: run python3 tools/configuration_doc.py"


def test_the_command_line_writes_and_checks(tmp_path: Path) -> None:
    output = tmp_path / "configuration.md"
    command = [sys.executable, str(TOOL), "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    assert output.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    assert subprocess.run(command + ["--check"], capture_output=True, timeout=60).returncode == 0
    output.write_text(output.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    check = subprocess.run(command + ["--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "out of date" in check.stderr


def test_every_setting_is_documented(tool: ModuleType) -> None:
    text = COMMITTED.read_text(encoding="utf-8")
    for setting in SETTINGS:
        assert "### `%s`\n\n%s\n" % (setting.name, setting.description) in text
        assert "| Environment variable | `%s=" % tool.environment_variable(SECTION,
                                                                           setting.name) in text


def test_every_example_is_a_valid_value_that_differs_from_the_default(tool: ModuleType) -> None:
    for setting in SETTINGS:
        example = tool.example_of(setting)
        assert example != setting.default, setting.name
        loaded = load_settings({SECTION: {setting.name: example}}, {})
        assert loaded.as_configuration(reveal_secrets=True)[setting.name] == example
        keyword = load_settings({}, {tool.keyword_argument(setting.name): example})
        assert keyword.as_configuration(reveal_secrets=True)[setting.name] == example


def test_the_images_rule_maps_every_variable_onto_its_setting(tool: ModuleType) -> None:
    assert tool.environment_variable("CachePlugin",
                                     "MaximumSize") == "ORTHANC__CACHE_PLUGIN__MAXIMUM_SIZE"
    assert tool.configuration_from_environment({"ORTHANC__CACHE_PLUGIN__MAXIMUM_SIZE": "2048"}) \
        == {"CachePlugin": {"MaximumSize": 2048}}
    # The Orthanc Book's own examples of the rule.
    assert tool.environment_variable("DicomWeb",
                                     "StudiesMetadata") == "ORTHANC__DICOM_WEB__STUDIES_METADATA"
    assert tool.configuration_from_environment({
        "ORTHANC__STABLE_AGE": "30", "ORTHANC__DICOM_WEB__ROOT": "/dicom-web/", "PATH": "/bin",
    }) == {"StableAge": 30, "DicomWeb": {"Root": "/dicom-web/"}}

    environment = {tool.environment_variable(SECTION, setting.name):
                   tool.environment_value(tool.example_of(setting)) for setting in SETTINGS}
    configuration = tool.configuration_from_environment(environment)
    assert configuration == {SECTION: {setting.name: tool.example_of(setting)
                                       for setting in SETTINGS}}
    assert load_settings(configuration, {}).as_configuration(reveal_secrets=True) \
        == configuration[SECTION]


@pytest.mark.parametrize("value,text", [
    ("private, no-cache", "private, no-cache"),
    ("123", '"123"'),        # would become a number
    ("true", '"true"'),      # would become a boolean
    ("", ""),
    (True, "true"),
    (2048, "2048"),
])
def test_values_survive_the_image(tool: ModuleType, value: object, text: str) -> None:
    assert tool.environment_value(value) == text
    assert tool.value_from_environment(text) == value


def test_a_setting_without_example_is_refused(tool: ModuleType,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(tool.EXAMPLES, "MaximumSize")
    with pytest.raises(tool.DocumentationError, match="MaximumSize has no example"):
        tool.render()


def test_a_name_the_image_cannot_map_is_refused(tool: ModuleType) -> None:
    with pytest.raises(tool.DocumentationError, match="does not map back"):
        tool.check_names(Setting("maximumSize", int, 1, "starts in lower case"))
    tool.check_names(Setting("HTTPPort", int, 1, "H_T_T_P_PORT: ugly, but it maps back"))
