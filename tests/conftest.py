"""Shared pytest fixtures: repository paths and real Orthanc servers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from support import stacks
from support.orthanc_server import OrthancServer
from support.postgres import OrthancCluster, PostgresServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stack", choices=stacks.NAMES, default=stacks.current(),
                     help="the Orthanc that integration tests start: sid (Orthanc 1.13, "
                          "plugin 7.1; default), trixie (1.12.7, plugin 5.0), bookworm "
                          "(1.10.1, plugin 4.0) or host (see scripts/stack.sh)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts real Orthanc processes")
    config.addinivalue_line("markers", "old_stack: also runs on Debian 12's Orthanc 1.10.1 "
                                       "and Debian 13's 1.12.7 (--stack bookworm, trixie), "
                                       "which keeps it working there")
    stacks.select(config.getoption("--stack"))


def pytest_report_header(config: pytest.Config) -> List[str]:
    """The selected stack's versions, and where they differ from README.md's table."""
    try:
        held = stacks.versions()
    except Exception:  # noqa: BLE001 - a header must not stop the run
        return ["Orthanc stack: %s (not built: scripts/stack.sh build %s)"
                % (stacks.current(), stacks.current())]
    found = ", ".join("%s %s" % item for item in sorted(held.items()))
    lines = ["Orthanc stack: %s (%s)" % (stacks.current(), found)]
    if stacks.current() != "host":
        readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
        lines += stacks.table_differences(stacks.current(), readme, held)
    return lines


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Everything under tests/integration/ is marked ``integration``."""
    integration_dir = REPO_ROOT / "tests" / "integration"
    for item in items:
        if integration_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Root of the git checkout."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def example_script(repo_root: Path) -> Path:
    """``<repo>/example.py``, the Orthanc Python script that loads the plugin package."""
    script = repo_root / "example.py"
    if not script.is_file():
        pytest.fail(f"{script} is missing")
    return script


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancServer]]:
    """Call ``orthanc_factory(python_script=None, config=None, env=None, start=True)``
    to get an :class:`OrthancServer` in its own folder under ``tmp_path``;
    every server is stopped at teardown."""
    servers: List[OrthancServer] = []

    def create(start: bool = True, **kwargs: Any) -> OrthancServer:
        server = OrthancServer(tmp_path / f"orthanc-{len(servers)}", **kwargs)
        servers.append(server)
        if start:
            server.start()
        return server

    yield create
    for server in servers:
        server.stop()


@pytest.fixture
def cached_orthanc(orthanc_factory: Callable[..., OrthancServer], example_script: Path,
                   tmp_path: Path) -> Callable[..., OrthancServer]:
    """Call ``cached_orthanc(settings=None, config=None, **server_kwargs)`` for an
    Orthanc running the plugin through example.py, its store in ``tmp_path``;
    ``settings`` is merged into the ``CachePlugin`` section."""
    count = [0]

    def create(settings: Optional[Dict[str, Any]] = None, config: Optional[Dict[str, Any]] = None,
               **kwargs: Any) -> OrthancServer:
        count[0] += 1
        section = {"Directory": str(tmp_path / ("cache-%d" % count[0]))}
        section.update(settings or {})
        merged = {"CachePlugin": section}
        merged.update(config or {})
        kwargs.setdefault("python_script", example_script)
        return orthanc_factory(config=merged, **kwargs)

    return create


@pytest.fixture
def cluster(example_script: Path, tmp_path: Path) -> Iterator[Callable[..., OrthancCluster]]:
    """Call ``cluster(n=2, python_script=example.py, settings=None, config=None, **server_kwargs)``
    to start a throw-away PostgreSQL server, then ``n`` Orthanc nodes sharing it as index
    (``Lock: false``) and sharing one ``StorageDirectory``, all in ``tmp_path/cluster-<k>``.

    Each node has its own ``CachePlugin`` directory (``settings`` is merged into that
    section) and its own Orthanc defaults, hence its own ``DatabaseServerIdentifier``
    unless ``config`` sets one; ``config`` and ``server_kwargs`` apply to every node.
    Nodes, then PostgreSQL, are stopped at teardown."""
    clusters: List[OrthancCluster] = []

    def create(n: int = 2, python_script: Optional[Path] = example_script,
               settings: Optional[Dict[str, Any]] = None, config: Optional[Dict[str, Any]] = None,
               **kwargs: Any) -> OrthancCluster:
        base = tmp_path / f"cluster-{len(clusters)}"
        result = OrthancCluster(PostgresServer(), [], base / "storage")
        clusters.append(result)
        result.postgres.start()
        for index in range(n):
            section = {"Directory": str(base / f"cache-{index}")}
            section.update(settings or {})
            merged = result.postgres.orthanc_config(python_plugin=python_script is not None)
            merged.update({"StorageDirectory": str(result.storage_dir), "CachePlugin": section})
            merged.update(config or {})
            node = OrthancServer(base / f"node-{index}", python_script=python_script, config=merged,
                                 **kwargs)
            result.nodes.append(node)
            node.start()  # one after the other: the first node creates the database schema
        return result

    yield create
    for created in clusters:
        with ThreadPoolExecutor() as pool:  # Orthanc takes ~2 s to stop its HTTP server
            list(pool.map(OrthancServer.stop, created.nodes))
        created.postgres.stop()
