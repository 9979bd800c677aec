"""The composition root: builds the cache from its parts and connects it to Orthanc.

:class:`CachePlugin` composes the store, the watchers of changes, the origin
(Orthanc's REST API, which also forwards other methods) and the controller,
and dispatches Orthanc's callbacks to them: one REST callback per route of
:data:`..core.routes.ROUTES` and of the admin API (:mod:`..cache.admin`),
whose arguments become a :class:`..core.data.Request` and whose
:class:`..core.data.Reply` is sent back; change events go to the watchers
and to warm-up.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import threading
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import orthanc

from .. import __version__
from ..cache.admin import AdminApi
from ..cache.changes import ChangeWatch, Watchers
from ..cache.controller import CacheController
from ..cache.warmup import WarmUp, warm_requests
from ..core.data import Fetched, Figures, Identity, Outcome, Reply, Request, Version
from ..core.routes import DICOMWEB_ROUTES, ROUTES, Level, Route, dicomweb_root, index_arguments
from ..core.settings import Backend, Settings, SettingsError, load_settings
from ..core.statistics import Statistics
from ..freshness.versions import resource_version
from ..http.negotiation import JPEG, PAM, jpeg_quality, pam_image
from ..http.plain_answers import JSON_TYPE, UNKNOWN_RESOURCE, PlainOrthanc, deletion_body
from ..http.sharing import Access, Sharing, access_of, describe as describe_sharing, sharing
from ..store.facade import COMPUTED_BY, Store, computed_by
from ..store.redis_backend import RedisOptions
from .api import (
    delete as _delete,
    error as _error,
    get as _get,
    get_json as _get_json,
    hide as _hide,
    info as _info,
    post as _post,
    warn as _warn,
)
from .changes import (
    HIDDEN_CHANGE_EVENTS,
    LEVELS,
    OrthancIndex,
    keep_alive,
    notice_filters,
    stop_watching_changes,
    watch_changes,
    watch_stored_instances,
    watch_writes,
)
from .clean_exit import avoid_plugin_teardown
from .dicomweb import DicomWebOrigin, Origins
from .registration import REGISTRATION
from .thread_states import keep_thread_state


def _reencode(png: bytes, representation: str, arguments: Mapping[str, str],
              api_version: int) -> Optional[bytes]:
    """Orthanc's JPEG or PAM answer, rebuilt from its PNG answer (byte-identical)."""
    image = orthanc.UncompressImage(png, orthanc.ImageFormat.PNG)
    pixel_format = image.GetImagePixelFormat()
    width, height = image.GetImageWidth(), image.GetImageHeight()
    buffer = image.GetImageBuffer()
    if representation == JPEG:
        quality = jpeg_quality(arguments, api_version)
        if quality is None:
            return None
        jpeg: bytes = orthanc.CompressJpegImage(pixel_format, width, height,
                                                image.GetImagePitch(), buffer, quality)
        return jpeg
    channels, sample_bytes = {
        orthanc.PixelFormat.GRAYSCALE8: (1, 1),
        orthanc.PixelFormat.GRAYSCALE16: (1, 2),
        orthanc.PixelFormat.SIGNED_GRAYSCALE16: (1, 2),
        orthanc.PixelFormat.RGB24: (3, 1),
    }[pixel_format]
    return pam_image(channels, width, height, sample_bytes, buffer)


