"""Load: 64 concurrent clients read and write; no 5xx, no stale answer, no deadlock, clean stop.

Two Orthancs start with the same studies: a plain one and one running the
plugin (warm-up on, ``StableAge`` 1, binary answers stored too).  ``CLIENTS``
threads, each with its own ``requests`` session, run for ``LOAD_SECONDS``:

* reads of every cached route (JSON, images with each ``Accept``, raw frames,
  files, archives), on live and on deleted resources, half of them
  conditional with the ``ETag`` the client got before;
* writes, serialized by a lock and sent to both servers in the same order:
  uploads (new instances, series and studies), deletions (instances, series,
  studies), instance metadata ``PUT`` and ``DELETE``.  Writes come in waves
  (8 s cycle: 3 s of uploads, 2 s of every kind of write, 3 s without
  writes) so that answers get stored, hit and revalidated in between.

A read is *compared* when no write was in flight from the start of the
plugin's request to the end of the plain request that follows it: the
plugin's answer (status, Content-Type, Location, body) must then equal plain
Orthanc's, and a 304 is stale unless the body the client holds for that
ETag equals plain's.  At the end: no 5xx, no stale answer, no request over
``TIMEOUT``, every client thread done; then, with the clients still
hammering it, the plugin's Orthanc is stopped: exit code 0, not killed,
under 5 s.

CI runs 20 s (the default); the reference run is
``LOAD_SECONDS=60 .venv/bin/python -m pytest -s tests/integration/test_load.py``
(figures in docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import re
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

import pytest
import requests

from support.dicom_factory import make_instance, make_pdf_instance, make_uid
from support.oracle import normalized_body, without_source_line_details
from support.orthanc_server import OrthancServer
from support.stacks import plugin_version

LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "20"))
CLIENTS = int(os.environ.get("LOAD_CLIENTS", "64"))
#: Orthanc (civetweb) gives each keep-alive connection a thread until it has been idle for
#: a second: with fewer threads than clients, some clients wait indefinitely (plain too).
HTTP_THREADS = int(os.environ.get("LOAD_HTTP_THREADS", str(CLIENTS + 16)))
TIMEOUT = 15.0  # seconds: a request slower than this counts as a deadlock
STOP_LIMIT = 5.0  # seconds for Orthanc to stop under load
SEED = "load"
CYCLE = 8.0  # seconds: uploads [0, 3), every write [3, 5), no write [5, 8)
WRITE_GAP = 0.15  # seconds between two writes, so that most reads are compared
NO_GZIP = {"Accept-Encoding": "identity"}


# --- The data, mirrored by the test -----------------------------------------------------------

@dataclass
class Instance:
    id: str
    kind: str  # "mono", "multiframe" or "pdf"
    series: str
    study: str
    patient: str


@dataclass
class Study:
    """DICOM UIDs to add instances to an existing study or series."""

    patient_id: str
    study_uid: str
    series_uids: List[str]


class Registry:
    """What both servers hold; changed only under the write lock."""

    def __init__(self) -> None:
        self.instances: Dict[str, Instance] = {}
        self.alive: Set[str] = set()  # ids of every level that exist now
        self.known: Dict[str, List[str]] = {"patients": [], "studies": [], "series": [],
                                            "instances": []}
        self.studies: Dict[str, Study] = {}  # Orthanc study id -> its UIDs
        self.counter = 0
        #: Orthanc's own 5xx answers: (kind, route, Accept) -> (status, body with "{id}").
        self.orthanc_5xx: Dict[Tuple[str, str, Optional[str]], Tuple[int, bytes]] = {}

    def add(self, answer: Dict[str, str], kind: str) -> None:
        instance = Instance(answer["ID"], kind, answer["ParentSeries"], answer["ParentStudy"],
                            answer["ParentPatient"])
        self.instances[instance.id] = instance
        for level, resource in (("instances", instance.id), ("series", instance.series),
                                ("studies", instance.study), ("patients", instance.patient)):
            if resource not in self.known[level]:
                self.known[level].append(resource)

    def learn_orthanc_5xx(self, plain: OrthancServer) -> None:
        """Ask plain Orthanc every instance route of one instance of each kind and keep the
        5xx it answers: the plugin gives the same for a resource that plain Orthanc,
        a write ahead, has already deleted."""
        examples = {instance.kind: instance.id for instance in self.instances.values()}
        for kind, instance in examples.items():
            for route in INSTANCE_ROUTES:
                for accept in _accepts_of(route):
                    headers = dict(NO_GZIP, **({"Accept": accept} if accept else {}))
                    answer = plain.get("/instances/%s/%s" % (instance, route), headers=headers)
                    if answer.status_code >= 500:
                        self.orthanc_5xx[(kind, route, accept)] = (
                            answer.status_code, answer.content.replace(instance.encode(), b"{id}"))

    def is_orthanc_5xx(self, path: str, accept: Optional[str],
                       answer: requests.Response) -> bool:
        """Whether ``answer`` to ``path`` is a 5xx that plain Orthanc gives too."""
        match = re.match(r"^/instances/([^/]+)/(.+)$", path)
        if not match or match.group(1) not in self.instances:
            return False
        instance, route = match.groups()
        known = self.orthanc_5xx.get((self.instances[instance].kind, route, accept))
        return known == (answer.status_code, answer.content.replace(instance.encode(), b"{id}"))

    def refresh(self, server: OrthancServer) -> None:
        """Which resources still exist (Orthanc removes emptied parents itself)."""
        alive = set()
        for level in ("patients", "studies", "series", "instances"):
            alive.update(server.get("/" + level).json())
        self.alive = alive


def _upload_both(plain: OrthancServer, cached: OrthancServer, dicom: bytes) -> Dict[str, str]:
    answer = plain.upload(dicom)
    assert cached.upload(dicom)["ID"] == answer["ID"]
    return answer


def populate(plain: OrthancServer, cached: OrthancServer, registry: Registry) -> None:
    """Three studies of two series of two images; a 2-frame image and a PDF besides."""
    for number in range(3):
        seed = "%s-%d" % (SEED, number)
        patient = "PAT-LOAD-%d" % (number % 2)  # two patients, one with two studies
        study_uid = make_uid(seed, "study")
        series_uids = [make_uid(seed, "series", s) for s in (1, 2)]
        for series_number, series_uid in enumerate(series_uids, start=1):
            for instance_number in (1, 2):
                answer = _upload_both(plain, cached, make_instance(
                    patient, study_uid=study_uid, series_uid=series_uid,
                    series_number=series_number, instance_number=instance_number, seed=seed))
                registry.add(answer, "mono")
        registry.studies[answer["ParentStudy"]] = Study(patient, study_uid, series_uids)
        if number == 0:
            registry.add(_upload_both(plain, cached, make_instance(
                patient, study_uid=study_uid, series_number=3, frames=2, seed=seed)), "multiframe")
        if number == 1:
            registry.add(_upload_both(plain, cached, make_pdf_instance(
                patient, study_uid=study_uid, seed=seed)), "pdf")
    registry.refresh(plain)
    registry.learn_orthanc_5xx(plain)


# --- Requests ---------------------------------------------------------------------------------

PARENT_ROUTES = ("shared-tags", "shared-tags?short", "shared-tags?simplify", "instances-tags",
                 "instances-tags?short", "instances-tags?simplify", "attachments")
HEAVY_PARENT_ROUTES = ("archive", "media")
INSTANCE_ROUTES = ("tags", "tags?short", "simplified-tags", "header", "metadata",
                   "metadata?expand", "frames", "file", "preview", "frames/0/preview",
                   "frames/0/rendered", "frames/0/image-uint8", "frames/0/image-uint16",
                   "frames/0/image-int16", "frames/0/raw", "frames/0/raw.gz", "frames/0/matlab",
                   "frames/0/numpy", "frames/1/preview", "frames/1/raw", "pdf")
IMAGE_ACCEPTS = (None, "image/jpeg", "image/x-portable-arbitrarymap", "image/png")


def _accepts_of(route: str) -> Tuple[Optional[str], ...]:
    return IMAGE_ACCEPTS if "preview" in route or "rendered" in route else (None,)


def comparable(response: requests.Response) -> Tuple:
    """What must be equal between the plugin's answer and plain Orthanc's (not the
    Content-Disposition of /file, which names an attachment UUID proper to each server)."""
    content_type = response.headers.get("Content-Type")
    return (response.status_code, content_type, response.headers.get("Location"),
            normalized_body(response.content, content_type))


def describe(answer: Tuple) -> str:
    body = answer[3] if len(answer[3]) <= 200 else answer[3][:200] + b"..."
    return "%d %s %r" % (answer[0], answer[1], body)


@dataclass
class Figures:
    """Counters shared by the clients (updated under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    reads: int = 0
    conditional: int = 0
    compared: int = 0
    not_modified: int = 0
    writes: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    plugin_5xx: List[str] = field(default_factory=list)
    plain_5xx: List[str] = field(default_factory=list)
    stale: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    latencies: List[float] = field(default_factory=list)
    slowest: Tuple[float, str] = (0.0, "")

    def timed(self, seconds: float, what: str) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if seconds > self.slowest[0]:
                self.slowest = (seconds, what)


class Load:
    """The shared state of one run: servers, data, write bookkeeping, figures."""

    def __init__(self, plain: OrthancServer, cached: OrthancServer, registry: Registry):
        self.plain = plain
        self.cached = cached
        self.registry = registry
        self.figures = Figures()
        self.write_lock = threading.Lock()
        self.writes_started = 0
        self.writes_finished = 0
        self.last_write = 0.0
        self.began = time.monotonic()
        self.measuring = True  # False once the measured period is over (the stop begins)
        #: Orthanc 1.10.1 itself hangs when stopped while it streams an archive or a
        #: media (plain Orthanc too): none is asked for once the stop approaches.
        self.archives_allowed = True
        self.archives_in_flight = 0
        self.in_flight: Dict[int, Tuple[float, str]] = {}  # client thread -> (start, request)
        self.stopping = threading.Event()

    # Reads ---------------------------------------------------------------------------------

    def pick_read(self, rng: random.Random, memory: Dict) -> Tuple[str, Optional[str]]:
        registry = self.registry
        if memory and rng.random() < 0.4:  # again a URL the client holds an ETag for
            path, accept = rng.choice(list(memory))
            if self.archives_allowed or not path.endswith(HEAVY_PARENT_ROUTES):
                return path, accept
        roll = rng.random()
        if roll < 0.3:
            level = rng.choice(("patients", "studies", "series"))
            heavy = self.archives_allowed and rng.random() < 0.04
            route = rng.choice(HEAVY_PARENT_ROUTES if heavy else PARENT_ROUTES)
            return "/%s/%s/%s" % (level, rng.choice(registry.known[level]), route), None
        instance = registry.instances[rng.choice(registry.known["instances"])]
        route = rng.choice(INSTANCE_ROUTES)
        accept = rng.choice(_accepts_of(route))
        return "/instances/%s/%s" % (instance.id, route), accept

    def read(self, rng: random.Random, session: requests.Session, plain_session: requests.Session,
             memory: Dict[Tuple[str, Optional[str]], Tuple[str, Tuple]]) -> None:
        path, accept = self.pick_read(rng, memory)
        heavy = path.endswith(HEAVY_PARENT_ROUTES)
        if heavy:
            with self.figures.lock:
                self.archives_in_flight += 1
        try:
            self._read(path, accept, rng, session, plain_session, memory)
        finally:
            if heavy:
                with self.figures.lock:
                    self.archives_in_flight -= 1

    def _read(self, path: str, accept: Optional[str], rng: random.Random,
              session: requests.Session, plain_session: requests.Session,
              memory: Dict[Tuple[str, Optional[str]], Tuple[str, Tuple]]) -> None:
        headers = dict(NO_GZIP)
        if accept:
            headers["Accept"] = accept
        held = memory.get((path, accept))
        conditional = held is not None and rng.random() < 0.5
        if conditional:
            headers["If-None-Match"] = held[0]
        started, finished = self.writes_started, self.writes_finished
        answer = self.timed_get(session, self.cached, path, headers)
        if answer is None:
            return
        expected = self.timed_get(plain_session, self.plain, path,
                                  {k: v for k, v in headers.items() if k != "If-None-Match"})
        if expected is None:
            return
        quiet = started == finished == self.writes_started  # no write during both requests
        figures = self.figures
        with figures.lock:
            if not self.measuring:
                return
            figures.reads += 1
            figures.conditional += conditional
            figures.outcomes[answer.headers.get("X-Cache-Status", "-")] += 1
            what = "GET %s (Accept: %s, If-None-Match: %s)" % (
                path, accept, headers.get("If-None-Match"))
            if expected.status_code >= 500:  # Orthanc's own (raw frames of a PDF: 500)
                figures.plain_5xx.append("%s: %d" % (what, expected.status_code))
            # With a write in flight, plain Orthanc may already have deleted what the plugin's
            # Orthanc still held: the plugin's 5xx must then be Orthanc's own for it.
            if answer.status_code >= 500 and answer.status_code != expected.status_code and (
                    quiet or not self.registry.is_orthanc_5xx(path, accept, answer)):
                figures.plugin_5xx.append("%s: %d %r (plain Orthanc: %d)" % (
                    what, answer.status_code, answer.content[:300], expected.status_code))
            if answer.status_code == 304:
                figures.not_modified += 1
            if not quiet:
                pass
            elif answer.status_code == 304:
                figures.compared += 1
                if held[1] != comparable(expected):
                    figures.stale.append("%s: 304, but the body held for that ETag is\n  %s\n"
                                         "and plain Orthanc answers\n  %s"
                                         % (what, describe(held[1]),
                                            describe(comparable(expected))))
            else:
                figures.compared += 1
                if comparable(answer) != comparable(expected) and not (
                        answer.status_code == expected.status_code >= 500
                        and without_source_line_details(expected.content) == answer.content):
                    figures.stale.append("%s:\n  plugin: %s\n  plain:  %s" % (
                        what, describe(comparable(answer)), describe(comparable(expected))))
        if answer.status_code == 200 and "ETag" in answer.headers:
            memory[(path, accept)] = (answer.headers["ETag"], comparable(answer))

    def send(self, session: requests.Session, method: str, url: str,
             **kwargs) -> requests.Response:
        """One request, tracked while in flight; sent again once if the server closed an
        idle keep-alive connection just as it was reused (a race of HTTP/1.1 clients)."""
        what = "%s %s" % (method, url)
        self.in_flight[threading.get_ident()] = (time.monotonic(), what)
        try:
            try:
                return session.request(method, url, timeout=TIMEOUT, **kwargs)
            except requests.ConnectionError as error:
                if "RemoteDisconnected" not in repr(error) or not self.measuring:
                    raise
                return session.request(method, url, timeout=TIMEOUT, **kwargs)
        finally:
            self.in_flight.pop(threading.get_ident(), None)

    def stalled(self) -> List[str]:
        """Requests in flight for longer than TIMEOUT (none should be)."""
        now = time.monotonic()
        return ["%s (%.0f s)" % (what, now - began)
                for began, what in list(self.in_flight.values()) if now - began > TIMEOUT]

    def timed_get(self, session: requests.Session, server: OrthancServer, path: str,
                  headers: Dict[str, str]) -> Optional[requests.Response]:
        began = time.monotonic()
        try:
            answer = self.send(session, "GET", server.url + path, headers=headers)
        except requests.RequestException as error:
            if self.measuring:
                with self.figures.lock:
                    self.figures.errors.append("GET %s%s: %s: %s" % (
                        server.url, path, type(error).__name__, error))
            return None
        self.figures.timed(time.monotonic() - began, "GET " + path)
        return answer

    # Writes --------------------------------------------------------------------------------

    def may_write(self, now: float) -> Optional[str]:
        """Which kinds of write the current phase allows (None: none now)."""
        phase = (now - self.began) % CYCLE
        if phase < 3:
            return "upload"
        if phase < 5:
            return "any"
        return None

    def write(self, rng: random.Random, session: requests.Session,
              plain_session: requests.Session) -> bool:
        """One write on both servers, if the phase and the pacing allow it."""
        allowed = self.may_write(time.monotonic())
        if allowed is None or not self.write_lock.acquire(blocking=False):
            return False
        try:
            if time.monotonic() - self.last_write < WRITE_GAP or not self.measuring:
                return False
            self.writes_started += 1
            try:
                kind = "upload" if allowed == "upload" else rng.choice(
                    ("upload", "delete", "metadata-put", "metadata-put", "metadata-delete"))
                kind = getattr(self, "_" + kind.replace("-", "_"))(rng, session, plain_session)
                with self.figures.lock:
                    self.figures.writes[kind] += 1
            except (requests.RequestException, AssertionError) as error:
                if self.measuring:
                    with self.figures.lock:
                        self.figures.errors.append("write: %s: %s" % (type(error).__name__, error))
            finally:
                self.writes_finished += 1
                self.last_write = time.monotonic()
            return True
        finally:
            self.write_lock.release()

    def both(self, session: requests.Session, plain_session: requests.Session, method: str,
             path: str, **kwargs) -> Tuple[requests.Response, requests.Response]:
        answers = []
        for server, client in ((self.plain, plain_session), (self.cached, session)):
            began = time.monotonic()
            answers.append(self.send(client, method, server.url + path, **kwargs))
            self.figures.timed(time.monotonic() - began, "%s %s" % (method, path))
        expected, answer = answers
        if answer.status_code >= 500 and self.measuring:
            with self.figures.lock:
                self.figures.plugin_5xx.append("%s %s: %d %r" % (
                    method, path, answer.status_code, answer.content[:300]))
        assert answer.status_code == expected.status_code, (method, path, answer.status_code,
                                                            expected.status_code)
        return expected, answer

    def _upload(self, rng: random.Random, session, plain_session) -> str:
        registry = self.registry
        live = [study for study in registry.studies if study in registry.alive]
        registry.counter += 1
        number = registry.counter
        if not live or rng.random() < 0.15:  # a new study
            patient = "PAT-LOAD-%d" % rng.randrange(3)
            study = Study(patient, make_uid(SEED, "new-study", number),
                          [make_uid(SEED, "new-series", number)])
            kind = "upload-study"
        else:
            study = registry.studies[rng.choice(live)]
            if rng.random() < 0.3:
                study.series_uids.append(make_uid(SEED, "new-series", number))
                kind = "upload-series"
            else:
                kind = "upload-instance"
        dicom = make_instance(study.patient_id, study_uid=study.study_uid,
                              series_uid=study.series_uids[-1] if kind != "upload-instance"
                              else rng.choice(study.series_uids),
                              sop_uid=make_uid(SEED, "new-instance", number),
                              instance_number=100 + number, seed=SEED)
        expected, answer = self.both(session, plain_session, "POST", "/instances", data=dicom,
                                     headers={"Content-Type": "application/dicom"})
        assert expected.status_code == 200 and answer.json()["ID"] == expected.json()["ID"]
        registry.add(expected.json(), "mono")
        registry.studies.setdefault(expected.json()["ParentStudy"], study)
        registry.alive.update(expected.json()[key] for key in
                              ("ID", "ParentSeries", "ParentStudy", "ParentPatient"))
        return kind

    def _delete(self, rng: random.Random, session, plain_session) -> str:
        registry = self.registry
        # Keep most of the data: delete instances mostly, a series or a study now and then.
        level = rng.choices(("instances", "series", "studies"), weights=(8, 2, 1))[0]
        live = [resource for resource in registry.known[level] if resource in registry.alive]
        if len(registry.alive & set(registry.known["instances"])) < 8 or not live:
            return self._upload(rng, session, plain_session)
        resource = rng.choice(live)
        self.both(session, plain_session, "DELETE", "/%s/%s" % (level, resource))
        registry.refresh(self.plain)
        return "delete-" + level

    def _live_instance(self, rng: random.Random) -> str:
        live = [i for i in self.registry.known["instances"] if i in self.registry.alive]
        return rng.choice(live)

    def _metadata_put(self, rng: random.Random, session, plain_session) -> str:
        path = "/instances/%s/metadata/1024" % self._live_instance(rng)
        self.both(session, plain_session, "PUT", path,
                  data=("v%d" % rng.randrange(10 ** 6)).encode())
        return "metadata-put"

    def _metadata_delete(self, rng: random.Random, session, plain_session) -> str:
        path = "/instances/%s/metadata/1024" % self._live_instance(rng)
        self.both(session, plain_session, "DELETE", path)  # 404 on both when absent
        return "metadata-delete"

    # A client ------------------------------------------------------------------------------

    def client(self, number: int) -> None:
        rng = random.Random("%s-client-%d" % (SEED, number))
        session, plain_session = requests.Session(), requests.Session()
        session.trust_env = plain_session.trust_env = False
        memory: Dict[Tuple[str, Optional[str]], Tuple[str, Tuple]] = {}
        try:
            while not self.stopping.is_set():
                if rng.random() < 0.08 and self.write(rng, session, plain_session):
                    continue
                self.read(rng, session, plain_session, memory)
        except Exception as error:  # noqa: BLE001 - reported, never swallowed
            if self.measuring:
                with self.figures.lock:
                    self.figures.errors.append("client %d died: %s: %s" % (
                        number, type(error).__name__, error))
        finally:
            session.close()
            plain_session.close()


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@pytest.mark.parametrize("allow_threads", [False, True],
                         ids=["GIL held in SDK calls", "Python.AllowThreads"])
def test_load_with_writes_then_stop_under_load(
        cached_orthanc: Callable[..., OrthancServer],
        orthanc_factory: Callable[..., OrthancServer], allow_threads: bool) -> None:
    """Run once as the tests configure the Python plugin, once as the Dockerfile does
    (``AllowThreads``: the GIL is released around every SDK call, plugin 4.3 and later),
    where misses, hits, warm-up and change events really run in parallel."""
    if allow_threads and plugin_version() < (4, 3):
        pytest.skip("Python.AllowThreads needs the Python plugin 4.3 (this stack: %s)"
                    % ".".join(map(str, plugin_version())))
    common = {"HttpThreadsCount": HTTP_THREADS}
    plain = orthanc_factory(config=common)
    cached = cached_orthanc(settings={"StoreBinary": True}, config=dict(
        common, StableAge=1, Python={"AllowThreads": allow_threads}))
    registry = Registry()
    populate(plain, cached, registry)
    time.sleep(3.1)  # let the first versions settle (freshness.SETTLE)

    load = Load(plain, cached, registry)
    threads = [threading.Thread(target=load.client, args=(number,), name="load-%d" % number,
                                daemon=True) for number in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(LOAD_SECONDS)
    with load.figures.lock:
        load.measuring = False
    measured = time.monotonic() - began
    stalled = load.stalled()
    load.archives_allowed = False
    time.sleep(0.2)  # a client may have picked an archive just before
    while load.archives_in_flight:  # the other reads and the warm-up go on
        assert time.monotonic() - began < LOAD_SECONDS + TIMEOUT, "an archive never ended"
        time.sleep(0.01)

    stop = cached.stop(timeout=15)  # with the clients still sending requests
    load.stopping.set()
    for thread in threads:
        thread.join(TIMEOUT + 10)
    hung = [thread.name for thread in threads if thread.is_alive()]

    figures = load.figures
    latencies = figures.latencies
    summary = (
        "load: %d clients for %.1f s: %d reads (%.0f/s; %d conditional, %d answered 304), "
        "%d compared with plain Orthanc, %d writes %s; outcomes %s; plugin 5xx: %d, "
        "plain 5xx: %d, stale: %d, errors: %d, stalled: %d; latency p50 %.3f s, p99 %.3f s, "
        "max %.3f s (%s); "
        "stop under load: code %s in %.2f s%s"
        % (CLIENTS, measured, figures.reads, figures.reads / measured, figures.conditional,
           figures.not_modified, figures.compared, sum(figures.writes.values()),
           dict(figures.writes), dict(figures.outcomes), len(figures.plugin_5xx),
           len(figures.plain_5xx), len(figures.stale), len(figures.errors), len(stalled),
           statistics.median(latencies) if latencies else 0.0, percentile(latencies, 0.99),
           figures.slowest[0], figures.slowest[1], stop.returncode, stop.seconds,
           " (killed)" if stop.killed else ""))
    print("\n" + summary)

    assert not figures.errors, "%d failed requests, first ones:\n%s" % (
        len(figures.errors), "\n".join(figures.errors[:10]))
    assert not stalled, "requests blocked for over %d s: %s" % (TIMEOUT, stalled[:10])
    assert not hung, "client threads still blocked: %s" % hung[:10]
    assert figures.slowest[0] < TIMEOUT
    assert not figures.plugin_5xx, "\n".join(figures.plugin_5xx[:10])
    assert not figures.stale, "%d stale answers, first ones:\n%s" % (
        len(figures.stale), "\n".join(figures.stale[:10]))
    # How many reads overlap a write depends on how long reads take: on Orthanc 1.13, where
    # plain Orthanc computes the heavy routes several times slower, about 30 % of them stay
    # quiet (CI saw 1,226 of 4,070).  A fifth, and at least ten a second, is enough to judge.
    assert figures.compared >= max(figures.reads // 5, 10 * LOAD_SECONDS), (
        "too few reads compared: " + summary)
    # A write every two seconds at least (each is made on both servers; a busy machine saw
    # 19 in 22.5 s): enough writes beside the reads to judge them.
    assert sum(figures.writes.values()) >= LOAD_SECONDS // 2, "too few writes: " + summary
    assert {"HIT", "MISS", "REVALIDATED"} <= set(figures.outcomes), summary
    assert stop.returncode == 0 and not stop.killed, "%s\n%s" % (stop, cached.log_tail())
    assert stop.seconds < STOP_LIMIT, "%s\n%s" % (stop, cached.log_tail())
