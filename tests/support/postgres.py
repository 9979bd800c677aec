"""A throw-away PostgreSQL server for integration tests, and Orthanc nodes sharing it.

:class:`PostgresServer` runs ``initdb`` then ``postgres`` in a fresh temporary
directory (data, Unix socket and ``postgres.log``), listening on 127.0.0.1 only
on a free port, with ``trust`` authentication for loopback connections. It is
meant to be the shared index of several Orthanc nodes (orthanc-postgresql 4.0),
see :meth:`PostgresServer.orthanc_config` and :class:`OrthancCluster`.

PostgreSQL refuses to run as root: when the tests run as root, the server and
``initdb`` run as the ``postgres`` system user, which owns the directory.
No process is left behind (:mod:`support.process` runs it): the whole process
group is killed at interpreter exit, and the postmaster gets SIGKILL if the
test process dies (parent-death signal; its backends then exit).
:meth:`PostgresServer.stop` (also called at exit) removes the directory, so
every :meth:`PostgresServer.start` begins with an empty server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from support.orthanc_server import PYTHON_PLUGIN, OrthancServer
from support.process import ManagedProcess, ProcessStartError, Server
from support.stacks import POSTGRESQL_INDEX_PLUGIN


def _newest_postgres() -> Path:
    """The bin directory of the newest PostgreSQL installed (15 on Debian 12, 17 on 13)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda path: (int(path.parent.parent.name)
                                     if path.parent.parent.name.isdigit() else 0))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


POSTGRES_BIN_DIR = Path(os.environ.get("POSTGRES_BIN_DIR", str(_newest_postgres())))
SUPERUSER = "postgres"

# Throw-away data: durability is useless, speed is welcome.
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
_HBA = (
    "# Throw-away test server: trust on the Unix socket and IPv4 loopback only.\n"
    "local all all trust\n"
    "host  all all 127.0.0.1/32 trust\n"
)


class PostgresStartError(ProcessStartError):
    """``initdb`` failed, or ``postgres`` exited or did not accept connections in time."""


class OrthancCluster(NamedTuple):
    """Orthanc nodes sharing one PostgreSQL index (:attr:`postgres`) and one storage directory."""

    postgres: PostgresServer
    nodes: List[OrthancServer]
    storage_dir: Path


