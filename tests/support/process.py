"""One managed process: what the servers the tests start (nginx, PostgreSQL, redis-server,
Orthanc) have in common.

:class:`ManagedProcess` runs a command built for a TCP port (a free one, picked
again when the process reports that another process took it), appends the
process's standard output and error to a log file, waits until a readiness
probe answers, and stops it: a signal, a wait, then SIGKILL (of its whole
process group when it has workers). An error while starting names the process
and shows the tail of its log.

No process is left behind: each gets SIGKILL if the test process dies
(parent-death signal, unless asked otherwise), and every one still running at
interpreter exit is killed (or handed to its ``at_exit``, which may also remove
its files).

:class:`Server` is the base of the server helpers that own one: ``process``,
``is_running``, ``port`` and the context manager.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Type, TypeVar

#: What Linux's ``bind()`` error says (nginx, PostgreSQL and redis-server print it).
ADDRESS_IN_USE = "Address already in use"

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_running: Set[ManagedProcess] = set()


class ProcessStartError(RuntimeError):
    """The process exited during start-up, or was not ready in time."""


class StopResult(NamedTuple):
    """Outcome of :meth:`ManagedProcess.stop`."""

    returncode: Optional[int]  # negative: killed by that signal; None: was never started
    seconds: float
    killed: bool  # SIGKILL was needed


def free_port() -> int:
    """A TCP port that was free a moment ago (on all interfaces: Orthanc binds 0.0.0.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """Child pre-exec hook: have Linux SIGKILL the child if the test process dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tcp_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A process serving on a port of 127.0.0.1: start (with port retry), readiness, stop, log.

    ``command(port)`` builds the command line for a port; it may also write the
    configuration files that name it. ``ready(port)`` says whether the process
    serves yet (an ``OSError`` counts as no). The output goes to ``log_path``
    (appended; ``banner(command)``, if given, is written before each launch);
    ``diagnostics()`` is the text that errors show the tail of and that
    ``port_in_use`` is looked for in (by default the output of the current run).
    ``log_path`` and ``cwd`` may be set after construction, before :meth:`start`.

    Unless ``port_pinned``, a start whose process failed with ``port_in_use`` in
    its diagnostics is tried again on another free port, ``attempts`` times in
    all. :meth:`stop` sends ``stop_signal``; ``kill_group`` runs the process in
    its own process group and SIGKILLs the whole group (workers, backends) at
    the end of every stop.
    """

    def __init__(self, name: str, command: Callable[[int], Sequence[str]],
                 ready: Callable[[int], bool], log_path: Optional[Path] = None, *,
                 port: Optional[int] = None, port_pinned: bool = False, attempts: int = 3,
                 port_in_use: str = ADDRESS_IN_USE, start_timeout: float = 10,
                 poll_interval: float = 0.05, stop_signal: int = signal.SIGTERM,
                 stop_timeout: float = 10, kill_group: bool = False, new_session: bool = False,
                 parent_death_kill: bool = True,
                 banner: Optional[Callable[[Sequence[str]], str]] = None,
                 diagnostics: Optional[Callable[[], str]] = None,
                 error: Type[ProcessStartError] = ProcessStartError,
                 at_exit: Optional[Callable[[], object]] = None,
                 cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
                 **popen: Any) -> None:
        self.name = name
        self.command = command
        self.ready = ready
        self.log_path = log_path
        self.port = free_port() if port is None else port
        self.port_pinned = port_pinned
        self.attempts = attempts
        self.port_in_use = port_in_use
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.kill_group = kill_group
        self.new_session = new_session or kill_group
        self.parent_death_kill = parent_death_kill
        self.banner = banner
        self.diagnostics = diagnostics or self.current_log
        self.error = error
        self.at_exit = at_exit
        self.cwd = cwd
        self.env = env
        self.popen = popen
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log_offset = 0  # where the current run starts in the log

    # -- state --------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        """Process id of the current (or last) run."""
        return self.process.pid if self.process else None

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: Optional[float] = None) -> ManagedProcess:
        """Launch and wait until ready (``timeout`` s, by default ``start_timeout``); on
        failure the process is killed and :attr:`error` raised with the log's tail."""
        if self.is_running:
            raise RuntimeError(f"{self.name} is already running")
        attempts = 1 if self.port_pinned else self.attempts
        for attempt in range(1, attempts + 1):
            self._launch()
            try:
                self._wait_ready(self.start_timeout if timeout is None else timeout)
                return self
            except ProcessStartError:
                self.kill()
                if attempt == attempts or self.port_in_use not in self.diagnostics():
                    raise
                self.port = free_port()  # another process took ours
        raise AssertionError("unreachable")

    def stop(self, timeout: Optional[float] = None,
             stop_signal: Optional[int] = None) -> StopResult:
        """``stop_signal``, wait up to ``timeout`` s (by default ``stop_timeout``), then
        SIGKILL (the group's leftovers too, with ``kill_group``)."""
        if self.process is None:
            return StopResult(None, 0.0, False)
        began = time.monotonic()
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal if stop_signal is None else stop_signal)
            try:
                self.process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                killed = True
        self.kill()
        return StopResult(self.process.returncode, time.monotonic() - began, killed)

    def kill(self) -> Optional[int]:
        """SIGKILL at once (the whole group with ``kill_group``), reap; the exit code."""
        if self.process is None:
            return None
        if self.kill_group:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group is gone already
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        _running.discard(self)
        return self.process.returncode

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process (e.g. SIGSTOP, SIGCONT)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} has not been started")
        self.process.send_signal(signum)

    def __enter__(self) -> ManagedProcess:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- log ------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything in the log file, across runs."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def current_log(self) -> str:
        """The output of the current (or last) run only."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the diagnostics."""
        return tail(self.diagnostics(), lines)

    # -- internals ------------------------------------------------------------

    def _launch(self) -> None:
        if self.log_path is None:
            raise RuntimeError(f"{self.name}: no log_path to start with")
        command: List[str] = list(self.command(self.port))
        with self.log_path.open("ab") as log:
            if self.banner is not None:
                log.write(self.banner(command).encode())
                log.flush()
            self.log_offset = log.tell()
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=self.new_session,
                preexec_fn=die_with_parent if self.parent_death_kill else None, **self.popen)
        _running.add(self)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self.error(f"{self.name} exited with code {self.process.returncode} "
                                 f"during start-up:\n{self.log_tail()}")
            try:
                if self.ready(self.port):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self.error(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")
            time.sleep(self.poll_interval)


S = TypeVar("S", bound="Server")


class Server:
    """Base of a server helper whose process is a :class:`ManagedProcess` (``managed``):
    a context manager that starts it (unless running) and stops it."""

    managed: ManagedProcess

    @property
    def process(self) -> Optional[subprocess.Popen[bytes]]:
        """The current (or last) process."""
        return self.managed.process

    @property
    def pid(self) -> Optional[int]:
        """Process id of the current (or last) process."""
        return self.managed.pid

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (another one after a start that met a taken port)."""
        return self.managed.port

    @property
    def is_running(self) -> bool:
        """True while the process is alive."""
        return self.managed.is_running

    def start(self: S) -> S:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort: never leave a process behind."""
    for managed in list(_running):
        try:
            (managed.at_exit or managed.kill)()
        except Exception:  # noqa: BLE001 - the others must still be stopped
            managed.kill()