class OrthancOrigin:
    """Orthanc's own REST API, seen through ``orthanc.RestApiGet``."""

    def __init__(self, describe_errors: bool, changes: ChangeWatch):
        self.plain = PlainOrthanc(_get, describe_errors)
        self.changes = changes

    def version(self, request: Request, now: datetime) -> Optional[Version]:
        level, resource_id = request.route.level.value, request.resource_id
        updates = self.changes.updates
        last_update = updates.get(level, resource_id) if updates is not None else None
        if last_update is None:
            epoch = updates.epoch if updates is not None else 0
            found = _get("/%s/%s/metadata/%s" % (level, resource_id,
                                                 request.route.level.version_metadata))
            if not isinstance(found, bytes):
                return None
            last_update = found.decode("ascii", "replace")
            if updates is not None:
                updates.remember(level, resource_id, last_update, epoch)
        generations = self.changes.generations
        version = resource_version(last_update, generations.of(resource_id), now)
        held = generations.held(now)
        return version if held is None else replace(version, settled=False, held=held)

    def fetch(self, request: Request, query: str, representation: str) -> Optional[Fetched]:
        # ``query`` is the key's normalized form; Orthanc is given the arguments in the
        # form the running version reads.
        body = _get(self.plain.uri_with(request.uri, request.arguments))
        if not isinstance(body, bytes):
            return None
        if representation in (JPEG, PAM):
            if representation == JPEG and request.groups[-1] in ("image-uint16", "image-int16"):
                return None  # Orthanc has no JPEG of 16-bit images
            reencoded = _reencode(body, representation, request.arguments,
                                  self.plain.api_version)
            if reencoded is None:
                return None
            body = reencoded
        return Fetched(self.plain.content_type(request, representation), body,
                       self.plain.extra_headers(request, representation))

    def plain_answer(self, request: Request, reason: str) -> Reply:
        return self.plain.answer(request, reason)

    def index_digest(self, request: Request) -> Optional[str]:
        arguments = index_arguments(request.route, request.arguments)
        body = _get(self.plain.uri_with(request.uri, arguments or {}))
        if not isinstance(body, bytes):
            return None
        return hashlib.blake2b(body, digest_size=16).hexdigest()

    def forward(self, request: Request, method: str, body: bytes) -> Reply:
        """Hand a POST, PUT or DELETE to Orthanc's own route, as if the plugin were absent."""
        if method not in request.route.other_methods:
            allowed = ",".join(("GET",) + request.route.other_methods)
            return Reply(405, Outcome.PASS, method + " not allowed", headers={"Allow": allowed})
        if method == "DELETE":  # a study's (the only route that takes it)
            return self._delete_study(request)
        result = _post(request.uri, body)
        if not isinstance(result, bytes):
            return self.plain.error(request, result, method)
        if result[:4] == b"PK\x03\x04":  # a synchronous archive
            return Reply(200, Outcome.PASS, "forwarded " + method, "application/zip", result,
                         self.plain.extra_headers(request, ""))
        return Reply(200, Outcome.PASS, "forwarded " + method, JSON_TYPE, result)

    def _delete_study(self, request: Request) -> Reply:
        """Delete a study as Orthanc would, and answer as it does: the parent patient
        when it remains (``RestApiDelete`` tells nothing), 404 without body when unknown."""
        study = _get("/studies/%s" % request.resource_id)
        if not isinstance(study, bytes):
            return Reply(404, Outcome.PASS, "unknown study")
        patient = str(json.loads(study)["ParentPatient"])
        result = _delete(request.uri)
        if result == UNKNOWN_RESOURCE:  # deleted meanwhile
            return Reply(404, Outcome.PASS, "unknown study")
        if not isinstance(result, bytes):
            return self.plain.error(request, result, "DELETE")
        remains = isinstance(_get("/patients/%s" % patient), bytes)
        return Reply(200, Outcome.PASS, "forwarded DELETE", JSON_TYPE,
                     deletion_body("patients", patient if remains else None))


def _send_status_with_body(output: Any, status: int, body: bytes) -> None:
    """An error answer with a body, with the signature of the running plugin (learnt
    from the first call, see Registration.status_takes_text)."""
    if REGISTRATION.status_takes_text is None:
        try:
            output.SendHttpStatus(status, body)
            REGISTRATION.status_takes_text = False
            return
        except TypeError:  # raised while parsing the arguments: nothing was sent
            REGISTRATION.status_takes_text = True
    if REGISTRATION.status_takes_text:
        output.SendHttpStatus(status, body.decode("utf-8"), len(body))
    else:
        output.SendHttpStatus(status, body)


def send(output: Any, reply: Reply) -> None:
    """Write ``reply`` with Orthanc's RestOutput (headers first, as it requires)."""
    for name, value in reply.headers.items():
        if name not in ("Location", "Allow"):
            output.SetHttpHeader(name, value)
    if reply.status == 200:
        output.AnswerBuffer(reply.body, reply.content_type)
    elif reply.status == 301:
        output.Redirect(reply.headers["Location"])
    elif reply.status == 405:
        output.SendMethodNotAllowed(reply.headers["Allow"])
    elif reply.body:
        _send_status_with_body(output, reply.status, reply.body)
    else:
        output.SendHttpStatusCode(reply.status)


