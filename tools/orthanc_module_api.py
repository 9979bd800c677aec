#!/usr/bin/env python3
"""Generate a Markdown reference of the Orthanc Python plugin's ``orthanc`` module.

The ``orthanc`` module only exists inside a running Orthanc, so this script
starts a temporary Orthanc (loopback-only, DICOM disabled, throw-away storage)
whose Python plugin loads ``tools/introspect_orthanc_module.py``.  That script
walks the module and writes a JSON report; this script then stops Orthanc and
renders the report as deterministic Markdown.

Usage (from the repository root)::

    python3 tools/orthanc_module_api.py [--orthanc /usr/sbin/Orthanc]
        [--plugin /usr/share/orthanc/plugins/libOrthancPython.so] [--stack bookworm]
        [--output docs/orthanc-module-api.md] [--timeout 60]

Standard library only; runs with any Python 3.9+.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, NoReturn

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
INTROSPECTION_SCRIPT = TOOLS_DIR / "introspect_orthanc_module.py"
OUTPUT_ENV = "ORTHANC_MODULE_API_OUTPUT"  # must match introspect_orthanc_module.py

DEFAULT_ORTHANC = "/usr/sbin/Orthanc"
DEFAULT_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "orthanc-module-api.md"
DEFAULT_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40

# Names whose presence or absence is worth stating explicitly (functions, or
# ``Class.Method``); the table in the document is computed from the real module.
PROBED_NAMES = (
    "GetOrthancVersion",
    "RestApiGet",
    "RestApiGet2",
    "RestApiGetAfterPlugins",
    "RegisterRestCallback",
    "RegisterOnChangeCallback",
    "RegisterIncomingHttpRequestFilter",
    "RegisterStorageArea",
    "SetMetricsValue",
    "GenerateRestApiAuthorizationToken",
    "RestOutput.SetHttpHeader",
    "RestOutput.SendHttpStatus",
)

# Environment variables that would make the embedded interpreter differ from a
# plain /usr/bin/python3 (and so make the output depend on the caller's shell).
SCRUBBED_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE")


class GenerationError(RuntimeError):
    """Raised when Orthanc or the introspection script fails."""


# --------------------------------------------------------------------------
# Running Orthanc
# --------------------------------------------------------------------------

def free_loopback_port() -> int:
    """Return a TCP port that is currently free on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of the Orthanc log, or a placeholder."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def stop_orthanc(proc: subprocess.Popen[bytes]) -> None:
    """Stop Orthanc cleanly (SIGTERM), falling back to SIGKILL; always reap it."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"warning: Orthanc (pid {proc.pid}) ignored SIGTERM for "
              f"{STOP_TIMEOUT:.0f}s, killing it", file=sys.stderr)
        proc.kill()
        proc.wait()
    except BaseException:
        # Interrupted while waiting: never leave the process behind.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0:
        print(f"warning: Orthanc exited with status {proc.returncode} on shutdown",
              file=sys.stderr)


def run_once(orthanc: list[str], plugin: str, workdir: Path, port: int,
             timeout: float) -> dict[str, Any]:
    """Start Orthanc once on ``port``, wait for the report, stop Orthanc."""
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    script = workdir / INTROSPECTION_SCRIPT.name
    shutil.copyfile(INTROSPECTION_SCRIPT, script)  # keeps __pycache__ out of the repo
    report_path = workdir / "report.json"
    report_path.unlink(missing_ok=True)
    config = {
        "Name": "orthanc-module-api",
        "Plugins": [plugin],
        "PythonScript": str(script),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "DicomServerEnabled": False,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "SaveJobs": False,
    }
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log_path = workdir / "orthanc.log"

    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update({OUTPUT_ENV: str(report_path), "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONNOUSERSITE": "1"})

    with open(log_path, "wb") as log:
        # New session: a terminal Ctrl-C reaches only us; we then stop Orthanc.
        try:
            proc = subprocess.Popen([*orthanc, str(config_path)], cwd=workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise GenerationError(f"cannot start {orthanc}: {exc}") from exc
        try:
            deadline = time.monotonic() + timeout
            while not report_path.exists():
                if proc.poll() is not None:
                    raise GenerationError(
                        f"Orthanc exited early with status {proc.returncode}; "
                        f"log tail:\n{log_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise GenerationError(
                        f"no introspection report after {timeout:.0f}s; "
                        f"log tail:\n{log_tail(log_path)}")
                time.sleep(0.1)
        finally:
            stop_orthanc(proc)

    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    if report.get("errors"):
        raise GenerationError("introspection script failed:\n"
                              + "\n".join(report["errors"]))
    for key in ("module", "python", "rest"):
        if key not in report:
            raise GenerationError(f"introspection report lacks {key!r}")
    return report


def introspect(orthanc: str, plugin: str, timeout: float,
               stack: str | None = None) -> dict[str, Any]:
    """Run Orthanc with the introspection script, retrying on a port clash.

    With ``stack``, Orthanc and the plugin are those of that root of
    scripts/stack.sh (paths inside it)."""
    command = [orthanc]
    if stack:
        command = [str(REPO_ROOT / "scripts" / "stack.sh"), "run", stack, "--", orthanc]
    else:
        for path, what in ((orthanc, "Orthanc executable"), (plugin, "Python plugin")):
            if not Path(path).is_file():
                raise GenerationError(f"{what} not found: {path}")
    with tempfile.TemporaryDirectory(prefix="orthanc-module-api-") as tmp:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            workdir = Path(tmp) / f"attempt-{attempt}"
            workdir.mkdir()
            try:
                return run_once(command, plugin, workdir, free_loopback_port(), timeout)
            except GenerationError as exc:
                port_clash = "already in use" in str(exc) or "HTTP_PORT_IN_USE" in str(exc)
                if not port_clash or attempt == PORT_ATTEMPTS:
                    raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_C_IDENTIFIER = re.compile(r"\bOrthancPlugin\w*(?:\(\))?")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def md_text(text: str) -> str:
    """Render a docstring for a table cell: escaped, C identifiers as code."""
    if not text:
        return "*(no docstring)*"
    out_lines = []
    for line in text.strip().splitlines():
        parts, pos = [], 0
        for match in _C_IDENTIFIER.finditer(line):
            parts.append(_MD_SPECIAL.sub(r"\\\1", line[pos:match.start()]))
            parts.append(f"`{match.group(0)}`")
            pos = match.end()
        parts.append(_MD_SPECIAL.sub(r"\\\1", line[pos:]))
        out_lines.append("".join(parts).strip())
    return "<br>".join(out_lines)


def md_callable(name: str, info: dict[str, Any]) -> str:
    """Render a callable's name, with its text signature when available."""
    sig = info.get("text_signature")
    return f"`{name}{sig}`" if sig else f"`{name}`"


