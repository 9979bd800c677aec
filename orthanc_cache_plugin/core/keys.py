"""Cache keys and entity-tags.

A key names one representation of one route: the normalized URI, the
normalized query string and the representation picked from the request
headers (``image/jpeg`` for a preview asked with ``Accept: image/jpeg``).
It deliberately leaves the resource version out: an entry is *replaced* when
the resource changes, so outdated versions never pile up, and a lookup is a
single indexed read whatever the number of entries.

The entity-tag is derived from the key and the version, so a 304 can be
decided before any body is read or computed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Mapping
from urllib.parse import quote


def normalized_query(arguments: Mapping[str, str]) -> str:
    """The GET arguments as a canonical query string (sorted by name).

    Orthanc hands the arguments over still percent-encoded and keeps the last
    value of a repeated name, exactly as its own routes read them, so the
    result is also what is forwarded to Orthanc.  Characters that would
    break the query's structure are escaped.
    """
    if not arguments:
        return ""
    return "&".join(
        "%s=%s" % (quote(name, safe="%:/@!$'()*+,;?"), quote(value, safe="%:/@!$'()*+,;?="))
        for name, value in sorted(arguments.items()))


def with_query(uri: str, arguments: Mapping[str, str]) -> str:
    """``uri`` and its normalized query string, as Orthanc's internal calls take them."""
    query = normalized_query(arguments)
    return uri + "?" + query if query else uri


def literal_query(arguments: Mapping[str, str]) -> str:
    """The GET arguments, already decoded, as a query string that ``RestApiGet`` reads as is.

    Orthanc 1.13.0 hands a plugin its GET arguments percent-decoded, and its
    ``RestApiGet`` does not decode the query it is given: values go as they
    are.  Only what would break the query's structure is escaped (Orthanc then
    reads the escape literally: such a value cannot be forwarded faithfully).
    """
    def literal(text: str, unsafe: str) -> str:
        for char in unsafe:
            text = text.replace(char, "%%%02X" % ord(char))
        return text

    return "&".join("%s=%s" % (literal(name, "&#="), literal(value, "&#"))
                    for name, value in sorted(arguments.items()))


def cache_key(uri: str, query: str, representation: str, variant: str = "") -> str:
    """Key of one representation of a route (version not included); ``variant`` is what
    else the answer depends on (a DICOMweb answer: the DICOMweb plugin's version and the
    base of its URLs, see data.Request)."""
    key = "%s?%s#%s" % (uri, query, representation)
    return key + "#" + variant if variant else key


@lru_cache(maxsize=4096)  # on every request: hashing costs more than the lookup
def entity_tag(salt: str, key: str, version: str) -> str:
    """A weak entity-tag for ``key`` at ``version``, e.g. ``W/"3f2a..."``.

    Weak because Orthanc gzips answers for clients that accept it, so the
    bytes differ between codings while the content is the same (nginx weakens
    its ETags for the same reason).

    ``salt`` holds what else shapes every answer (Orthanc's version, the
    plugin's storage format), so an upgrade never revalidates old copies.
    """
    digest = hashlib.blake2b("\0".join((salt, key, version)).encode("utf-8"),
                             digest_size=16).hexdigest()
    return 'W/"%s"' % digest


def claim_name(key: str, stamp: str) -> str:
    """The name under which one node of a cluster claims the computation of ``key`` at
    ``stamp`` (the version an entry must carry): a digest, short whatever the URI."""
    return hashlib.blake2b(("%s\0%s" % (key, stamp)).encode("utf-8"),
                           digest_size=16).hexdigest()
