"""A real nginx for integration tests, typically in front of an Orthanc.

:class:`NginxServer` runs ``nginx -c <conf> -p <prefix> -e <error log> -g 'daemon off;'``
from the Debian package ``nginx`` in a fresh temporary directory that holds its
configuration, cache, temporary files, logs and Unix sockets, listening on a
free 127.0.0.1 port.

The caller provides the *site*: the ``http``-context part of the
configuration, what Debian puts in ``/etc/nginx/conf.d/*.conf``
(``proxy_cache_path``, ``upstream`` and ``server`` blocks...). In it,
``@PORT@`` is replaced by the listening port and ``@PREFIX@`` by the
directory. The harness wraps it in a main configuration that sends every log
and temporary file to the directory and defines the access log format
``harness``, which shows ``$upstream_cache_status`` (see :data:`ACCESS_LOG`).

No process is left behind (:mod:`support.process` runs it). By default nginx
runs as a single process (``master_process off``), which gets SIGKILL if the
test process dies (parent-death signal). With ``master_process=True`` it runs
as in production, a master and one worker (``user root;`` when the tests run as
root); its whole process group is killed by :meth:`NginxServer.stop` and at
interpreter exit, but a worker would outlive a SIGKILL of the test process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import requests

from support.process import ManagedProcess, ProcessStartError, Server, tcp_accepts

NGINX_BINARY = os.environ.get("NGINX_BINARY", "/usr/sbin/nginx")

#: Fields of the harness's access log lines, in order: ``key=value`` separated by tabs.
ACCESS_LOG = ("method", "uri", "status", "cache", "upstream_status", "user")

_MAIN_CONFIGURATION = """\
# Written by tests/support/nginx.py.
{process_model}
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    client_body_temp_path @PREFIX@/temp/client_body;
    proxy_temp_path @PREFIX@/temp/proxy;
    fastcgi_temp_path @PREFIX@/temp/fastcgi;
    uwsgi_temp_path @PREFIX@/temp/uwsgi;
    scgi_temp_path @PREFIX@/temp/scgi;

    log_format harness "method=$request_method\\turi=$request_uri\\tstatus=$status"
                       "\\tcache=$upstream_cache_status\\tupstream_status=$upstream_status"
                       "\\tuser=$remote_user";
    access_log @PREFIX@/access.log harness;

{site}
}}
"""


class NginxStartError(ProcessStartError):
    """nginx is missing, exited during start-up, or did not accept connections in time."""


def _indent(text: str, prefix: str = "    ") -> str:
    return "".join(prefix + line if line.strip() else line for line in text.splitlines(True))


class NginxServer(Server):
    """A real nginx process serving ``site`` (``http``-context configuration) on 127.0.0.1.

    Usable as a context manager (``with NginxServer(site) as proxy: ...``).
    """

    def __init__(self, site: str, master_process: bool = False, start_timeout: float = 10) -> None:
        """Prepare (not start) a server; ``site`` may use ``@PORT@`` and ``@PREFIX@``."""
        self.site = site
        self.master_process = master_process
        self.workdir: Optional[Path] = None  # created by start(), removed by stop()
        # Graceful shutdown is SIGQUIT; the group (workers, cache manager) is killed after.
        self.managed = ManagedProcess(
            "nginx", self._command, tcp_accepts, start_timeout=start_timeout,
            poll_interval=0.02, stop_signal=signal.SIGQUIT, stop_timeout=5, kill_group=True,
            parent_death_kill=not master_process, diagnostics=self.error_log,
            error=NginxStartError, at_exit=lambda: self.stop(timeout=0))
        self.session = requests.Session()
        self.session.trust_env = False  # never route 127.0.0.1 through an HTTP proxy
        self._logs = {"access.log": "", "error.log": "", "nginx.out": ""}  # kept after stop()

    # -- properties -------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, without trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def configuration(self) -> str:
        """The whole configuration file, as written for the current port and directory."""
        if self.master_process:
            process_model = "master_process on;\nworker_processes 1;"
            if os.geteuid() == 0:
                process_model += "\nuser root;"
        else:
            process_model = "master_process off;"
        text = _MAIN_CONFIGURATION.format(process_model=process_model, site=_indent(self.site))
        return text.replace("@PORT@", str(self.port)).replace("@PREFIX@", str(self._workdir))

    # -- lifecycle --------------------------------------------------------

    def start(self) -> NginxServer:
        """Create the directory, launch nginx and wait until it accepts connections."""
        if self.is_running:
            raise RuntimeError("nginx is already running")
        if not Path(NGINX_BINARY).is_file():
            raise NginxStartError(f"{NGINX_BINARY} is missing: install the Debian package nginx "
                                  "(scripts/test.sh does)")
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-test-nginx-"))
            for folder in ("temp", "logs"):
                (self._workdir / folder).mkdir()
            self.managed.cwd = self.workdir
            self.managed.log_path = self.workdir / "nginx.out"
            self.managed.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5) -> None:
        """Graceful shutdown (SIGQUIT), SIGKILL after ``timeout``; remove the directory."""
        self.session.close()
        self.managed.stop(timeout)
        if self.workdir is not None:
            for name in self._logs:
                self._logs[name] = self._read(name)
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- HTTP -------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """HTTP request to ``url + path`` (no status check; default timeout 30 s)."""
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """``GET url + path``."""
        return self.request("GET", path, **kwargs)

    # -- logs -------------------------------------------------------------

    def access_log(self, at_least: int = 0, timeout: float = 5) -> List[Dict[str, str]]:
        """The ``harness`` access log: one dict per request (keys :data:`ACCESS_LOG`), oldest
        first; waits until it has ``at_least`` lines (nginx logs a request after answering it)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self._read("access.log").splitlines()
            if len(lines) >= at_least or time.monotonic() > deadline:
                return [dict(field.split("=", 1) for field in line.split("\t") if "=" in field)
                        for line in lines]
            time.sleep(0.05)

    def error_log(self) -> str:
        """nginx's error log and its standard output and error (kept after :meth:`stop`)."""
        return self._read("error.log") + self._read("nginx.out")

    def read_file(self, relative: str) -> str:
        """A file of the server's directory, e.g. a log that the site writes to ``@PREFIX@/...``."""
        return (self._workdir / relative).read_text(encoding="utf-8", errors="replace")

    def wait_for_access_log(self, pattern: str, timeout: float = 5) -> re.Match[str]:
        """Wait until the raw access log matches the regex ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self._read("access.log"))
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in nginx's access log:\n"
                                   f"{self._read('access.log')}")
            time.sleep(0.05)

    # -- internals --------------------------------------------------------

    @property
    def _workdir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("nginx has not been started")
        return self.workdir

    def _read(self, name: str) -> str:
        if self.workdir is None:
            return self._logs.get(name, "")
        path = self.workdir / name
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def _command(self, port: int) -> Sequence[str]:
        """Write the configuration for ``port`` (:attr:`port` already is), clear the last
        run's pid file and error log; the command line."""
        config_path = self._workdir / "nginx.conf"
        config_path.write_text(self.configuration, encoding="utf-8")
        for stale in ("nginx.pid", "error.log"):
            (self._workdir / stale).unlink(missing_ok=True)
        return [NGINX_BINARY, "-c", str(config_path), "-p", str(self._workdir) + "/",
                "-e", str(self._workdir / "error.log"), "-g", "daemon off;"]
