"""Relative links of the Markdown documentation lead somewhere: the file exists and,
for ``file#anchor``, the file has a heading with that anchor (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md",
                    *(REPO_ROOT / "docs").glob("*.md"), *(REPO_ROOT / "bench").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REPO_PATH = re.compile(r"`((?:orthanc_cache_plugin|tests|bench|scripts|tools|docs)/[\w./-]+)`")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SETEXT = re.compile(r"^([^\n]+)\n(?:=+|-+)[ \t]*$", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation other
    than ``-`` and ``_`` removed, each space a ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    """Every anchor of a Markdown file, repeated headings numbered as GitHub does."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    headings = [(m.start(), m.group(1)) for m in _HEADING.finditer(text)]
    headings += [(m.start(), m.group(1)) for m in _SETEXT.finditer(text)
                 if m.group(1).strip() and not m.group(1).lstrip().startswith(("|", "-", "*"))]
    seen: Dict[str, int] = {}
    found = set()
    for _, heading in sorted(headings):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else "%s-%d" % (base, count))
    return found


def relative_links(path: Path) -> List[str]:
    """The link targets of a Markdown file outside code, leaving out URLs."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text(encoding="utf-8")))
    return [target for target in _LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def broken_links(path: Path) -> List[Tuple[str, str]]:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append((target, "no such file"))
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append((target, "no heading with this anchor in " + linked.name))
    return broken


def missing_paths(path: Path) -> List[str]:
    """Files of this repository named in code spans (``orthanc_cache_plugin/...``,
    ``tests/...``...) that do not exist; names with a placeholder (``cluster-STACK.md``)
    and the benchmarks' output (``bench/results/``, ignored by git) are left out."""
    text = path.read_text(encoding="utf-8")
    return [name for name in _REPO_PATH.findall(text)
            if not re.search(r"[A-Z]{2,}|\*", name) and not name.startswith("bench/results/")
            and not (REPO_ROOT / name.rstrip("/")).exists()]


def test_the_slugs_follow_githubs_rules() -> None:
    assert slug("Client-side caching, proxies and CDNs") == "client-side-caching-proxies-and-cdns"
    assert slug("Python plugin 4.3 and later: `AllowThreads`") == \
        "python-plugin-43-and-later-allowthreads"
    assert slug("AllowThreads on Orthanc 1.13.0 / plugin 7.1") == \
        "allowthreads-on-orthanc-1130--plugin-71"
    assert slug("The incoming-request filter (`WatchHttpWrites`)") == \
        "the-incoming-request-filter-watchhttpwrites"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n[ok](#a-title), [bad](#nowhere), [gone](missing.md)\n"
                    "`[not a link](nowhere.md)`\n", encoding="utf-8")
    assert broken_links(page) == [("#nowhere", "no heading with this anchor in page.md"),
                                  ("missing.md", "no such file")]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    assert broken_links(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_file_of_the_repository_named_exists(document: Path) -> None:
    assert missing_paths(document) == []
