"""Across Orthanc versions: an upgrade under a filled store, and the installs of the image.

These tests start Orthancs of both stacks (scripts/stack.sh), whichever one
the run selected.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from support import stacks
from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer

#: Seconds after a change before answers are stored (freshness.SETTLE, 3 s).
SETTLE = 3.1
#: Stored routes (a study's attachments come from Orthanc's index at each request).
JSON_ROUTES = ("shared-tags", "instances-tags", "instances-tags?short")
NO_GZIP = {"Accept-Encoding": "identity"}


def _answers(server: OrthancServer, study: str) -> Dict[str, Any]:
    found = {}
    for route in JSON_ROUTES:
        answer = server.get("/studies/%s/%s" % (study, route), headers=NO_GZIP)
        found[route] = (answer.status_code, answer.headers.get("Content-Type"), answer.content,
                        answer.headers.get("X-Cache-Status"))
    return found


def test_after_an_upgrade_of_orthanc_nothing_computed_by_the_old_version_is_served(
        example_script: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    config = {"StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "CachePlugin": {"Directory": str(tmp_path / "cache"), "WarmUp": False}}
    files = make_study("PAT-upgrade", 2, 3, seed="upgrade")

    old = OrthancServer(tmp_path / "old", python_script=example_script, config=config,
                        stack="bookworm")
    with old:
        study = [old.upload(dicom) for dicom in files][-1]["ParentStudy"]
        time.sleep(SETTLE)
        _answers(old, study)
        stored = _answers(old, study)
        assert {answer[3] for answer in stored.values()} == {"HIT"}
        assert json.loads(old.get("/system").content)["Version"] == "1.10.1"

    new = OrthancServer(tmp_path / "new", python_script=example_script, config=config,
                        stack="sid")
    plain = OrthancServer(tmp_path / "plain", stack="sid")
    with new, plain:
        assert json.loads(new.get("/system").content)["Version"] != "1.10.1"
        for dicom in files:
            plain.upload(dicom)
        upgraded = _answers(new, study)
        assert {answer[3] for answer in upgraded.values()} == {"MISS"}
        expected = _answers(plain, study)
        assert {route: answer[:3] for route, answer in upgraded.items()} == \
            {route: answer[:3] for route, answer in expected.items()}
        assert re.search(r"stored answers removed: computed by another version", new.log_text())
        assert {answer[3] for answer in _answers(new, study).values()} == {"HIT"}


def test_orthanc_with_the_plugin_stops_cleanly_every_time(
        example_script: Path, tmp_path: Path) -> None:
    """Plugin 7.1 on Python 3.14 crashed in most stops of an Orthanc whose script has REST
    and change callbacks (clean_exit.py); with warm-ups and polling under way, every
    stop must end with status 0 and Orthanc's last log line."""
    for attempt in range(4):
        server = OrthancServer(tmp_path / ("round-%d" % attempt), python_script=example_script,
                               config={"StableAge": 1, "CachePlugin": {
                                   "Directory": str(tmp_path / ("cache-%d" % attempt))}},
                               stack="sid")
        with server:
            for seed in ("stop-a", "stop-b"):
                for dicom in make_study("PAT-" + seed, 2, 3, seed=seed):
                    study = server.upload(dicom)["ParentStudy"]
            assert server.get("/studies/%s/shared-tags" % study).status_code == 200
            time.sleep(1.5)  # stable events and warm-ups under way
        assert server.process is not None
        assert server.process.returncode == 0, server.log_tail()
        assert server.log_text().rstrip().endswith("Orthanc has stopped")
        assert "kept loaded, process ends with _exit" in server.log_text()