class CachePlugin:
    """Everything registered with Orthanc, built once by :func:`enable`."""

    def __init__(self, settings: Settings, configuration: Mapping[str, Any]):
        self.settings = settings
        self.store = Store(settings.directory, settings.maximum_size_bytes, settings.expiration,
                           warn=_warn, memory=settings.memory_size_bytes,
                           redis=_redis_options(settings))
        index = OrthancIndex()
        self.watchers = Watchers(self.store, index, self.on_tick, _info, _warn,
                                 admin_prefix=settings.admin_prefix,
                                 housekeeper=_housekeeper_enabled(configuration))
        self.changes = self.watchers.watch
        self.origin = OrthancOrigin(configuration.get("HttpDescribeErrors", True), self.changes)
        self.dicomweb = DicomWebOrigin(configuration, dicomweb_root(settings.admin_prefix),
                                       self.origin.version, self.origin.plain.uri_with)
        #: Orthanc for its routes, the DICOMweb plugin for the DICOMweb routes.
        self.origins = Origins(self.origin, self.dicomweb)
        #: How Orthanc decides access (sharing.Access), completed as filters are registered.
        self.access = replace(access_of(configuration), lua_filter=_lua_filter(configuration))
        self.dicomweb.access_by_path = self.access.by_path()
        # Orthanc compresses answers by default up to 1.12.1.
        self.compression = bool(configuration.get("HttpCompressionEnabled",
                                                  not orthanc.CheckVersionAdvanced(1, 12, 2)))
        self.controller = CacheController(settings, self.store, self.origins,
                                          sharing=self._sharing())
        self.controller.gzip_offered, self.gzip_note = _gzip_mode(self.compression)
        self.statistics = Statistics()
        self._identity_lock = threading.Lock()
        self.warm_up = WarmUp(self.controller, settings.warm_up_queue_size, _info, _warn) \
            if settings.warm_up else None
        self.admin = AdminApi(settings.admin_prefix, self.store, self.statistics,
                              figures=self.figures, configuration=settings.as_configuration,
                              exists=_exists, descendants=self.changes.lineage.descendants,
                              warm=self._warm, warn=_warn)

    def _sharing(self) -> Sharing:
        # Answers differ by Accept-Encoding whether Orthanc (HttpCompressionEnabled) or
        # the plugin (otherwise: JSON, gzip-compressed as stored) compresses them.
        return sharing(self.settings.cache_control, self.access, True)

    def learn_access(self, access: Access) -> None:
        """What is now known of access, and the headers it implies from now on."""
        self.access = access
        self.controller.sharing = self._sharing()
        self.dicomweb.access_by_path = access.by_path()

    def filter_registered(self) -> None:
        """The startup script registered a request filter after enable_cache_plugin(), before
        Orthanc serves: it decides access per request, so answers are private from now on."""
        self.learn_access(replace(self.access, script_filter=True))
        self.log_sharing()

    def log_sharing(self) -> None:
        """Say which Cache-Control and Vary cached routes send, and why."""
        _warn(describe_sharing(self.settings.cache_control, self.controller.sharing))

    def _ensure_identity(self) -> None:
        # Orthanc refuses REST calls while plugins load, so what the running Orthanc
        # is (which salts entity-tags) is read once it runs, once.
        if self.controller.identity.salt:
            return
        with self._identity_lock:
            if not self.controller.identity.salt:
                identity = _identity(self.store)
                self.controller.identity = self.origin.plain.identity = identity

    def handler(self, route: Route) -> Callable[..., None]:
        """The REST callback of one route."""

        def on_request(output: Any, uri: str, **call: Any) -> None:
            self._in_callback(self._answer, route, output, uri, call)

        return on_request

    def _in_callback(self, work: Callable[..., None], *arguments: Any) -> None:
        """Run ``work`` for a REST callback: with a thread state kept for the next
        callbacks, and no SQLite connection left open after it (see Store)."""
        keep_thread_state()
        try:
            work(*arguments)
        finally:
            self.store.close_thread_connection()

    def _answer(self, route: Route, output: Any, uri: str, call: Dict[str, Any]) -> None:
        """Serve one request of a cached route, log and count what the cache did."""
        request = Request(route, tuple(call["groups"]), uri, call.get("get") or {},
                          call.get("headers") or {})
        if call["method"] != "GET":
            reply = self.origin.forward(request, call["method"], call.get("body") or b"")
        else:
            try:
                self._ensure_identity()
                if route.dicomweb:
                    self.dicomweb.learn()
                    resolved = self.dicomweb.resolve(request)
                    reply = resolved if isinstance(resolved, Reply) \
                        else self.controller.serve(resolved)
                else:
                    reply = self.controller.serve(request)
            except Exception as error:  # the cache must never turn an answer into a 500
                _warn("%s while serving %s: %s; answered without the cache"
                      % (type(error).__name__, uri, error))
                reply = self.origins.plain_answer(request, "cache error")
                reply.outcome = Outcome.BYPASS
        _info("%s %s %s: %s" % (reply.outcome.value, call["method"], uri, reply.reason))
        self.statistics.count(reply.outcome)
        if self.settings.cache_status_header:
            reply.headers[self.settings.cache_status_header] = reply.outcome.value
        send(output, reply)

    def on_tick(self) -> None:
        """Periodic work of the change-watch thread, off the request path."""
        self.store.record_accesses()
        self.publish_metrics()

    def publish_metrics(self) -> None:
        """Copy the counters to Orthanc's /tools/metrics-prometheus."""
        for name, value in self.statistics.metrics(self.figures()).items():
            orthanc.SetMetricsValue(name, float(value), orthanc.MetricsType.DEFAULT)

    def figures(self) -> Figures:
        warm_up = self.warm_up
        return Figures(self.store.count(), self.store.volume(),
                       warm_up.pending if warm_up is not None else 0,
                       warm_up.done if warm_up is not None else 0)

    def _warm(self, level: Level, resource_id: str) -> int:
        """Store the answers of a resource's warm-up routes; how many were stored."""
        return sum(self.controller.warm(request) for request in warm_requests(level, resource_id))

    def on_admin(self, output: Any, uri: str, **call: Any) -> None:
        """The admin API (admin.py)."""
        self._in_callback(self._administer, output, uri, call)

    def _administer(self, output: Any, uri: str, call: Dict[str, Any]) -> None:
        self._ensure_identity()  # before a warm-up stores anything
        send(output, self.admin.answer(call["method"], uri))

    def shutdown(self) -> None:
        """Stop the plugin's threads and close the store (again: no effect).

        Called on ORTHANC_STOPPED, and when the interpreter finalizes: the
        Python plugin 7.1 may finalize before that event is delivered, and a
        thread still calling into Orthanc then corrupts the heap (seen on
        Orthanc 1.13.0 with Python 3.14).
        """
        stop_watching_changes()
        self.watchers.stop()
        if self.warm_up is not None:
            self.warm_up.stop()
        self.store.close()

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """Queue warm-up of stable resources; stop the worker with Orthanc."""
        keep_thread_state()
        self.changes.forget_updates()  # a new or deleted resource may move a LastUpdate
        if change_type in HIDDEN_CHANGE_EVENTS:
            self.changes.after_change(HIDDEN_CHANGE_EVENTS[change_type], LEVELS.get(level),
                                      resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            self._ensure_identity()
            self.watchers.start()
            _warn(self.dicomweb.learn())
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            self.shutdown()
        elif self.warm_up is not None and change_type in _STABLE_LEVELS:
            self.warm_up.submit(_STABLE_LEVELS[change_type], resource_id)


def _identity(store: Store) -> Identity:
    """What the running Orthanc is; entries that another version computed are removed."""
    system = _get_json("/system")
    salt = computed_by(str(system.get("Version")))
    # Output formats change between Orthanc versions: entries of another version never
    # match (see CacheController._stamp); removing them frees their room at once.  Not
    # from a store that nodes share: a node new to it (or upgraded first) would empty it
    # for the others; their entries expire or are evicted instead.
    if store.get_value(COMPUTED_BY) != salt:
        removed = 0 if store.shared_by_nodes else store.clear()
        store.set_value(COMPUTED_BY, salt)
        if removed:
            _warn("%d stored answers removed: computed by another version (now %s)"
                  % (removed, salt))
    return Identity(salt, int(system.get("ApiVersion", 0)))


def _gzip_mode(compression: bool) -> Tuple[bool, str]:
    """Whether JSON may go out gzip-compressed as stored, and why (logged at start).

    Measured (tests/integration/test_compressed_answers.py and
    test_http_compression.py): with ``HttpCompressionEnabled`` on, Orthanc
    1.10.1 compresses a plugin's gzip body a second time, and so do 1.12.7 and
    1.13.0 for the plugin's JSON (``application/json; charset=utf-8``, the type
    plain Orthanc sends; they leave alone only a bare ``application/json``).
    So the plugin compresses only where Orthanc does not.
    """
    if not compression:
        return True, ("JSON answers go out gzip-compressed, as stored, to clients that "
                      "accept gzip")
    return False, ("HttpCompressionEnabled is on, and Orthanc would compress the plugin's "
                   "gzip answers again: JSON goes out as Orthanc's bytes, which Orthanc "
                   "compresses at every request; set HttpCompressionEnabled to false for "
                   "faster hits (docs/deployment.md)")


def _redis_options(settings: Settings) -> Optional[RedisOptions]:
    """How to reach the Redis server, when the setting Backend says so."""
    if settings.store_backend is not Backend.REDIS:
        return None
    return RedisOptions(settings.redis_url, settings.key_prefix, settings.redis_timeout / 1000)


def _exists(level: Level, resource_id: str) -> bool:
    return isinstance(_get("/%s/%s" % (level.value, resource_id)), bytes)


def _housekeeper_enabled(configuration: Mapping[str, Any]) -> bool:
    """Whether Orthanc's Housekeeper plugin may run: it works only when enabled in its
    section (whether it is loaded is known once Orthanc runs)."""
    section = configuration.get("Housekeeper")
    return isinstance(section, dict) and section.get("Enable") is True


def _lua_filter(configuration: Mapping[str, Any]) -> bool:
    """Whether a Lua script of ``LuaScripts`` may filter requests: it defines
    ``IncomingHttpRequestFilter``, or it cannot be read here (Orthanc reads a relative path
    from the configuration file's folder, which a plugin is not told)."""
    scripts = configuration.get("LuaScripts")
    for path in scripts if isinstance(scripts, list) else ():
        if not isinstance(path, str):
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as script:
                if "IncomingHttpRequestFilter" in script.read():
                    return True
        except OSError:
            return True
    return False


_STABLE_LEVELS = {
    orthanc.ChangeType.STABLE_PATIENT: Level.PATIENT,
    orthanc.ChangeType.STABLE_STUDY: Level.STUDY,
    orthanc.ChangeType.STABLE_SERIES: Level.SERIES,
}


#: Routes whose answer is a ZIP archive that Orthanc builds.
ARCHIVE_ROUTES = ("archive", "media")


def _plugin_may_read_archives() -> bool:
    """False where a plugin that asks Orthanc's REST API for an archive crashes it.

    Orthanc 1.13.0 streams archives, and a plugin's ``RestApiGet`` or
    ``RestApiPost`` of ``/archive`` or ``/media`` (synchronous, and
    ``/jobs/{id}/archive`` after an asynchronous one) ends Orthanc with a
    segmentation fault.  1.12.7 answers them.  A crash cannot be probed, so
    the versions in between are treated like 1.13.0: their archives are only
    left uncached.
    """
    return not orthanc.CheckVersionAdvanced(1, 12, 8)


def _register_rest(pattern: str, callback: Callable[..., None]) -> None:
    orthanc.RegisterRestCallback(pattern, keep_alive(callback))


def enable(overrides: Mapping[str, Any]) -> bool:
    """Read the settings and register everything (see ``enable_cache_plugin``)."""
    configuration = json.loads(orthanc.GetConfiguration())
    try:
        settings = load_settings(configuration, overrides)
    except SettingsError as error:
        _error("not started, invalid settings: %s" % error)
        return False
    _hide(settings.secrets())
    if not settings.enable:
        _warn("disabled by the setting Enable")
        return False
    plugin = CachePlugin(settings, configuration)
    atexit.register(plugin.shutdown)
    # First: without change events the cache could serve stale answers.
    if not watch_changes(plugin.on_change):
        plugin.store.close()
        _error("not started: Orthanc's change events go to a callback "
                         "registered before enable_cache_plugin()")
        return False
    archives = _plugin_may_read_archives()
    for route in ROUTES:
        if route.name in ARCHIVE_ROUTES and not archives:
            continue
        _register_rest(route.pattern, plugin.handler(route))
    if not archives:
        _warn("archive and media left to Orthanc (not cached, no "
                           "validators): this Orthanc cannot compute them for a plugin")
    # Below the cache's own root, never on the DICOMweb plugin's routes (host/dicomweb.py).
    for route in DICOMWEB_ROUTES:
        _register_rest(plugin.dicomweb.own_root.rstrip("/") + route.pattern,
                       plugin.handler(route))
    for pattern in plugin.admin.patterns():
        _register_rest(pattern, plugin.on_admin)
    # Without the filter, a deleted resource's LastUpdate must be asked for every time.
    if settings.watch_http_writes:
        if watch_writes(plugin.changes, on_script_filter=plugin.filter_registered):
            watch_stored_instances(plugin.changes)
        else:  # a filter registered before ours decides access
            plugin.learn_access(replace(plugin.access, earlier_filter=True))
    else:
        # Without our filter, one registered before cannot be seen (only one may be).
        notice_filters(plugin.filter_registered)
    exit_note = avoid_plugin_teardown()
    if exit_note is not None:
        _warn(exit_note)
    _warn("version %s active, store in %s (%s)" % (
        __version__, plugin.store.location,
        "available" if plugin.store.available else "unavailable: requests go to Orthanc"))
    plugin.log_sharing()
    _warn(plugin.gzip_note)
    return True
