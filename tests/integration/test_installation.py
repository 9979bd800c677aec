"""The install steps of the README and the Dockerfile, and the generated API doc."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer


def test_example_script_runs_the_installed_package(
        cached_orthanc: Callable[..., OrthancServer], example_script: Path, tmp_path: Path) -> None:
    """A copy of example.py away from the repository imports the package that
    scripts/install.sh put in /usr/bin/python3's site-packages, as in the Dockerfile."""
    script = tmp_path / "elsewhere" / "cache-plugin.py"
    script.parent.mkdir()
    shutil.copy(example_script, script)
    server = cached_orthanc(python_script=script)
    study = server.upload(make_study("PAT-install", 1, 2, seed="install")[0])["ParentStudy"]
    answer = server.get("/studies/%s/shared-tags" % study)
    assert answer.status_code == 200 and "ETag" in answer.headers
    assert "cache plugin: version" in server.log_text()


def test_orthanc_module_api_doc_is_what_the_generator_writes(repo_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "orthanc-module-api.md"
    subprocess.run([sys.executable, str(repo_root / "tools" / "orthanc_module_api.py"),
                    "--output", str(output)], check=True, timeout=120, capture_output=True)
    committed = (repo_root / "docs" / "orthanc-module-api.md").read_text(encoding="utf-8")
    generated = output.read_text(encoding="utf-8").replace(" --output " + str(output), "")
    assert generated == committed
