"""support.process.ManagedProcess with real processes: start and readiness, port retry,
errors that show the log's tail, stop that escalates to SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, List

import pytest

from support.process import (
    ADDRESS_IN_USE,
    ManagedProcess,
    ProcessStartError,
    free_port,
    tcp_accepts,
)


class _Failed(ProcessStartError):
    pass


def _http_server(port: int) -> List[str]:
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]


def _answers_http(port: int) -> bool:
    """A real HTTP answer (not just a connection, which a bare listening socket accepts)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=0.5) as response:
        return response.status == 200


def _python(code: str) -> List[str]:
    return [sys.executable, "-c", code]


def _gone(pid: int, timeout: float = 5) -> bool:
    """Whether process ``pid`` ended (a zombie counts: it runs no more) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on a 127.0.0.1 port, which never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def test_starts_serves_and_stops_gracefully(tmp_path):
    process = ManagedProcess("http.server", _http_server, _answers_http, tmp_path / "out.log",
                             cwd=tmp_path)
    (tmp_path / "hello.txt").write_text("hello")
    with process:
        assert process.is_running and process.pid is not None
        with urllib.request.urlopen("http://127.0.0.1:%d/hello.txt" % process.port,
                                    timeout=5) as response:
            assert response.read() == b"hello"
    assert not process.is_running
    assert process.process is not None and process.process.returncode == -signal.SIGTERM
    assert not tcp_accepts(process.port)
    assert "GET /hello.txt" in process.log_text()  # the server's output went to the log


def test_stop_reports_a_graceful_stop(tmp_path):
    process = ManagedProcess("http.server", _http_server, _answers_http, tmp_path / "out.log")
    process.start()
    result = process.stop()
    assert result.returncode == -signal.SIGTERM and not result.killed
    assert result.seconds < 5
    assert process.stop() == (-signal.SIGTERM, pytest.approx(0, abs=1), False)  # idempotent


def test_a_process_that_exits_at_once_raises_with_the_tail_of_its_log(tmp_path):
    code = ("import sys\n"
            "for number in range(100): print('line', number)\n"
            "print('fatal: no such option --bogus', file=sys.stderr)\n"
            "sys.exit(3)\n")
    process = ManagedProcess("bogus", lambda port: _python(code), tcp_accepts,
                             tmp_path / "out.log", error=_Failed,
                             banner=lambda command: "=== launch ===\n")
    with pytest.raises(_Failed) as raised:
        process.start()
    message = str(raised.value)
    assert message.startswith("bogus exited with code 3 during start-up:\n")
    assert message.endswith("fatal: no such option --bogus")
    assert "\nline 61\nline 62\n" in message and "\nline 99\n" in message
    assert "line 60\n" not in message  # only the last 40 lines
    assert not process.is_running
    assert process.log_text().count("=== launch ===") == 1  # no retry: the port was free


def test_a_taken_port_is_replaced_by_a_free_one(tmp_path, listener):
    taken = listener.getsockname()[1]
    launches: List[int] = []

    def command(port: int) -> List[str]:
        launches.append(port)
        return _http_server(port)

    process = ManagedProcess("http.server", command, _answers_http, tmp_path / "out.log",
                             port=taken)
    with process:
        assert process.port != taken
        assert launches[0] == taken and launches[-1] == process.port
        assert _answers_http(process.port)
    assert ADDRESS_IN_USE in process.log_text()  # what the first launch said


def test_a_pinned_port_that_is_taken_fails_with_the_reason(tmp_path, listener):
    taken = listener.getsockname()[1]
    process = ManagedProcess("http.server", _http_server, _answers_http, tmp_path / "out.log",
                             port=taken, port_pinned=True, error=_Failed)
    with pytest.raises(_Failed, match=ADDRESS_IN_USE):
        process.start()
    assert process.port == taken and not process.is_running


def test_retries_end_after_the_last_attempt(tmp_path, listener):
    taken = listener.getsockname()[1]
    process = ManagedProcess("http.server", lambda port: _http_server(taken), _answers_http,
                             tmp_path / "out.log", attempts=2)
    with pytest.raises(ProcessStartError, match=ADDRESS_IN_USE):
        process.start()
    assert process.log_text().count(ADDRESS_IN_USE) == 2


def test_a_process_never_ready_is_killed_after_the_timeout(tmp_path):
    process = ManagedProcess("sleeper", lambda port: _python("import time; time.sleep(60)"),
                             lambda port: False, tmp_path / "out.log", start_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(ProcessStartError, match="sleeper not ready after 0.5 s"):
        process.start()
    assert 0.5 <= time.monotonic() - began < 5
    assert process.pid is not None and _gone(process.pid)


def test_stop_kills_a_process_that_ignores_the_stop_signal(tmp_path):
    code = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    log = tmp_path / "out.log"
    process = ManagedProcess("stubborn", lambda port: _python(code),
                             lambda port: "ready" in log.read_text(), log)
    process.start()
    result = process.stop(timeout=0.5)
    assert result.killed and result.returncode == -signal.SIGKILL
    assert 0.5 <= result.seconds < 5
    assert not process.is_running


def test_kill_group_reaches_the_children(tmp_path):
    code = ("import signal, subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
            "print('child', child.pid, flush=True)\n"
            "child.wait()\n")
    log = tmp_path / "out.log"
    process = ManagedProcess("parent", lambda port: _python(code),
                             lambda port: "child" in log.read_text(), log, kill_group=True)
    process.start()
    child = int(log.read_text().split()[1])
    assert os.getpgid(child) == process.pid  # its own group, with the child
    assert process.stop(timeout=2).returncode == -signal.SIGTERM
    assert _gone(child)


def test_start_twice_is_refused(tmp_path):
    process = ManagedProcess("http.server", _http_server, _answers_http, tmp_path / "out.log")
    with process:
        with pytest.raises(RuntimeError, match="already running"):
            process.start()


def test_tcp_accepts_and_free_port(listener):
    assert tcp_accepts(listener.getsockname()[1])
    port = free_port()
    assert not tcp_accepts(port)
