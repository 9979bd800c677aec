"""A throw-away Redis server for tests: start, stop, pause, restart on the same port.

:class:`RedisServer` runs Debian's ``redis-server`` in a fresh temporary
directory, listening on 127.0.0.1 only, on a free port, without persistence
(no RDB snapshot, no append-only file): every start begins empty, unless
:meth:`snapshot` saved the data, which the next start loads.  It can be
stopped, paused (SIGSTOP: connections are accepted by the kernel but nothing
answers) and resumed (SIGCONT), restarted on the same port, given a tiny
``maxmemory`` to provoke OOM errors, a password, ACL users (from the start,
and changed while it runs: NOPERM errors) and ``CLIENT PAUSE`` (every call
waits: a slow server).

No process is left behind (:mod:`support.process` runs it): the server gets
SIGKILL if the test process dies (parent-death signal), and every server still
running is killed at exit. The first start picks another free port if another
process took the one chosen; restarts keep the port.
Commands go through a raw socket in RESP (no client library needed).
"""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

from support.process import ManagedProcess, ProcessStartError, Server

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisStartError(ProcessStartError):
    """``redis-server`` exited or did not answer PING in time."""


def _command(*parts: Union[str, bytes]) -> bytes:
    """One RESP command."""
    encoded = [part.encode() if isinstance(part, str) else part for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded)


class RedisServer(Server):
    """A ``redis-server`` in its own temporary directory; a context manager."""

    def __init__(self, password: Optional[str] = None, start_timeout: float = 10,
                 users: Sequence[str] = ()) -> None:
        """``users``: ACL rules of users besides ``default``, one user a line as in an ACL
        file (``"orthanc on >secret ~prefix:* +@all"``), in place at every start."""
        self.host = "127.0.0.1"
        self.password = password
        self.users = list(users)
        self.workdir: Optional[Path] = None
        self.managed = ManagedProcess(
            "redis-server", self._command_line, self._answers, start_timeout=start_timeout,
            poll_interval=0.02, new_session=True, diagnostics=self._diagnostics,
            error=RedisStartError, at_exit=self.remove)
        self.paused = False

    @property
    def url(self) -> str:
        """redis://[:password@]127.0.0.1:port/0"""
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s%s:%d/0" % (auth, self.host, self.port)

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "redis.log"

    def start(self) -> RedisServer:
        """Launch the server (empty) and wait until it answers PING."""
        if self.is_running:
            raise RuntimeError("redis-server is already running")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-test-redis-"))
        self.managed.cwd = self.workdir
        self.managed.log_path = self.workdir / "redis.out"
        self.paused = False
        self.managed.start()
        self.managed.port_pinned = True  # restarts keep the port
        return self

    def stop(self) -> None:
        """Kill the server (nothing to save); the directory stays for a restart."""
        self.managed.kill()
        self.paused = False

    def restart(self) -> RedisServer:
        """Stop, then start on the same port: an empty server."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections (the kernel does) but answers nothing."""
        self.managed.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.managed.send_signal(signal.SIGCONT)
        self.paused = False

    def remove(self) -> None:
        """Stop and remove the directory."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    # -- commands -------------------------------------------------------------

    def call(self, *parts: Union[str, bytes], timeout: float = 2) -> bytes:
        """Send one command (authenticated if the server has a password); the first line of
        the answer, or the bulk string's bytes (without the RESP framing)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as connection:
            file = connection.makefile("rb")
            if self.password:
                connection.sendall(_command("AUTH", self.password))
                file.readline()
            connection.sendall(_command(*parts))
            return _read_reply(file)

    def keys(self, pattern: str = "*") -> List[bytes]:
        """The keys matching ``pattern`` (KEYS: fine on a test server)."""
        with socket.create_connection((self.host, self.port), timeout=2) as connection:
            file = connection.makefile("rb")
            if self.password:
                connection.sendall(_command("AUTH", self.password))
                file.readline()
            connection.sendall(_command("KEYS", pattern))
            header = file.readline().strip()
            assert header.startswith(b"*"), header
            return [_read_bulk(file) for _ in range(int(header[1:]))]

    def config_set(self, name: str, value: str) -> None:
        answer = self.call("CONFIG", "SET", name, value)
        assert answer == b"+OK", answer

    def snapshot(self, timeout: float = 10) -> None:
        """Write the data to ``dump.rdb`` (BGSAVE: the server keeps answering meanwhile);
        the next start loads it instead of starting empty."""
        assert self.call("BGSAVE") == b"+Background saving started"
        deadline = time.monotonic() + timeout
        while True:
            info = self.call("INFO", "persistence").decode()
            if "rdb_bgsave_in_progress:0" in info:
                assert "rdb_last_bgsave_status:ok" in info, info
                return
            assert time.monotonic() < deadline, "BGSAVE still running after %s s" % timeout
            time.sleep(0.02)

    def url_of(self, user: str, password: str) -> str:
        """redis://user:password@127.0.0.1:port/0"""
        return "redis://%s:%s@%s:%d/0" % (user, password, self.host, self.port)

    def acl_setuser(self, user: str, *rules: str) -> None:
        """Change a user's rules at run time (``ACL SETUSER``): its connections obey at once."""
        answer = self.call("ACL", "SETUSER", user, *rules)
        assert answer == b"+OK", answer

    def client_pause(self, milliseconds: int) -> None:
        """``CLIENT PAUSE milliseconds ALL``: every client's commands (this helper's too)
        wait until the pause ends; connections are accepted meanwhile."""
        answer = self.call("CLIENT", "PAUSE", str(milliseconds), "ALL")
        assert answer == b"+OK", answer

    def log_tail(self, lines: int = 20) -> str:
        if self.workdir is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ------------------------------------------------------------

    def _command_line(self, port: int) -> List[str]:
        assert self.workdir is not None
        command = [REDIS_SERVER, "--port", str(port), "--bind", self.host,
                   "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                   "--logfile", str(self.log_path), "--daemonize", "no",
                   "--protected-mode", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.users:
            acl_file = self.workdir / "users.acl"
            acl_file.write_text("".join("user %s\n" % user for user in self.users),
                                encoding="utf-8")
            command += ["--aclfile", str(acl_file)]
        return command

    def _answers(self, port: int) -> bool:
        return self.call("PING") in (b"+PONG", b"-NOAUTH Authentication required.")

    def _diagnostics(self) -> str:
        """The log, then what redis-server printed (errors before it opens its log)."""
        return self.log_tail(40) + "\n" + self.managed.current_log()


def _read_bulk(file) -> bytes:  # type: ignore[no-untyped-def]
    header = file.readline().strip()
    assert header.startswith(b"$"), header
    length = int(header[1:])
    data: bytes = file.read(length + 2)[:length]
    return data


def _read_reply(file) -> bytes:  # type: ignore[no-untyped-def]
    line: bytes = file.readline().rstrip(b"\r\n")
    if line.startswith(b"$"):
        length = int(line[1:])
        return b"" if length < 0 else file.read(length + 2)[:length]
    return line