class PostgresServer(Server):
    """A PostgreSQL 15 server in its own temporary directory, with one database created at start.

    Usable as a context manager (``with PostgresServer() as pg: ...``).
    """

    def __init__(self, database: str = "orthanc", bin_dir: Path = POSTGRES_BIN_DIR,
                 start_timeout: float = 30) -> None:
        """Prepare (not start) a server; ``database`` is created by :meth:`start`."""
        self.database = database
        self.bin_dir = Path(bin_dir)
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.workdir: Optional[Path] = None  # created by start(), removed by stop()
        # PostgreSQL refuses root: run it as the "postgres" system user instead.
        self._account = pwd.getpwnam(SUPERUSER) if os.geteuid() == 0 else None
        # Fast shutdown (SIGINT disconnects clients); the group (backends) is killed after.
        # The parent-death signal is set after the switch of user.
        self.managed = ManagedProcess(
            "postgres", self._command, self._accepts, start_timeout=start_timeout,
            stop_signal=signal.SIGINT, kill_group=True, banner=_banner,
            error=PostgresStartError, at_exit=lambda: self.stop(timeout=0),
            **self._account_options())
        self._log_text = ""  # the log as it was when the directory was removed

    # -- properties -------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``PGDATA``)."""
        return self._workdir / "data"

    @property
    def log_path(self) -> Path:
        """stdout+stderr of ``initdb`` and ``postgres``."""
        return self._workdir / "postgres.log"

    # -- lifecycle --------------------------------------------------------

    def start(self) -> PostgresServer:
        """Create the directory, ``initdb``, launch ``postgres``, wait for it, create the
        database."""
        if self.is_running:
            raise RuntimeError("PostgreSQL is already running")
        try:
            self._make_workdir()
            self._initdb()
            self.managed.cwd = self.workdir
            self.managed.env = self._env()
            self.managed.log_path = self.log_path
            self.managed.start()
            self.create_database(self.database)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10) -> None:
        """Fast shutdown (SIGINT disconnects clients), SIGKILL after ``timeout``; remove the
        directory."""
        self.managed.stop(timeout)
        if self.workdir is not None:
            self._log_text = self.log_text()
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- SQL ----------------------------------------------------------------

    def psql(self, sql: str, database: Optional[str] = None) -> str:
        """Run ``sql`` with ``psql`` (unaligned, tuples only); returns its stdout, raises on
        error."""
        return self._client("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", database or self.database, "-c", sql)

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` (UTF-8)."""
        self._client("createdb", "-E", "UTF8", "-T", "template0", name)

    # -- Orthanc ------------------------------------------------------------

    def orthanc_config(self, database: Optional[str] = None, lock: bool = False,
                       connections: int = 4, python_plugin: bool = True) -> Dict[str, Any]:
        """Orthanc configuration fragment using this server as index (not as storage).

        ``lock=False`` lets several Orthanc nodes share the index. ``connections``
        is ``IndexConnectionsCount`` (orthanc-postgresql >= 4.0). ``Plugins``
        lists the PostgreSQL index plugin, after the Python plugin if
        ``python_plugin``: the fragment replaces the ``Plugins`` set by
        :class:`~support.orthanc_server.OrthancServer`.
        """
        plugins: List[str] = [PYTHON_PLUGIN] if python_plugin else []
        plugins.append(POSTGRESQL_INDEX_PLUGIN)
        return {
            "Plugins": plugins,
            "PostgreSQL": {
                "EnableIndex": True,
                "EnableStorage": False,
                "Host": self.host,
                "Port": self.port,
                "Database": database or self.database,
                "Username": SUPERUSER,
                "Password": "",
                "EnableSsl": False,
                "Lock": lock,
                "IndexConnectionsCount": connections,
                "MaximumConnectionRetries": 3,
                "ConnectionRetryInterval": 1,
            },
        }

    # -- logs -----------------------------------------------------------------

    def log_text(self) -> str:
        """Everything ``initdb`` and ``postgres`` printed (kept after :meth:`stop`)."""
        if self.workdir is None or not self.log_path.exists():
            return self._log_text
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- internals ------------------------------------------------------------

    @property
    def _workdir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("PostgreSQL has not been started")
        return self.workdir

    def _make_workdir(self) -> None:
        # Not under pytest's tmp_path: the "postgres" user could not traverse root's 0700 folders.
        self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-test-pg-"))
        if self._account is not None:
            os.chown(self.workdir, self._account.pw_uid, self._account.pw_gid)
        self.log_path.touch()

    def _env(self) -> Dict[str, str]:
        """Inherited environment without libpq's ``PG*`` variables, C locale."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self._account is not None:
            env.update(HOME=self._account.pw_dir, USER=SUPERUSER, LOGNAME=SUPERUSER)
        return env

    def _account_options(self) -> Dict[str, Any]:
        """Popen options that run a program as the ``postgres`` user (when root)."""
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        command = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        with self.log_path.open("ab") as log:
            log.write(_banner(command).encode())
            log.flush()
            initdb = subprocess.Popen(command, cwd=self._workdir, env=self._env(),
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, **self._account_options())
        if initdb.wait(self.start_timeout) != 0:
            raise PostgresStartError(f"initdb exited with code {initdb.returncode}:\n"
                                     f"{self.log_tail()}")
        (self.data_dir / "pg_hba.conf").write_text(_HBA, encoding="utf-8")

    def _command(self, port: int) -> Sequence[str]:
        settings = dict(_SERVER_SETTINGS, port=str(port),
                        unix_socket_directories=str(self._workdir))
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _accepts(self, port: int) -> bool:
        probe = [str(self.bin_dir / "pg_isready"), "-q", "-t", "1",
                 "-h", self.host, "-p", str(port), "-U", SUPERUSER]
        return subprocess.run(probe, env=self._env(), stdin=subprocess.DEVNULL,
                              check=False).returncode == 0

    def _client(self, program: str, *args: str) -> str:
        """Run a client program over TCP as the superuser; returns stdout, raises on error."""
        result = subprocess.run(
            [str(self.bin_dir / program), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER,
             *args],
            env=self._env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr}")
        return result.stdout


def _banner(command: Sequence[str]) -> str:
    """The line the log gets before each program's output."""
    return "===== harness: " + " ".join(command) + " =====\n"
