"""The install steps of the README and the Dockerfile, and the generated API doc."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer


@pytest.mark.old_stack
def test_example_script_runs_the_installed_package(
        cached_orthanc: Callable[..., OrthancServer], example_script: Path, tmp_path: Path) -> None:
    """A copy of example.py away from the repository imports the package that
    scripts/stack.sh put in /usr/bin/python3's site-packages, as the Dockerfile does."""
    script = tmp_path / "elsewhere" / "cache-plugin.py"
    script.parent.mkdir()
    shutil.copy(example_script, script)
    server = cached_orthanc(python_script=script, use_checkout=False)
    study = server.upload(make_study("PAT-install", 1, 2, seed="install")[0])["ParentStudy"]
    answer = server.get("/studies/%s/shared-tags" % study)
    assert answer.status_code == 200 and "ETag" in answer.headers
    assert "cache plugin: version" in server.log_text()


@pytest.mark.parametrize("stack, document", [("bookworm", "orthanc-module-api.md"),
                                             ("sid", "orthanc-module-api-sid.md")])
def test_orthanc_module_api_doc_is_what_the_generator_writes(
        repo_root: Path, tmp_path: Path, stack: str, document: str) -> None:
    """Each stack's reference of the ``orthanc`` module (plugin 4.0 and 7.1)."""
    output = tmp_path / document
    subprocess.run([sys.executable, str(repo_root / "tools" / "orthanc_module_api.py"),
                    "--stack", stack, "--output", str(output)],
                   check=True, timeout=120, capture_output=True)
    committed = (repo_root / "docs" / document).read_text(encoding="utf-8")
    shown = "docs/" + document if document != "orthanc-module-api.md" else None
    generated = output.read_text(encoding="utf-8").replace(" --output " + str(output),
                                                           " --output " + shown if shown else "")
    assert generated == committed
