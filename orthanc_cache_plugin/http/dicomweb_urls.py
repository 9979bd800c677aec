"""The absolute URLs of the DICOMweb plugin's answers, as that plugin makes them (pure).

The DICOMweb plugin writes absolute URLs into its answers (``BulkDataURI`` in
WADO-RS metadata, ``RetrieveURL`` in QIDO): a base made from the request's
headers and its own settings, then the path.  An answer the cache plugin
obtains through an internal call (``RestApiGetAfterPlugins``) carries no
header, so its base is the plugin's fallback, ``http://localhost:8042`` and
the public root, whatever the port (measured on 1.7, 1.20 and 1.24; see
docs/dicomweb.md).  To hand a client the answer that the DICOMweb plugin
would have given it, the cache plugin computes that client's base as the
DICOMweb plugin does, here, and puts it in place of the internal one.

The rules are those of ``GetBasePublicUrl`` (``GetBaseUrl`` before 1.8) in
the DICOMweb plugin's ``Plugin/Configuration.cpp``:

1. the ``Host`` setting, when set, and ``Ssl`` (every header ignored then);
2. from 1.14, ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` when *both*
   are present (the proto only switches between http and https);
3. the first element of ``Forwarded``: its ``host=`` and ``proto=``
   (values stripped of spaces, never unquoted);
4. the request's ``Host``, or ``localhost:8042`` without one;

then the public root: ``PublicRoot`` (from 1.8; defaults to ``Root``), or
``Root`` before 1.8, with a leading and a trailing ``/``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Tuple

#: The host the DICOMweb plugin names when a request has no Host header (an internal call).
FALLBACK_HOST = "localhost:8042"

#: The first versions with ``PublicRoot``, and with the ``X-Forwarded-*`` pair.
PUBLIC_ROOT_SINCE = (1, 8)
X_FORWARDED_SINCE = (1, 14)

#: Characters a base may hold to be put into an answer as is: the DICOMweb plugin
#: 1.15+ writes the base into its cached metadata without JSON escaping, its QIDO
#: answers escape it; a base outside this set could be written either way.
_PLAIN_BASE = re.compile(r"https?://[A-Za-z0-9._~:@!$&'()*+,;=%\[\]/-]*")


@dataclass(frozen=True)
class DicomWebSite:
    """What of the DICOMweb plugin's configuration and version shapes its URLs
    (its ``DicomWeb`` section: ``Root``, ``PublicRoot``, ``Host``, ``Ssl``)."""

    version: Tuple[int, ...]
    root: str = "/dicom-web/"
    public_root: Optional[str] = None
    host: str = ""
    ssl: bool = False

    @property
    def served_root(self) -> str:
        """Where the DICOMweb plugin registers its routes (``Root``, normalized)."""
        return _root_path(self.root)

    @property
    def named_root(self) -> str:
        """The path its URLs name: ``PublicRoot`` (default ``Root``) from 1.8, ``Root`` before."""
        if self.version < PUBLIC_ROOT_SINCE or self.public_root is None:
            return self.served_root
        return _root_path(self.public_root)

    def internal_base(self) -> str:
        """The base of an answer to an internal call (no header at all)."""
        return base_url(self, {})


def _root_path(root: str) -> str:
    """A root with a leading and a trailing slash, as the DICOMweb plugin makes it."""
    if not root.startswith("/"):
        root = "/" + root
    return root if root.endswith("/") else root + "/"


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    """A header's value, its name compared without case (as the DICOMweb plugin does)."""
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _strip(text: str) -> str:
    """Orthanc's ``Toolbox::StripSpaces``: C's ``isspace`` characters at both ends."""
    return text.strip(" \t\n\v\f\r")


def _https(proto: str, default: bool) -> bool:
    return True if proto == "https" else False if proto == "http" else default


def base_url(site: DicomWebSite, headers: Mapping[str, str]) -> str:
    """The base the DICOMweb plugin of ``site`` puts in front of the paths of its
    answer to a request with ``headers`` (ends with the named root's slash)."""
    host, https = site.host, site.ssl
    if not host and site.version >= X_FORWARDED_SINCE:
        forwarded_host = _header(headers, "x-forwarded-host")
        forwarded_proto = _header(headers, "x-forwarded-proto")
        if forwarded_host is not None and forwarded_proto is not None:
            host = _strip(forwarded_host)
            https = _https(_strip(forwarded_proto), https)
    forwarded = _header(headers, "forwarded") if not host else None
    if forwarded is not None:
        for pair in forwarded.split(",")[0].split(";"):
            parts = pair.split("=")
            if len(parts) == 2:
                key, value = _strip(parts[0]).lower(), _strip(parts[1])
                if key == "host":
                    host = value
                elif key == "proto":
                    https = _https(value, https)
    if not host:
        given = _header(headers, "host")
        host = given if given is not None else FALLBACK_HOST
    return ("https://" if https else "http://") + host + site.named_root


def client_base(site: DicomWebSite, headers: Mapping[str, str]) -> Optional[str]:
    """:func:`base_url` when it can be written into a stored answer as is; None when
    it holds characters that JSON escapes (a quote in a forged ``Host``): the DICOMweb
    plugin writes such a base escaped in some answers and raw in others."""
    base = base_url(site, headers)
    return base if _PLAIN_BASE.fullmatch(base) else None


#: The DICOM JSON attribute of QIDO's Retrieve URL (0008,1190); metadata's bulk data
#: are named by ``BulkDataURI`` values.
RETRIEVE_URL = "00081190"
#: How the DICOMweb plugin writes the start of a BulkDataURI value (jsoncpp's styled
#: writer, on every version measured).
_BULK_DATA_URI = b'"BulkDataURI" : "'


def _urls(node: Any) -> Iterator[str]:
    """Every ``BulkDataURI`` value and Retrieve URL in a DICOM JSON document."""
    if isinstance(node, list):
        for item in node:
            yield from _urls(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "BulkDataURI" and isinstance(value, str):
                yield value
            elif key == RETRIEVE_URL and isinstance(value, dict):
                yield from (url for url in value.get("Value") or () if isinstance(url, str))
            else:
                yield from _urls(value)


def rebase(body: bytes, internal: str, client: str) -> Optional[bytes]:
    """``body``, a DICOMweb JSON answer to an internal call, as the DICOMweb plugin
    would have written it for a request whose base is ``client``; None when that
    cannot be told apart: the internal base also appears outside the URLs the
    plugin wrote (a tag value that happens to hold it), or the body is not JSON.

    Both bases are plain (:func:`client_base`): they read the same escaped or not.
    """
    needle = internal.encode("ascii")
    found = body.count(needle)
    if found and found == body.count(_BULK_DATA_URI + needle):
        # Every occurrence starts a BulkDataURI value as the plugin writes them (metadata,
        # the large answers): no need to read the whole document.
        return body.replace(needle, client.encode("ascii"))
    try:
        document = json.loads(body)
    except ValueError:
        return None
    written = sum(1 for url in _urls(document) if url.startswith(internal))
    if found != written:
        return None
    return body.replace(needle, client.encode("ascii"))
