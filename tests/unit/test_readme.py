"""The README's configuration reference and route list follow the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orthanc_cache_plugin.core.settings import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| `([^`]*)` \|", README, re.MULTILINE))
    assert set(rows) == {setting.name for setting in SETTINGS}
    for setting in SETTINGS:
        documented = rows[setting.name]
        value = documented if setting.type is str else json.loads(documented)
        assert value == setting.default, setting.name


def test_the_json_example_holds_the_defaults() -> None:
    example = json.loads(re.search(r"```json\n(.*?)```", README, re.DOTALL).group(1))
    assert example["CachePlugin"] == {setting.name: setting.default for setting in SETTINGS}