def md_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    """Return the lines of a Markdown table."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def regenerate_command(orthanc: str, plugin: str, output: Path,
                       stack: str | None = None) -> str:
    """Return the canonical command (run from the repo root) that regenerates the doc."""
    argv = ["python3", "tools/orthanc_module_api.py"]
    if stack:
        argv += ["--stack", stack]
    if orthanc != DEFAULT_ORTHANC:
        argv += ["--orthanc", orthanc]
    if plugin != DEFAULT_PLUGIN:
        argv += ["--plugin", plugin]
    if output != DEFAULT_OUTPUT:
        try:
            shown = str(output.relative_to(REPO_ROOT))
        except ValueError:
            shown = str(output)
        argv += ["--output", shown]
    return shlex.join(argv)


def render(report: dict[str, Any], orthanc: str, plugin: str, output: Path,
           stack: str | None = None) -> str:
    """Render the introspection report as Markdown."""
    module = report["module"]
    python = report["python"]
    rest = report["rest"]
    system = rest.get("/system", {})
    plugin_info = rest.get("/plugins/python", {})
    functions: dict[str, Any] = module["functions"]
    classes: dict[str, Any] = module["classes"]
    enums: dict[str, Any] = module["enumerations"]

    def known(name: str) -> bool:
        cls, _, method = name.rpartition(".")
        if cls:
            return method in classes.get(cls, {}).get("methods", {})
        return name in functions

    callables = list(functions.values()) + [
        m for c in classes.values() for m in c["methods"].values()]
    with_sig = sum(1 for c in callables if c.get("text_signature"))
    method_count = sum(len(c["methods"]) for c in classes.values())

    out: list[str] = [
        "# `orthanc` Python module API",
        "",
        "<!-- Generated by tools/orthanc_module_api.py; do not edit by hand. -->",
        "",
        "Reference of what the Orthanc Python plugin's built-in `orthanc` module "
        "actually exposes, obtained by introspecting the live module inside a "
        "temporary Orthanc.",
        "",
        *md_table(["Component", "Version"], [
            ["Orthanc", f"{system.get('Version', '?')} (REST `ApiVersion` "
                        f"{system.get('ApiVersion', '?')}, `DatabaseVersion` "
                        f"{system.get('DatabaseVersion', '?')}) — `{orthanc}`"],
            ["Python plugin", f"{plugin_info.get('Version', '?')} — `{plugin}`"],
            ["Embedded Python", f"{python['version']} (prefix `{python['prefix']}`, "
                                f"`{python.get('library') or '?'}`)"],
        ]),
        "",
        "Regenerate from the repository root with:",
        "",
        "```sh",
        regenerate_command(orthanc, plugin, output, stack),
        "```",
        "",
        "Orthanc's version comes from `orthanc.RestApiGet('/system')` and the "
        "plugin's from `orthanc.RestApiGet('/plugins/python')`, both called from an "
        "`ORTHANC_STARTED` change callback (the REST API is unavailable while the "
        "script loads).",
        "",
        "## Overview",
        "",
        f"- {len(functions)} functions, {len(classes)} classes "
        f"({method_count} methods), {len(enums)} enumerations.",
    ]
    version_attrs = module.get("version_attributes", {})
    if version_attrs:
        out.append("- Module-level version attributes: " + ", ".join(
            f"`{k}` = `{v}`" for k, v in sorted(version_attrs.items())) + ".")
    else:
        out.append("- The module has no version attribute (`__version__`, `VERSION`, "
                   "...); the plugin version is only available through "
                   "`GET /plugins/python`.")
    if with_sig == 0:
        out.append("- No function or method has a `__text_signature__`: argument "
                   "names and types are not introspectable. See the C SDK "
                   "(`OrthancCPlugin.h`) entry named in the docstring, or the Python "
                   "plugin's documentation for functions without a docstring.")
    else:
        out.append(f"- {with_sig} of {len(callables)} functions/methods have a "
                   "`__text_signature__`.")
    undocumented = sorted(n for n, f in functions.items() if not f["doc"])
    if undocumented:
        out.append("- Wrappers generated from the C SDK say so in their docstring "
                   "(\"Generated from C function ...\"); these functions have no "
                   "docstring at all: " + ", ".join(f"`{n}`" for n in undocumented)
                   + ".")
    out.append("- Enumerations are plain classes whose members are `int` class "
               "attributes, not `enum.Enum` subclasses.")
    if any("OrthancPluginOrthancPlugin" in e["doc"] for e in enums.values()):
        out.append("- Enumeration docstrings are verbatim from the plugin, including "
                   "its doubled `OrthancPluginOrthancPlugin` prefix (the C "
                   "enumerations are named `OrthancPlugin...`).")
    other = module.get("other_attributes", {})
    if other:
        out.append("- Other module attributes: " + ", ".join(
            f"`{k}` ({v['type']})" for k, v in sorted(other.items())) + ".")
    out += [
        "",
        "Availability of selected names:",
        "",
        *md_table(["Name", "Available"],
                  [[f"`{n}`", "yes" if known(n) else "**no**"]
                   for n in sorted(PROBED_NAMES)]),
        "",
        "## Functions",
        "",
        *md_table(["Function", "Docstring"],
                  [[md_callable(name, info), md_text(info["doc"])]
                   for name, info in sorted(functions.items())]),
        "",
        "## Classes",
        "",
    ]
    for name, info in sorted(classes.items()):
        out += [f"### `{name}`", "", md_text(info["doc"]), ""]
        bases = [b for b in info["bases"] if b != "object"]
        if bases:
            out += ["Bases: " + ", ".join(f"`{b}`" for b in bases) + ".", ""]
        if info["methods"]:
            out += [*md_table(["Method", "Docstring"],
                              [[md_callable(m, mi), md_text(mi["doc"])]
                               for m, mi in sorted(info["methods"].items())]), ""]
        else:
            out += ["No methods of its own.", ""]
        if info["attributes"]:
            out += [*md_table(["Attribute", "Type", "Value"],
                              [[f"`{a}`", ai["type"], md_text(ai["repr"])]
                               for a, ai in sorted(info["attributes"].items())]), ""]
    out += ["## Enumerations", "",
            "Members are listed by value (then name).", ""]
    for name, info in sorted(enums.items()):
        members = sorted(info["members"].items(), key=lambda kv: (kv[1], kv[0]))
        out += [f"### `{name}`", "", md_text(info["doc"]), "",
                *md_table(["Name", "Value"],
                          [[f"`{m}`", str(v)] for m, v in members]), ""]
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _raise_on_sigterm(signum: int, _frame: Any) -> NoReturn:
    """Turn SIGTERM into SystemExit so cleanup code runs."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orthanc", default=DEFAULT_ORTHANC,
                        help=f"Orthanc executable (default: {DEFAULT_ORTHANC})")
    parser.add_argument("--plugin", default=DEFAULT_PLUGIN,
                        help=f"Python plugin library (default: {DEFAULT_PLUGIN})")
    parser.add_argument("--stack", choices=("bookworm", "sid"),
                        help="run the Orthanc of this root of scripts/stack.sh")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="Markdown file to write "
                             "(default: docs/orthanc-module-api.md in the repo)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the report (default: %(default)s)")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    orthanc = os.path.abspath(args.orthanc)
    plugin = os.path.abspath(args.plugin)
    output = Path(os.path.abspath(args.output))
    try:
        report = introspect(orthanc, plugin, args.timeout, args.stack)
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; Orthanc was stopped", file=sys.stderr)
        return 130
    text = render(report, orthanc, plugin, output, args.stack)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output} ({len(text.encode('utf-8'))} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
