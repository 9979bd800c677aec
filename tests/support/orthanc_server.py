"""Start and drive a real Orthanc process for integration tests.

Each :class:`OrthancServer` owns a working directory holding its JSON
configuration (``orthanc.json``), its storage/index (``storage/``) and the
combined stdout+stderr of the process (``orthanc.log``). Orthanc runs HTTP only
on a free 127.0.0.1 port, optionally with the Python plugin loaded, in the
selected stack (:mod:`support.stacks`); :mod:`support.process` runs it.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from orthanc_cache_plugin.core.data import Outcome
from support import stacks
from support.process import (
    ManagedProcess,
    ProcessStartError,
    Server,
    StopResult,
    free_port as free_port,
)
from support.stacks import ORTHANC_BINARY, PYTHON_PLUGIN

_PORT_IN_USE = "TCP port of the HTTP server is privileged or already in use"


class OrthancStartError(ProcessStartError):
    """Orthanc exited or did not answer ``GET /system`` in time."""


class OrthancServer(Server):
    """A real Orthanc process, configured from sane defaults plus ``config`` (shallow merge)."""

    def __init__(
        self,
        workdir: Union[str, Path],
        python_script: Optional[Union[str, Path]] = None,
        config: Optional[Dict[str, Any]] = None,
        env: Optional[Dict[str, str]] = None,
        log_flags: Sequence[str] = ("--verbose",),
        use_checkout: bool = True,
        stack: Optional[str] = None,
    ) -> None:
        """Prepare (not start) a server, in the selected stack (:mod:`support.stacks`).

        ``env`` extends the inherited environment (e.g. ``{"TZ": "UTC"}``);
        ``log_flags`` are Orthanc's log options (e.g. ``("--trace",)``);
        ``use_checkout`` makes the plugin's script import the package from this
        checkout rather than from the interpreter's site-packages; ``stack``
        names another stack than the selected one.
        """
        self.stack = stack or stacks.current()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.storage_dir = self.workdir / "storage"
        self.python_script = Path(python_script).resolve() if python_script else None
        self.log_flags = tuple(log_flags)
        self.config: Dict[str, Any] = {
            "Name": "harness-" + uuid.uuid4().hex[:12],
            "HttpPort": free_port(),
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpThreadsCount": 16,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "Plugins": [PYTHON_PLUGIN] if self.python_script else [],
        }
        if self.python_script:
            self.config["PythonScript"] = str(self.python_script)
        self.config.update(config or {})
        # The plugin embeds the system Python: don't leak the test runner's paths into it.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.update(stacks.python_path(use_checkout))
        self.env.update(env or {})
        self.session = requests.Session()
        self.session.trust_env = False  # never route 127.0.0.1 through an HTTP proxy
        # Orthanc closes idle keep-alive connections after 1 s; a GET that meets
        # such a connection is sent again on a new one (never a POST, PUT, DELETE).
        retry = Retry(total=2, connect=2, read=2, status=0, allowed_methods=("GET", "HEAD"),
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        # Not in a process group of its own: the stack's chroot execs Orthanc, whose pid
        # is the one started, and SIGTERM, then SIGKILL, go to it.
        self.managed = ManagedProcess(
            "Orthanc", self._command, self._answers, self.log_path,
            port=int(self.config["HttpPort"]), port_pinned=bool(config and "HttpPort" in config),
            port_in_use=_PORT_IN_USE, start_timeout=30, banner=self._banner,
            error=OrthancStartError, cwd=self.workdir)

    # -- properties -------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, without trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------

    def start(self, timeout: float = 30) -> OrthancServer:
        """Launch Orthanc and wait until ``GET /system`` answers 200 with our ``Name``."""
        if self.is_running:
            raise RuntimeError("Orthanc is already running")
        self.managed.env = self.env
        self.managed.start(timeout)
        return self

    def stop(self, timeout: float = 10) -> StopResult:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        self.session.close()  # drop keep-alive connections first
        return self.managed.stop(timeout)

    def kill(self) -> Optional[int]:
        """SIGKILL immediately (simulates a crash); returns the exit code."""
        self.session.close()
        return self.managed.kill()

    def restart(self, timeout: float = 30) -> StopResult:
        """Stop gracefully and start again on the same port and storage."""
        result = self.stop()
        self.start(timeout)
        return result

    # -- logs -------------------------------------------------------------

    def log_text(self) -> str:
        """Everything Orthanc (and the Python script) printed, across restarts."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """Wait until the log of the current run matches the regex ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.managed.current_log())
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in Orthanc log:\n{self.log_tail()}")
            time.sleep(0.05)

    def outcomes(self, path: str, at_least: int = 0, timeout: float = 5) -> List[Outcome]:
        """What the plugin did for each GET of ``path`` (its query aside: the log names
        the URI), oldest first, read from the log line every request gets; waits until
        there are ``at_least`` (Orthanc writes its log asynchronously)."""
        pattern = re.compile(r"cache plugin: ([A-Z][A-Z-]*) GET %s: "
                             % re.escape(path.split("?")[0]))
        deadline = time.monotonic() + timeout
        while True:
            found = [Outcome(word) for word in pattern.findall(self.log_text())]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    # -- HTTP -------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """HTTP request to ``url + path`` (no status check; default timeout 30 s)."""
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """``GET url + path``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """``POST url + path``."""
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        """``PUT url + path``."""
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        """``DELETE url + path``."""
        return self.request("DELETE", path, **kwargs)

    def upload(self, dicom: bytes) -> Dict[str, Any]:
        """``POST /instances``; returns Orthanc's JSON answer (``ID``, ``ParentStudy``,
        ``Status``...)."""
        response = self.post("/instances", data=dicom,
                             headers={"Content-Type": "application/dicom"})
        response.raise_for_status()
        return response.json()

    # -- internals --------------------------------------------------------

    def _command(self, port: int) -> List[str]:
        """Write the configuration for ``port``; the command that runs Orthanc in the stack."""
        self.config["HttpPort"] = port
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        return stacks.command([ORTHANC_BINARY, *self.log_flags, str(self.config_path)],
                              self.stack)

    def _banner(self, command: Sequence[str]) -> str:
        return (f"===== harness: starting {ORTHANC_BINARY} ({self.stack} stack) "
                f"on port {self.port} =====\n")

    def _answers(self, port: int) -> bool:
        """``GET /system`` answers 200 with our ``Name``."""
        try:
            response = self.session.get(self.url + "/system", timeout=1)
            return (response.status_code == 200
                    and response.json().get("Name") == self.config["Name"])
        except (requests.RequestException, ValueError):
            return False
