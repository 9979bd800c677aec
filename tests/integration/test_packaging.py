"""The package as users get it: a wheel built from a clean copy of the checkout, installed
into a fresh virtual environment, and loaded from there by Orthanc's Python plugin."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Callable, Dict, List

from support.checkout import clean_copy
from support.dicom_factory import make_study
from support.orthanc_server import OrthancServer

SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter that Orthanc's Python plugin embeds
NAME = "orthanc-cache-plugin"

STARTUP_SCRIPT = '''\
"""Packaging test: the cache plugin and diskcache from a virtual environment."""

import sys

sys.path.insert(0, {site_packages!r})

import orthanc  # noqa: E402
import diskcache  # noqa: E402
import orthanc_cache_plugin  # noqa: E402

orthanc.LogWarning("packaging test: orthanc_cache_plugin %s from %s, diskcache from %s" % (
    orthanc_cache_plugin.__version__, orthanc_cache_plugin.__file__, diskcache.__file__))
orthanc_cache_plugin.enable_cache_plugin()
'''


def run(*command: str, cwd: Path) -> str:
    """Run a command; its standard output, or a failure showing both outputs."""
    done = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, "%s failed:\n%s\n%s" % (" ".join(command), done.stdout,
                                                         done.stderr)
    return done.stdout


def pip_show(python: Path) -> Dict[str, str]:
    """``pip show orthanc-cache-plugin`` as a dict."""
    fields: Dict[str, str] = {}
    for line in run(str(python), "-m", "pip", "show", NAME, cwd=python.parent).splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def test_a_wheel_installed_in_a_virtual_environment_runs_in_orthanc(
        repo_root: Path, tmp_path: Path, orthanc_factory: Callable[..., OrthancServer]) -> None:
    source = clean_copy(repo_root, tmp_path / "source")
    assert (source / "pyproject.toml").is_file() and not (source / ".venv").exists()
    declared = re.search(r'^__version__ = "([^"]+)"',
                         (source / "orthanc_cache_plugin" / "__init__.py")
                         .read_text(encoding="utf-8"), re.MULTILINE)
    assert declared, "no __version__ in orthanc_cache_plugin/__init__.py"
    version = declared.group(1)
    pyproject = (source / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^version = "%s"$' % re.escape(version), pyproject, re.MULTILINE)

    # Build (in pip's isolated build environment) from the copy: an absolute path, never a name.
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(source),
        cwd=tmp_path)
    wheel, = dist.glob("*.whl")
    assert wheel.name == "orthanc_cache_plugin-%s-py3-none-any.whl" % version
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(archive.read("orthanc_cache_plugin-%s.dist-info/METADATA"
                                                  % version).decode("utf-8"))
    packaged = {name.split("/")[0] for name in names}
    assert packaged == {"orthanc_cache_plugin", "orthanc_cache_plugin-%s.dist-info" % version}
    # Every module of every layer (subpackage), and nothing else.
    modules = sorted(name for name in names if name.startswith("orthanc_cache_plugin/"))
    assert modules == sorted(path.relative_to(source).as_posix()
                             for path in (source / "orthanc_cache_plugin").rglob("*.py"))
    assert metadata["Name"] == NAME and metadata["Version"] == version
    assert metadata["License"] == "AGPL-3.0-or-later"
    assert metadata["Requires-Python"] == ">=3.9"
    requirements: List[str] = metadata.get_all("Requires-Dist") or []
    # pyproject's "diskcache>=5.4,<5.7", as setuptools writes it (specifiers sorted).
    assert [r for r in requirements if "extra ==" not in r] == ["diskcache<5.7,>=5.4"]
    classifiers = metadata.get_all("Classifier") or []
    declared_classifiers = re.search(r"^classifiers = \[(.*?)\]", pyproject,
                                     re.MULTILINE | re.DOTALL)
    assert declared_classifiers
    assert classifiers == re.findall(r'"([^"]+)"', declared_classifiers.group(1))
    assert "License :: OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)" \
        in classifiers

    # A plain virtual environment of the system Python; installing the wheel pulls diskcache.
    venv = tmp_path / "venv"
    run(SYSTEM_PYTHON, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    run(str(python), "-m", "pip", "install", "--quiet", str(wheel), cwd=tmp_path)
    run(str(python), "-m", "pip", "check", cwd=tmp_path)
    shown = pip_show(python)
    assert shown["Name"] == NAME and shown["Version"] == version
    assert shown["License"] == "AGPL-3.0-or-later" and shown["Requires"] == "diskcache"
    site_packages = run(str(python), "-c",
                        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=tmp_path).strip()
    assert Path(shown["Location"]) == Path(site_packages)
    # The pure modules import without Orthanc.
    run(str(python), "-c",
        "from orthanc_cache_plugin.core.settings import load_settings; load_settings({}, {})",
        cwd=tmp_path)

    # Orthanc loads the package (and diskcache) from the virtual environment.
    script = tmp_path / "startup.py"
    script.write_text(STARTUP_SCRIPT.format(site_packages=site_packages), encoding="utf-8")
    server = orthanc_factory(python_script=script,
                             config={"CachePlugin": {"Directory": str(tmp_path / "cache")}})
    loaded = server.wait_for_log(r"packaging test: orthanc_cache_plugin (\S+) from (\S+), "
                                 r"diskcache from (\S+)")
    assert loaded.group(1) == version
    assert loaded.group(2) == str(Path(site_packages) / "orthanc_cache_plugin" / "__init__.py")
    assert loaded.group(3).startswith(site_packages + "/")
    server.wait_for_log(r"cache plugin: version %s" % re.escape(version))

    study = server.upload(make_study("PAT-packaging", 1, 2, seed="packaging")[0])["ParentStudy"]
    answer = server.get("/studies/%s/shared-tags" % study)
    assert answer.status_code == 200 and answer.headers["ETag"]
    again = server.get("/studies/%s/shared-tags" % study,
                       headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304
    assert "cache plugin: REVALIDATED GET /studies/%s/shared-tags" % study in server.log_text()


def test_the_clean_copy_is_the_working_tree_without_debris(repo_root: Path, tmp_path: Path) -> None:
    copy = clean_copy(repo_root, tmp_path / "copy")
    for relative in ("orthanc_cache_plugin/__init__.py", "pyproject.toml", "README.md",
                     "example.py"):
        assert (copy / relative).read_bytes() == (repo_root / relative).read_bytes()
    debris = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}
    assert not [path for path in copy.rglob("*") if debris & set(path.relative_to(copy).parts)]
