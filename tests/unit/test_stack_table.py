"""README.md's versions table, read as the test run's header reads it (support/stacks.py)."""

from __future__ import annotations

from pathlib import Path

from support import stacks

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
TABLE = """\
| stack | from Debian | Orthanc | Python plugin | DICOMweb | Python | diskcache | runs |
|---|---|---|---|---|---|---|---|
| `trixie` | Debian 13 | 1.12.7 (`1.12.7+dfsg-4`) | 5.0 (`5.0+ds-3+b1`) \
| 1.20 (`1.20+dfsg-1`) | 3.13 | 5.6.3 | all |
"""
HELD = {"orthanc": "1.12.7+dfsg-4", "orthanc-python": "5.0+ds-3+b1",
        "orthanc-dicomweb": "1.20+dfsg-1", "python3": "3.13.5-1",
        "python3-diskcache": "5.6.3-1", "orthanc-postgresql": "5.0+dfsg-3+b3"}


def test_a_row_gives_the_debian_version_or_the_upstream_one() -> None:
    assert stacks.table_versions("trixie", TABLE) == {
        "orthanc": "1.12.7+dfsg-4", "orthanc-python": "5.0+ds-3+b1",
        "orthanc-dicomweb": "1.20+dfsg-1", "python3": "3.13", "python3-diskcache": "5.6.3"}


def test_the_same_versions_give_no_warning() -> None:
    assert stacks.table_differences("trixie", TABLE, HELD) == []


def test_each_difference_is_one_warning_naming_both_versions() -> None:
    held = dict(HELD, orthanc="1.12.8+dfsg-1", python3="3.14.1-1")
    assert stacks.table_differences("trixie", TABLE, held) == [
        "WARNING: the trixie stack holds orthanc 1.12.8+dfsg-1, README.md's versions table "
        "says 1.12.7+dfsg-4",
        "WARNING: the trixie stack holds python3 3.14.1-1, README.md's versions table says 3.13"]


def test_an_upstream_version_matches_only_whole_components() -> None:
    assert stacks.table_differences("trixie", TABLE, dict(HELD, python3="3.130-1")) != []


def test_a_stack_missing_from_the_table_is_a_warning() -> None:
    assert stacks.table_differences("sid", TABLE, HELD) == [
        "WARNING: README.md's versions table has no row for the sid stack"]


def test_the_readme_has_a_row_for_every_stack_that_ci_runs() -> None:
    for name in ("sid", "trixie", "bookworm"):
        written = stacks.table_versions(name, README)
        assert set(written) == {"orthanc", "orthanc-python", "orthanc-dicomweb", "python3",
                                "python3-diskcache"}, name