def _dockerfile() -> str:
    return (stacks.REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")


def _environment(dockerfile: str) -> Dict[str, str]:
    """The ``ENV NAME=value`` lines of the Dockerfile."""
    return dict(re.findall(r"^ENV (\w+)=(\S+)$", dockerfile, re.MULTILINE))


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def image_configuration(environment: Dict[str, str]) -> Dict[str, Any]:
    """Orthanc's configuration from ``ORTHANC__A__B`` variables, as the orthancteam
    image's entry point builds it (names in CamelCase; JSON values when they parse)."""
    configuration: Dict[str, Any] = {}
    for name, value in environment.items():
        if not name.startswith("ORTHANC__"):
            continue
        *sections, key = [_camel(part) for part in name[len("ORTHANC__"):].split("__")]
        target = configuration
        for section in sections:
            target = target.setdefault(section, {})
        try:
            target[key] = json.loads(value)
        except ValueError:
            target[key] = value
    return configuration


def test_the_dockerfile_installs_as_the_modern_stack_does() -> None:
    """The image cannot be built here: its steps are those that scripts/stack.sh
    runs in the sid root, which the whole suite tests."""
    dockerfile = _dockerfile()
    setup = (stacks.REPO_ROOT / "scripts" / "stack.sh").read_text(encoding="utf-8")
    # Same options and extras; the path differs (stack.sh installs from a copy
    # of the checkout named per build, so that builds can run side by side).
    image = re.search(r'RUN pip install (.*?)"/tmp/orthanc-cache-plugin(\[\w+\])"', dockerfile)
    assert image, "no pip install of the checkout in the Dockerfile"
    stack = re.search(r'pip install (.*?)"\$copy(\[\w+\])"', setup)
    assert stack, "no pip install of the checkout in stack.sh"
    assert image.groups() == stack.groups()
    assert "cp /tmp/orthanc-cache-plugin/example.py /etc/orthanc/cache-plugin.py" in dockerfile
    assert 'cp "$CHECKOUT/example.py" "$root/etc/orthanc/cache-plugin.py"' in setup
    configuration = image_configuration(_environment(dockerfile))
    assert configuration["PythonScript"] == "/etc/orthanc/cache-plugin.py"
    assert configuration["Python"] == {"AllowThreads": True}


def test_orthanc_configured_as_the_image_runs_the_installed_plugin(tmp_path: Path) -> None:
    """The Dockerfile's settings, on the image's versions, with the package that pip put
    in site-packages and the startup script at the image's path."""
    configuration = image_configuration(_environment(_dockerfile()))
    configuration["CachePlugin"] = {"Directory": str(tmp_path / "cache")}
    server = OrthancServer(tmp_path / "image", config=configuration, stack="sid",
                           use_checkout=False)
    server.config["Plugins"] = [stacks.PYTHON_PLUGIN]
    with server:
        study = server.upload(make_study("PAT-image", 1, 2, seed="image")[0])["ParentStudy"]
        answer = server.get("/studies/%s/shared-tags" % study)
        assert answer.status_code == 200 and "ETag" in answer.headers
        # Without the checkout on its path, the interpreter imports what pip installed.
        assert "PYTHONPATH" not in server.env
        assert re.search(r"cache plugin: version \S+ active", server.log_text())
    assert server.process is not None and server.process.returncode == 0


def _sees(directory: Path, name: str) -> bool:
    """Whether a command run in the selected stack with ``directory`` bound finds ``name``."""
    if stacks.current() == "host":
        return (directory / name).is_file()
    found = subprocess.run([str(stacks.STACK_SCRIPT), "run", stacks.current(), "--bind",
                            str(directory), "--", "test", "-f", str(directory / name)])
    return found.returncode == 0


@pytest.mark.old_stack
def test_a_directory_cloned_again_at_the_same_path_is_the_one_seen_in_the_stack() -> None:
    """CI removes its checkout and clones it again at the same path: the bind mount an
    earlier run left in the root showed the removed directory, and every Orthanc of the
    next run failed to find its startup script."""
    directory = Path(tempfile.mkdtemp(prefix="stack-bind-", dir="/var/tmp"))
    try:
        (directory / "first").write_text("1", encoding="utf-8")
        assert _sees(directory, "first")
        shutil.rmtree(directory)
        directory.mkdir()
        (directory / "second").write_text("2", encoding="utf-8")
        assert _sees(directory, "second")
        assert not _sees(directory, "first")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
