"""What a new user runs on a machine that holds nothing yet: the stack roots that
``scripts/test.sh`` builds, and ``scripts/run.sh``, the quick start, on Debian 13.

The rest of the suite reuses roots built once, so a broken build step would pass
unseen on a machine that already holds them: these tests build from scratch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest
import requests

from support.checkout import clean_copy
from support.debian_root import environment, fresh_root
from support.dicom_factory import make_study
from support.orthanc_server import free_port
from support.stacks import STACK_SCRIPT

#: Seconds after a change before answers are stored (freshness.SETTLE, 3 s).
SETTLE = 3.1


@pytest.fixture
def stacks_folder() -> Iterator[Path]:
    """An empty ``ORTHANC_STACKS`` outside pytest's folders (see support.debian_root)."""
    folder = Path(tempfile.mkdtemp(prefix="orthanc-stacks-", dir="/var/tmp"))
    yield folder
    for name in ("bookworm", "trixie", "sid"):
        subprocess.run([str(STACK_SCRIPT), "remove", name],
                       env={**os.environ, "ORTHANC_STACKS": str(folder)}, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)


def _stack(folder: Path, *arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK_SCRIPT), *arguments], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "ORTHANC_STACKS": str(folder), **env})


def test_a_stack_root_builds_from_scratch(stacks_folder: Path) -> None:
    """Debian 12's root, the quickest, from the archive as it is today (sid's Release file
    is past its Valid-Until on these machines' archive: the roots' apt must not mind)."""
    built = _stack(stacks_folder, "build", "bookworm")
    assert built.returncode == 0, built.stderr[-3000:]
    versions = dict(line.split(" ", 1) for line in
                    _stack(stacks_folder, "versions", "bookworm").stdout.splitlines())
    assert versions["orthanc"].startswith("1.10.1")
    assert versions["orthanc-python"].startswith("4.0")
    assert "orthanc-dicomweb" in versions and "orthanc-postgresql" in versions
    root = stacks_folder / "bookworm"
    # The apt setting is the root's own, never the host's.
    assert "Check-Valid-Until" in (root / "etc/apt/apt.conf.d/99stack-valid-until").read_text()
    assert not Path("/etc/apt/apt.conf.d/99stack-valid-until").exists()
    imported = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c",
         "import orthanc_cache_plugin, diskcache, redis; print(orthanc_cache_plugin.__file__)"],
        capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("/usr/local/lib/python3")
    # Built once: a second build only checks the root and installs the checkout again.
    started = time.monotonic()
    assert _stack(stacks_folder, "build", "bookworm").returncode == 0
    assert time.monotonic() - started < 60
    assert _stack(stacks_folder, "remove", "bookworm").returncode == 0
    assert not root.exists()


def test_a_failed_build_says_why_and_what_to_do(stacks_folder: Path) -> None:
    unreachable = _stack(stacks_folder, "build", "bookworm",
                         ORTHANC_STACKS_MIRROR="http://127.0.0.1:9/debian")
    assert unreachable.returncode == 1
    last = unreachable.stderr.strip().splitlines()[-1]
    assert "http://127.0.0.1:9/debian could not be reached" in last
    assert "ORTHANC_STACKS_MIRROR" in last
    small = stacks_folder / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)], check=True)
    try:
        full = subprocess.run([str(STACK_SCRIPT), "build", "bookworm"], capture_output=True,
                              text=True, timeout=300,
                              env={**os.environ, "ORTHANC_STACKS": str(small)})
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    assert "the disk is full" in last and "ORTHANC_STACKS" in last


def _wait_for_orthanc(url: str, process: subprocess.Popen[bytes], log: Path) -> Dict[str, str]:
    deadline = time.monotonic() + 900  # apt-get and pip install first
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            answer = requests.get(url + "/system", timeout=2)
            if answer.status_code == 200:
                found: Dict[str, str] = answer.json()
                return found
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError("no Orthanc after 900 s:\n" + log.read_text(errors="replace")[-3000:])


def test_the_quick_start_on_debian_13(repo_root: Path, tmp_path: Path) -> None:
    """``./scripts/run.sh`` in a clean clone on a new Debian 13 system: it installs Orthanc
    1.12.7, its Python plugin 5.0 and the package, then serves with the plugin; one
    uploaded study is answered MISS, then HIT with the same ETag, then 304; the stop is
    clean."""
    with fresh_root("trixie") as root:
        clean_copy(repo_root, root / "src")
        port = free_port()
        url = "http://127.0.0.1:%d" % port
        log = tmp_path / "run.log"
        with log.open("wb") as output:
            process = subprocess.Popen(["chroot", str(root), "/src/scripts/run.sh"],
                                       env=environment(HTTP_PORT=str(port)),
                                       stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT)
        try:
            system = _wait_for_orthanc(url, process, log)
            assert system["Version"].startswith("1.12.")
            plugins = requests.get(url + "/plugins/python", timeout=10).json()
            assert plugins["Version"].startswith("5.")
            study = None
            for dicom in make_study("PAT-quick-start", 1, 2, seed="quick-start"):
                uploaded = requests.post(url + "/instances", data=dicom, timeout=30,
                                         headers={"Content-Type": "application/dicom"})
                assert uploaded.status_code == 200
                study = uploaded.json()["ParentStudy"]
            time.sleep(SETTLE)
            route = url + "/studies/%s/shared-tags" % study
            first = requests.get(route, timeout=30)
            second = requests.get(route, timeout=30)
            assert (first.status_code, first.headers.get("X-Cache-Status")) == (200, "MISS")
            assert (second.status_code, second.headers.get("X-Cache-Status")) == (200, "HIT")
            assert second.content == first.content
            assert second.headers["ETag"] == first.headers["ETag"]
            again = requests.get(route, timeout=30,
                                 headers={"If-None-Match": first.headers["ETag"]})
            assert again.status_code == 304
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        text = log.read_text(errors="replace")
        assert process.returncode == 0, text[-3000:]
        assert text.rstrip().endswith("Orthanc has stopped")
        assert "cache plugin: version" in text
