"""What a fresh clone of this repository holds, copied elsewhere."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

_IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                                  ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache")


def clean_copy(repo_root: Path, destination: Path) -> Path:
    """The files a fresh clone would have, with the working tree's content: tracked files and
    untracked ones that .gitignore does not exclude (without git: the tree minus build debris)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=repo_root, capture_output=True,
                                text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        shutil.copytree(repo_root, destination, ignore=_IGNORED)
        return destination
    for relative in filter(None, listed.split("\0")):
        source = repo_root / relative
        if source.is_file():  # tracked files deleted from the working tree are skipped
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination
