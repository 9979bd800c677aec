"""Introspect the ``orthanc`` module from inside a running Orthanc.

This file is meant to be loaded by the Orthanc Python plugin through the
``PythonScript`` configuration option; it cannot run on its own because the
``orthanc`` module only exists inside Orthanc.  ``tools/orthanc_module_api.py``
copies it to a temporary directory, starts Orthanc with it and reads the result.

The static walk of the module happens at load time.  The REST API cannot be
used while plugins initialise (Orthanc raises error 2038, "Plugin trying to
call the database during its initialization"), so the version information
from ``/system`` and ``/plugins/python`` is collected from an
``ORTHANC_STARTED`` change callback, which then writes the JSON report
atomically to the path named by the ``ORTHANC_MODULE_API_OUTPUT`` environment
variable.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import orthanc  # type: ignore[import-not-found]  # only exists inside Orthanc

OUTPUT_ENV = "ORTHANC_MODULE_API_OUTPUT"
SCHEMA_VERSION = 1
# Module attributes that may carry version information, if a plugin exposes any.
VERSION_ATTRIBUTES = ("__version__", "VERSION", "version", "PLUGIN_VERSION")
# REST resources queried once Orthanc has started.
REST_RESOURCES = ("/system", "/plugins", "/plugins/python")


def _doc(obj: Any) -> str:
    """Return the object's own docstring (empty if none)."""
    doc = getattr(obj, "__doc__", None)
    return doc.strip() if isinstance(doc, str) else ""


def _signature(obj: Any) -> str | None:
    """Return ``__text_signature__`` if the C wrapper provides one."""
    sig = getattr(obj, "__text_signature__", None)
    return sig if isinstance(sig, str) else None


def _is_enumeration(cls: type) -> bool:
    """True if every public attribute defined on ``cls`` is an int."""
    public = {k: v for k, v in vars(cls).items() if not k.startswith("_")}
    return bool(public) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in public.values()
    )


def _describe_class(cls: type) -> dict[str, Any]:
    """Describe a (non-enumeration) class: bases, methods and other attributes."""
    methods: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for name, value in sorted(vars(cls).items()):
        if name.startswith("_"):
            continue
        if callable(value):
            methods[name] = {
                "kind": type(value).__name__,
                "doc": _doc(value),
                "text_signature": _signature(value),
            }
        else:
            attributes[name] = {"type": type(value).__name__, "repr": repr(value)}
    return {
        "doc": _doc(cls),
        "bases": [f"{b.__module__}.{b.__qualname__}" if b.__module__ != "builtins"
                  else b.__qualname__ for b in cls.__bases__],
        "is_exception": issubclass(cls, BaseException),
        "methods": methods,
        "attributes": attributes,
    }


def walk_module() -> dict[str, Any]:
    """Walk the ``orthanc`` module and return a JSON-serialisable description."""
    functions: dict[str, Any] = {}
    classes: dict[str, Any] = {}
    enumerations: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for name in sorted(dir(orthanc)):
        if name.startswith("_"):
            continue
        value = getattr(orthanc, name)
        if isinstance(value, type):
            if _is_enumeration(value):
                enumerations[name] = {
                    "doc": _doc(value),
                    "members": {k: v for k, v in sorted(vars(value).items())
                                if not k.startswith("_")},
                }
            else:
                classes[name] = _describe_class(value)
        elif callable(value):
            functions[name] = {
                "kind": type(value).__name__,
                "doc": _doc(value),
                "text_signature": _signature(value),
            }
        else:
            other[name] = {"type": type(value).__name__, "repr": repr(value)}
    version_attributes = {
        attr: repr(getattr(orthanc, attr))
        for attr in VERSION_ATTRIBUTES if hasattr(orthanc, attr)
    }
    return {
        "module_doc": _doc(orthanc),
        "functions": functions,
        "classes": classes,
        "enumerations": enumerations,
        "other_attributes": other,
        "version_attributes": version_attributes,
    }


def python_info() -> dict[str, Any]:
    """Describe the Python interpreter embedded by the plugin."""
    import sysconfig

    return {
        "version": "%d.%d.%d" % sys.version_info[:3],
        "full_version": sys.version,
        "prefix": sys.prefix,
        "library": sysconfig.get_config_var("INSTSONAME"),
    }


def rest_info() -> dict[str, Any]:
    """Query version-related REST resources through the in-process API."""
    result: dict[str, Any] = {}
    for uri in REST_RESOURCES:
        try:
            result[uri] = json.loads(orthanc.RestApiGet(uri))
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            result[uri] = {"error": repr(exc)}
    return result


def write_report(report: dict[str, Any]) -> None:
    """Write ``report`` as JSON to the output path, atomically."""
    path = os.environ[OUTPUT_ENV]
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


_REPORT: dict[str, Any] = {"schema": SCHEMA_VERSION, "errors": []}
try:
    _REPORT["module"] = walk_module()
    _REPORT["python"] = python_info()
except Exception:  # noqa: BLE001 - reported to the outer script
    _REPORT["errors"].append(traceback.format_exc())


def _on_change(change_type: int, level: int, resource: str) -> None:
    """On ORTHANC_STARTED, add REST information and write the report."""
    if change_type != orthanc.ChangeType.ORTHANC_STARTED:
        return
    try:
        _REPORT["rest"] = rest_info()
    except Exception:  # noqa: BLE001 - reported to the outer script
        _REPORT["errors"].append(traceback.format_exc())
    write_report(_REPORT)


orthanc.RegisterOnChangeCallback(_on_change)
