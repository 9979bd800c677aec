"""Model-based freshness checking: random writes and reads on plugin nodes and a plain Orthanc.

A :class:`FreshnessRun` drives a sequence of operations chosen by a seeded
``random.Random``.  Every write is applied to the *reference* (a plain
Orthanc) and to one randomly picked *target* (an Orthanc with the plugin);
every read is sent to a random target and compared with the reference's
current answer.  With a single target, targets and reference hold the same
data; with several targets sharing one database (a cluster), a write sent to
any node is seen by all of them, so the same model applies unchanged.

The model itself only tracks what is needed to *choose* operations: the
resource tree (which ids exist, from Orthanc's upload answers), how each
instance was generated (to overwrite or re-create it with other content) and
the recently deleted resources.  What the answers *should* be is never
predicted: plain Orthanc is the oracle.

Violations:

* **stale body**: the plugin's answer (status, Content-Type, body; see
  :mod:`support.oracle`, zip listings in any order) is not plain Orthanc's
  current answer;
* **wrong 304**: a 304 while plain Orthanc's current answer differs from the
  body of the plugin's earlier 200 whose ``ETag`` or ``Last-Modified`` the
  client sent in ``If-None-Match`` or ``If-Modified-Since`` (what it holds);
* **changed etag**: a settled answer's ETag (200 or 304) differs from the one
  of the latest settled answer of the same read on the same node although no
  write touched the resource in between (``writes_on``: writes on it, on an
  ancestor for the writes that reach below, on anything below it).

Each violation names the writes that changed the resource since the answer
the client saw, and the last operations before it.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import requests

from orthanc_cache_plugin.core.routes import Level, match
from support.dicom_factory import make_instance, make_pdf_instance, make_uid, minimal_pdf
from support.oracle import Exchange, attachment_names, exchange
from support.orthanc_server import OrthancServer, free_port

#: User-defined metadata and attachment names that the operations write.
USER_METADATA = ("Sample", "Other")
ATTACHMENT = "Note"
#: Labels that the operations set and remove (Orthanc 1.12 and later).
LABELS = ("reviewed", "model")
#: A configured modality where nobody listens: C-ECHOs and queries to it fail.
MODALITY = "nowhere"
#: The configuration of Orthanc's Housekeeper plugin (Orthanc 1.11 and later) that
#: "housekeeper rewrite" needs: no pause between studies, so that a rewrite of every
#: file takes seconds.
HOUSEKEEPER_CONFIG: Dict[str, Any] = {"Housekeeper": {"Enable": True, "ThrottleDelay": 0}}
#: The transfer syntaxes that successive "housekeeper rewrite" operations transcode
#: every stored file to, in turn: implicit, then explicit little endian.
INGEST_TRANSCODINGS = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")

#: Orthanc configuration needed by the operations, on the plain and the plugin servers alike.
#: ``StableAge`` makes the plugin's warm-up run during the sequence.
SERVER_CONFIG: Dict[str, Any] = {
    "UserMetadata": {"Sample": 1024, "Other": 1025},
    "UserContentType": {ATTACHMENT: [1030, "text/plain"]},
    "OverwriteInstances": True,
    "StableAge": 1,
    "DicomModalities": {MODALITY: ["NOWHERE", "127.0.0.1", free_port()]},
}

_CHAIN = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE)
_UPLOAD_PARENT_KEYS = ("ParentPatient", "ParentStudy", "ParentSeries", "ID")

#: Never gzip (the bytes would differ between servers); Accept is set per read.
_BASE_HEADERS = {"Accept-Encoding": "identity"}
_OUTCOME = re.compile(r"cache plugin: (HIT|MISS|REVALIDATED|BYPASS|PASS) GET ")
_WARM_UP = re.compile(r"cache plugin: warm-up of \w+ \S+: (\d+) answers stored")


class ModelDiverged(AssertionError):
    """The servers disagree on a write: the model, not the cache, is broken."""


# -- What the data is made of ------------------------------------------------------


@dataclass(frozen=True)
class SeriesRecipe:
    """How the instances of one series are generated (same recipe ⇒ same Orthanc ids)."""

    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    series_number: int
    pdf: bool


@dataclass(frozen=True)
class InstanceRecipe:
    """One revision of one instance; another ``revision`` gives other tags and pixels."""

    sop_uid: str
    revision: int
    frames: int
    rgb: bool


def encode(series: SeriesRecipe, instance: InstanceRecipe) -> bytes:
    """The DICOM file of ``instance`` in ``series``."""
    if series.pdf:
        return make_pdf_instance(
            series.patient_id, patient_name=series.patient_name, study_uid=series.study_uid,
            series_uid=series.series_uid, sop_uid=instance.sop_uid,
            series_number=series.series_number, pdf=minimal_pdf("revision %d" % instance.revision))
    return make_instance(
        series.patient_id, patient_name=series.patient_name, study_uid=series.study_uid,
        series_uid=series.series_uid, sop_uid=instance.sop_uid,
        series_number=series.series_number, instance_number=instance.revision,
        frames=instance.frames, rgb=instance.rgb)


@dataclass
class Node:
    """One resource of the tree."""

    level: Level
    id: str
    parent: Optional[str]
    children: Set[str] = field(default_factory=set)


class Tree:
    """The resources that exist, as Orthanc's deletion rules leave them."""

    def __init__(self) -> None:
        self.nodes: Dict[str, Node] = {}

    def add(self, upload_answer: Mapping[str, Any]) -> None:
        """Record an uploaded instance and its parents (from ``POST /instances``'s answer)."""
        parent: Optional[str] = None
        for level, key in zip(_CHAIN, _UPLOAD_PARENT_KEYS):
            resource_id = upload_answer[key]
            self.nodes.setdefault(resource_id, Node(level, resource_id, parent))
            if parent is not None:
                self.nodes[parent].children.add(resource_id)
            parent = resource_id

    def remove(self, resource_id: str) -> Tuple[List[Node], Optional[str]]:
        """Delete a resource as Orthanc does: its subtree, then each ancestor left empty.

        Returns the deleted nodes and the remaining ancestor (None if none is left).
        """
        removed = self.subtree(resource_id)
        for node in removed:
            del self.nodes[node.id]
        child, parent = resource_id, removed[0].parent
        while parent is not None:
            ancestor = self.nodes[parent]
            ancestor.children.discard(child)
            if ancestor.children:
                return removed, parent
            removed.append(self.nodes.pop(parent))
            child, parent = parent, ancestor.parent
        return removed, None

    def subtree(self, resource_id: str) -> List[Node]:
        """The resource and everything below it, top-down."""
        nodes = [self.nodes[resource_id]]
        for node in nodes:
            nodes.extend(self.nodes[child] for child in sorted(node.children))
        return nodes

    def lineage(self, resource_id: str) -> List[Node]:
        """The resource and its ancestors, bottom-up."""
        nodes = [self.nodes[resource_id]]
        while nodes[-1].parent is not None:
            nodes.append(self.nodes[nodes[-1].parent])
        return nodes

    def ids(self, level: Level) -> List[str]:
        """Existing ids of ``level``, sorted (so that choices depend on the seed only)."""
        return sorted(node.id for node in self.nodes.values() if node.level is level)

    def any_instance_below(self, resource_id: str) -> str:
        """One instance of the resource's subtree."""
        return next(node.id for node in self.subtree(resource_id) if node.level is Level.INSTANCE)


# -- Reads ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """One GET: the path (with its query string) and the Accept header (None: none sent)."""

    path: str
    accept: Optional[str] = None

    def __str__(self) -> str:
        return self.path + ("" if self.accept is None else " (Accept: %s)" % self.accept)


#: Reads of one level: (suffix choices, weight) pairs.
ReadTable = Tuple[Tuple[Tuple[str, ...], int], ...]

#: Every cached route is among these two tables.
PARENT_READS: ReadTable = (
    (("/shared-tags", "/shared-tags?short", "/shared-tags?simplify"), 4),
    (("/instances-tags", "/instances-tags?short", "/instances-tags?simplify"), 4),
    (("/attachments",), 3),
    (("/archive",), 1),
    (("/media",), 1),
)
INSTANCE_READS: ReadTable = (
    (("/tags", "/tags?short", "/tags?simplify"), 3),
    (("/simplified-tags",), 2),
    (("/metadata", "/metadata?expand"), 3),
    (("/header",), 1),
    (("/file",), 1),
    (("/frames",), 1),
    (("/preview",), 2),
    (("/frames/0/preview", "/frames/1/preview", "/frames/0/rendered", "/frames/0/image-uint8",
      "/frames/0/raw", "/frames/1/numpy"), 2),
    (("/pdf",), 1),
)
_IMAGE_ACCEPTS = (None, None, "image/jpeg")

#: Instance routes that Orthanc 1.10 answers from each node's cache of parsed DICOM files.
#: In a cluster, a deletion or an overwrite made through another node does not reach that
#: cache, so plain Orthanc nodes themselves disagree there (node B still serves the frames
#: of an instance deleted through node A): cluster runs read only CLUSTER_INSTANCE_READS.
PARSED_DICOM_ROUTES = ("/frames", "/pdf", "/preview")
CLUSTER_INSTANCE_READS: ReadTable = tuple(
    (suffixes, weight) for suffixes, weight in INSTANCE_READS
    if not any(suffix.startswith(PARSED_DICOM_ROUTES) for suffix in suffixes))


def choose_read(rng: random.Random, level: Level, resource_id: str,
                instance_reads: ReadTable = INSTANCE_READS) -> Read:
    """A random GET of a cached route of the resource."""
    table = instance_reads if level is Level.INSTANCE else PARENT_READS
    suffixes = rng.choices([choices for choices, _ in table], [weight for _, weight in table])[0]
    suffix = rng.choice(suffixes)
    is_image = suffix.endswith(("preview", "rendered"))
    accept = rng.choice(_IMAGE_ACCEPTS) if is_image else None
    return Read("/%s/%s%s" % (level.value, resource_id, suffix), accept)


def route_name(read: Read) -> str:
    """``studies/shared-tags``-like name of the cached route that ``read`` hits."""
    found = match(read.path.split("?")[0])
    return "%s/%s" % (found[0].level.value, found[0].name) if found else "?"


def unordered_zip(answer: Exchange) -> Exchange:
    """A zip listing made independent of the order of the files.

    Orthanc numbers the files of an archive or media (``CT000001.dcm``,
    ``IMAGES/IM1``) in the order its database lists instances, which differs
    between SQLite and PostgreSQL: only each file's folder and CRC are kept.
    """
    header, _, listing = answer.body.partition(b"\n")
    if header != b"zip entries:":
        return answer
    entries = sorted(b"%s/ %s" % (name.rpartition(b"/")[0], crc) if crc != b"-" else line
                     for line in listing.splitlines()
                     for name, _, crc in [line.rpartition(b" ")])
    return dataclasses.replace(answer, body=b"zip entries, any order:\n" + b"\n".join(entries))


@dataclass(frozen=True)
class SeenETag:
    """The ETag of a plugin answer taken while its resource had settled."""

    step: int
    event: int
    etag: str
    touches: int  # how many writes had touched the resource then (FreshnessRun.writes_on)


@dataclass(frozen=True)
class Served:
    """A 200 the plugin gave: what a client holds with its validators."""

    step: int
    event: int
    etag: Optional[str]
    last_modified: Optional[str]
    answer: Exchange
    fresh: bool  # plain Orthanc's answer at the time


# -- Outcome -------------------------------------------------------------------------


def brief(answer: Exchange, limit: int = 160) -> str:
    """Status, compared headers and the body, cut when long (the diff shows the rest)."""
    headers = ", ".join("%s: %s" % item for item in answer.headers if item[1] is not None)
    body = answer.body if len(answer.body) <= limit else \
        answer.body[:limit] + b"... (%d bytes)" % len(answer.body)
    return "%d [%s] %r" % (answer.status, headers, body)


def body_diff(old: Exchange, new: Exchange, limit: int = 16) -> List[str]:
    """The first lines of a diff between two text bodies (nothing for binary ones)."""
    try:
        old_lines = old.body.decode("utf-8").splitlines()
        new_lines = new.body.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return []
    diff = list(difflib.unified_diff(old_lines, new_lines, "client's body", "plain's body",
                                     n=1, lineterm=""))
    return diff[:limit] + (["..."] if len(diff) > limit else [])


@dataclass
class Violation:
    """A stale body or a wrong 304, with what is needed to understand and replay it."""

    kind: str
    step: int
    node: str
    read: Read
    sent: Dict[str, str]
    plugin: Optional[Exchange]  # None for a 304
    plain: Exchange
    held: Optional[Served]
    diagnosis: str
    history_tail: List[str]

    def describe(self, seed: str, operations: int) -> str:
        """A self-contained reproduction report."""
        lines = [
            "%s at step %d (seed %r, %d operations asked)" % (self.kind.upper(), self.step, seed,
                                                              operations),
            "  GET %s on node %s, headers %s" % (self.read, self.node, self.sent or "{}"),
            "  plugin: %s" % ("304 Not Modified" if self.plugin is None else brief(self.plugin)),
            "  plain:  %s" % brief(self.plain),
        ]
        if self.held is not None:
            lines.append("  held by the client (plugin's 200 of step %d, ETag %s, "
                         "Last-Modified %s):"
                         % (self.held.step, self.held.etag, self.held.last_modified))
            lines.append("          %s" % brief(self.held.answer))
        lines.append("  diagnosis: " + self.diagnosis)
        client_copy = self.plugin if self.plugin is not None else \
            self.held.answer if self.held is not None else None
        if client_copy is not None:
            lines.extend("  " + line for line in body_diff(client_copy, self.plain))
        lines.append("  replay: FRESHNESS_SEED=%s FRESHNESS_OPERATIONS=%d pytest "
                     "tests/integration/test_freshness_model.py (timing-dependent: same-second "
                     "effects may need a few tries)" % (seed, self.step + 1))
        lines.append("  last operations:")
        lines.extend("    " + line for line in self.history_tail)
        return "\n".join(lines)


@dataclass
class Report:
    """Counts of one run, and its violations (the first one only unless ``keep_going``)."""

    seed: str
    asked: int
    operations: int = 0
    writes: collections.Counter[str] = field(default_factory=collections.Counter)
    reads: int = 0
    conditional_reads: int = 0
    not_modified: int = 0
    routes_read: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    warm_ups: int = 0
    warmed_answers: int = 0
    #: ETags of answers taken while their resource had settled, and how many of them were
    #: compared with the ETag of an earlier settled answer (same URL, Accept and node, no
    #: write touching the resource in between).
    settled_etags: int = 0
    etag_checks: int = 0
    violations: List[Violation] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """How many violations of ``kind`` were found."""
        return sum(1 for violation in self.violations if violation.kind == kind)

    def summary(self) -> str:
        """One paragraph of counts."""
        writes = ", ".join("%s %d" % item for item in sorted(self.writes.items()))
        outcomes = ", ".join("%s %d" % item for item in sorted(self.outcomes.items()))
        by_route = collections.Counter(route_name(v.read) for v in self.violations)
        return "\n".join([
            "freshness run, seed %r: %d of %d operations" % (
                self.seed, self.operations, self.asked),
            "  writes: %s" % writes,
            "  reads: %d (%d conditional, %d answered 304)" % (
                self.reads, self.conditional_reads, self.not_modified),
            "  plugin outcomes (all GETs in the logs): %s" % outcomes,
            "  warm-up: %d resources, %d answers stored" % (self.warm_ups, self.warmed_answers),
            "  routes read: %s" % ", ".join(
                "%s %d" % item for item in sorted(self.routes_read.items())),
            "  etag checks: %d (of %d settled answers), changed: %d" % (
                self.etag_checks, self.settled_etags, self.count("changed etag")),
            "  stale bodies: %d, wrong 304s: %d%s" % (
                self.count("stale body"), self.count("wrong 304"),
                "" if not by_route else " (violations by route: %s)" % ", ".join(
                    "%s %d" % item for item in sorted(by_route.items()))),
        ])

    def failure_message(self) -> str:
        """The summary, then the first violation of each kind in full."""
        firsts: Dict[str, Violation] = {}
        for violation in self.violations:
            firsts.setdefault(violation.kind, violation)
        return "\n\n".join([self.summary()] + [
            violation.describe(self.seed, self.asked) for violation in firsts.values()])


# -- The run -------------------------------------------------------------------------


def _housekeeper_done(server: OrthancServer, syntax: str) -> bool:
    """Whether ``server``'s Housekeeper has finished processing with ``syntax`` as
    IngestTranscoding."""
    status = server.get("/plugins/housekeeper/status").json()
    finished = status.get("LastProcessedConfiguration") or {}
    return (status.get("CurrentlyProcessingConfiguration") is None
            and syntax in json.dumps(finished))


class FreshnessRun:
    """Random operations on ``targets`` (plugin nodes) checked against ``reference``."""

    #: Relative weights of the operations (besides the scheduled quiet phases).
    WEIGHTS: Mapping[str, int] = {
        "read": 35,
        "read again": 20,
        "read deleted": 4,
        "pause": 2,
        "upload patient": 2,
        "upload study": 2,
        "upload series": 3,
        "upload instance": 7,
        "overwrite instance": 3,
        "re-create deleted instance": 2,
        "delete": 7,
        "put metadata": 6,
        "delete metadata": 3,
        "put attachment": 6,
        "delete attachment": 3,
        # Writes that touch no cached answer (docs/freshness.md), on Orthancs that have them.
        "put label": 2,
        "delete label": 1,
        "echo": 2,
        "query": 2,
        # Touches the resource, everything below it and its ancestors (Orthanc 1.11+).
        "reconstruct": 2,
        # Every server restarted with another IngestTranscoding: the Housekeeper rewrites
        # every file, telling no one (only with ``housekeeper=True``).
        "housekeeper rewrite": 1,
    }
    #: Chance that a write is framed by reads of a resource it affects, just before and
    #: just after it (same second, no sleep), the second one conditional on the first.
    PROBE_CHANCE = 0.7
    #: Chance that a read sends validators from an earlier 200 of the same URL.
    CONDITIONAL_CHANCE = 0.35
    #: How many operations a failure report shows.
    TAIL = 25
    #: Seconds of a pause: time for resources to become stable (warm-up) and answers to
    #: settle, so that stored answers are served and 304s given after writes stop.
    PAUSES = (0.5, 1.2, 2.5)
    #: How many of the latest distinct reads "read again" picks from.
    RECENT = 30
    #: Every QUIET_EVERY steps (from the middle of the first period), a quiet phase: no write
    #: for QUIET_SECONDS, longer than any delay the plugin may wait before it trusts a version,
    #: then the recent reads twice, so that settled answers are stored (and served) before
    #: the next writes test their invalidation.
    QUIET_EVERY = 120
    QUIET_SECONDS = 15.0
    #: Seconds after the end of a write until the resources it touched have settled, as far
    #: as the ETag check is concerned: GRACE + SETTLE (5 s) for a write the plugin sees
    #: announced or in a change event (another node: within 1 s, SETTLE after), SETTLE
    #: (3 s) after a new instance; plus a margin.
    TOUCH_SETTLE = 6.0
    UPLOAD_SETTLE = 4.0

    def __init__(self, seed: str, reference: OrthancServer, targets: Sequence[OrthancServer],
                 keep_going: bool = False, instance_reads: ReadTable = INSTANCE_READS,
                 other_node_delay: float = 0.0, housekeeper: bool = False):
        """``targets`` are plugin nodes sharing one database (one node, or a cluster:
        then pass ``instance_reads=CLUSTER_INSTANCE_READS``); ``reference`` is a plain
        Orthanc with its own database; ``keep_going`` counts every violation instead
        of stopping at the first one; a read on another node than the last write's
        waits until ``other_node_delay`` seconds have passed since that write (the
        bound docs/freshness.md states for changes made through another node);
        ``housekeeper`` says that every server loads the Housekeeper plugin with
        HOUSEKEEPER_CONFIG, so that "housekeeper rewrite" may restart them."""
        if not targets:
            raise ValueError("at least one plugin node is needed")
        self.seed = seed
        self.rng = random.Random(seed)
        # Nodes are drawn apart, so that a seed gives the same operations on any number of nodes.
        self._node_rng = random.Random(seed + "/nodes")
        self.reference = reference
        self.targets = list(targets)
        self.keep_going = keep_going
        self.instance_reads = instance_reads
        self.other_node_delay = other_node_delay
        self.housekeeper = housekeeper
        self._transcodings = 0  # "housekeeper rewrite" operations so far
        self._last_write: Tuple[str, float] = ("", 0.0)  # node, time.monotonic()
        self.tree = Tree()
        self.series_recipes: Dict[str, SeriesRecipe] = {}
        self.instance_recipes: Dict[str, Tuple[str, InstanceRecipe]] = {}  # id → (series, recipe)
        self.deleted: Deque[Node] = collections.deque(maxlen=40)
        self.graveyard: Dict[str, Tuple[SeriesRecipe, InstanceRecipe]] = {}
        self.served: Dict[Read, List[Served]] = collections.defaultdict(list)
        #: Plain Orthanc's successive answers per read: (step, event, answer).
        self.plain_history: Dict[Read, List[Tuple[int, int, Exchange]]] = \
            collections.defaultdict(list)
        #: Writes per resource id (on it or below it): (step, event, description).
        self.writes_on: Dict[str, List[Tuple[int, int, str]]] = collections.defaultdict(list)
        #: Every write: (step, event, description).
        self.write_log: List[Tuple[int, int, str]] = []
        #: When (time.monotonic()) each resource touched has settled again.
        self._settled_from: Dict[str, float] = {}
        self._touched_now: Dict[str, float] = {}  # by the write in progress: id → seconds
        self._started = 0.0  # time.monotonic() at the start of the run
        #: The latest settled ETag per (read, node).
        self.etags: Dict[Tuple[Read, str], SeenETag] = {}
        self._event = 0  # numbers every read and write, in order
        self._writing = ""  # description of the write in progress
        self.recent: Dict[Read, None] = {}  # an ordered set, oldest first
        self.log: Deque[str] = collections.deque(maxlen=self.TAIL)
        self.step = 0
        self._serial = 0
        self.report = Report(seed, 0)
        self._writes: Mapping[str, Callable[[], None]] = {
            "upload patient": self._upload_patient,
            "upload study": self._upload_study,
            "upload series": self._upload_series,
            "upload instance": self._upload_instance,
            "overwrite instance": self._overwrite_instance,
            "re-create deleted instance": self._re_create_deleted_instance,
            "delete": self._delete,
            "put metadata": self._put_metadata,
            "delete metadata": self._delete_metadata,
            "put attachment": self._put_attachment,
            "delete attachment": self._delete_attachment,
            "put label": lambda: self._label("PUT"),
            "delete label": lambda: self._label("DELETE"),
            "echo": lambda: self._network("echo", {}),
            "query": lambda: self._network("query", {"Level": "Study",
                                                     "Query": {"PatientID": "PAT-*"}}),
            "reconstruct": self._reconstruct,
            "housekeeper rewrite": self._housekeeper_rewrite,
        }
        #: Writes that the servers' Orthanc lacks (see _unsupported_writes()).
        self.unsupported: Set[str] = set()

    # -- driving ---------------------------------------------------------------

    def run(self, operations: int) -> Report:
        """Run ``operations`` steps (fewer if a violation stops it); returns the report."""
        self.report.asked = operations
        for target in self.targets:
            target.wait_for_log(r"cache plugin: version \S+ active")
        self.unsupported = self._unsupported_writes()
        self._started = time.monotonic()
        for self.step in range(operations):
            self._operate(self._choose_operation())
            self.report.operations += 1
            if self.report.violations and not self.keep_going:
                break
        self._read_logs()
        return self.report

    def _choose_operation(self) -> str:
        if self.step % self.QUIET_EVERY == self.QUIET_EVERY // 2:
            return "quiet"
        if not self.tree.nodes:
            return "upload patient"
        feasible = {name: weight for name, weight in self.WEIGHTS.items()
                    if (name != "read deleted" or self.deleted)
                    and (name != "read again" or self.recent)
                    and (name != "re-create deleted instance" or self.graveyard)
                    and name not in self.unsupported}
        return self.rng.choices(list(feasible), list(feasible.values()))[0]

    def _operate(self, name: str) -> None:
        if name == "read":
            level = self.rng.choice(_CHAIN)
            self._check(self._choose_read(level, self.rng.choice(self.tree.ids(level))))
        elif name == "read again":
            self._check(self.rng.choice(list(self.recent)))
        elif name == "quiet":
            self._note("quiet for %.0f s" % self.QUIET_SECONDS)
            time.sleep(self.QUIET_SECONDS)
            for read in list(self.recent) * 2:
                self._check(read)
        elif name == "pause":
            seconds = self.rng.choice(self.PAUSES)
            self._note("pause %.1f s" % seconds)
            time.sleep(seconds)
        elif name == "read deleted":
            node = self.rng.choice(list(self.deleted))
            self._note("read a deleted resource")
            self._check(self._choose_read(node.level, node.id))
        else:
            self.report.writes[name] += 1
            self._writes[name]()

    def _unsupported_writes(self) -> Set[str]:
        """The operations that some server's Orthanc does not have: labels before 1.12
        (or with a database plugin without them), reconstructions before 1.11,
        a Housekeeper rewrite unless every server loads the Housekeeper."""
        unsupported = set() if self.housekeeper else {"housekeeper rewrite"}
        for server in [self.reference] + self.targets:
            system = server.get("/system").json()
            if system.get("ApiVersion", 0) < 20 or not system.get("HasLabels", False):
                unsupported.update(("put label", "delete label"))
            version = re.findall(r"\d+", str(system.get("Version", "")))
            if len(version) >= 2 and (int(version[0]), int(version[1])) < (1, 11):
                unsupported.add("reconstruct")
        return unsupported

    def _choose_read(self, level: Level, resource_id: str) -> Read:
        return choose_read(self.rng, level, resource_id, self.instance_reads)

    def _note(self, text: str) -> int:
        """Log one read or write; returns its event number."""
        self._event += 1
        self.log.append("step %d: %s" % (self.step, text))
        return self._event

    def _touch(self, resource_ids: Sequence[str], settle: Optional[float] = None) -> None:
        """Record that the write in progress changes these resources (touches them, as
        docs/freshness.md says): their answers and ETags may change, and they settle
        ``settle`` seconds (default TOUCH_SETTLE) after the end of the write."""
        seconds = self.TOUCH_SETTLE if settle is None else settle
        for resource_id in resource_ids:
            self.writes_on[resource_id].append((self.step, self._event, self._writing))
            self._touched_now[resource_id] = max(seconds, self._touched_now.get(resource_id, 0))

    def _node(self) -> Tuple[str, OrthancServer]:
        index = self._node_rng.randrange(len(self.targets))
        return "ABCDEFGH"[index], self.targets[index]

    # -- writes ------------------------------------------------------------------

    def _framed(self, affected: Sequence[Node], description: str, write: Callable[[], Any]) -> None:
        """Run ``write()``, maybe between two reads of one affected resource's route."""
        probe = None
        if self.rng.random() < self.PROBE_CHANCE and affected:
            node = self.rng.choice(list(affected))
            probe = self._choose_read(node.level, node.id)
            self._check(probe, conditional=False)
        self.write_log.append((self.step, self._note(description), description))
        self._writing = description
        try:
            write()
        finally:
            done = time.monotonic()
            for resource_id, seconds in self._touched_now.items():
                self._settled_from[resource_id] = max(
                    done + seconds, self._settled_from.get(resource_id, 0.0))
            self._touched_now = {}
        if probe is not None:
            self._check(probe, conditional=self.rng.random() < 0.5)

    def _send(self, method: str, path: str, data: Optional[bytes] = None) -> requests.Response:
        """Apply one write to the reference and to a random target; their statuses must agree."""
        name, target = self._node()
        plain = self.reference.request(method, path, data=data)
        plugin = target.request(method, path, data=data)
        self._last_write = (name, time.monotonic())
        if plain.status_code != plugin.status_code:
            raise ModelDiverged("%s %s: plain %d, node %s %d\n%s" % (
                method, path, plain.status_code, name, plugin.status_code, "\n".join(self.log)))
        return plain

    def _store(self, series: SeriesRecipe, instance: InstanceRecipe) -> None:
        """Upload one instance to the reference and to a random target."""
        dicom = encode(series, instance)
        name, target = self._node()
        answers = [self.reference.upload(dicom), target.upload(dicom)]
        self._last_write = (name, time.monotonic())
        ids = [tuple(answer[key] for key in _UPLOAD_PARENT_KEYS) for answer in answers]
        if ids[0] != ids[1]:
            raise ModelDiverged("same file, other ids: plain %s, node %s %s"
                                % (ids[0], name, ids[1]))
        # An overwrite's DELETED event touches the instance and its ancestors a moment later.
        overwrite = answers[0]["ID"] in self.tree.nodes
        self.tree.add(answers[0])
        self._touch(ids[0], settle=self.TOUCH_SETTLE if overwrite else self.UPLOAD_SETTLE)
        self.series_recipes[answers[0]["ParentSeries"]] = series
        self.instance_recipes[answers[0]["ID"]] = (answers[0]["ParentSeries"], instance)
        self.graveyard.pop(answers[0]["ID"], None)

    def _new_uid(self, kind: str) -> str:
        self._serial += 1
        return make_uid(self.seed, kind, self._serial)

    def _new_instance(self) -> InstanceRecipe:
        self._serial += 1
        return InstanceRecipe(make_uid(self.seed, "instance", self._serial), self._serial,
                              frames=self.rng.choice((1, 1, 2)), rgb=self.rng.random() < 0.15)

    def _new_series(self, patient_id: str, patient_name: str, study_uid: str) -> SeriesRecipe:
        self._serial += 1
        return SeriesRecipe(patient_id, patient_name, study_uid, self._new_uid("series"),
                            self._serial, pdf=self.rng.random() < 0.1)

    def _upload_instances(self, series: SeriesRecipe, count: int, description: str,
                          affected: Sequence[Node]) -> None:
        def write() -> None:
            for _ in range(count):
                self._store(series, self._new_instance())
        self._framed(affected, "%s (%d instances)" % (description, count), write)

    def _upload_patient(self) -> None:
        self._serial += 1
        patient_id = "PAT-%s-%d" % (self.seed, self._serial)
        series = self._new_series(patient_id, "Model^%d" % self._serial, self._new_uid("study"))
        self._upload_instances(series, self.rng.randint(1, 3), "upload new patient " + patient_id,
                               ())

    def _upload_study(self) -> None:
        patient = self.rng.choice(self.tree.ids(Level.PATIENT))
        known = self._series_recipe_below(patient)
        series = self._new_series(known.patient_id, known.patient_name, self._new_uid("study"))
        self._upload_instances(series, self.rng.randint(1, 2),
                               "upload new study into patient " + patient,
                               self.tree.lineage(patient))

    def _upload_series(self) -> None:
        study = self.rng.choice(self.tree.ids(Level.STUDY))
        known = self._series_recipe_below(study)
        series = self._new_series(known.patient_id, known.patient_name, known.study_uid)
        self._upload_instances(series, self.rng.randint(1, 2),
                               "upload new series into study " + study, self.tree.lineage(study))

    def _upload_instance(self) -> None:
        series = self.rng.choice(self.tree.ids(Level.SERIES))
        recipe = self.series_recipes[series]
        self._framed(self.tree.lineage(series), "upload new instance into series " + series,
                     lambda: self._store(recipe, self._new_instance()))

    def _overwrite_instance(self) -> None:
        instance = self.rng.choice(self.tree.ids(Level.INSTANCE))
        series, old = self.instance_recipes[instance]
        self._serial += 1
        new = InstanceRecipe(old.sop_uid, self._serial, self.rng.choice((1, 2)), old.rgb)
        self._framed(self.tree.lineage(instance),
                     "overwrite instance %s (revision %d -> %d, %d frames)"
                     % (instance, old.revision, new.revision, new.frames),
                     lambda: self._store(self.series_recipes[series], new))

    def _re_create_deleted_instance(self) -> None:
        instance = self.rng.choice(sorted(self.graveyard))
        series, old = self.graveyard[instance]
        self._serial += 1
        new = InstanceRecipe(old.sop_uid, self._serial, old.frames, old.rgb)
        deleted_node = next((node for node in self.deleted if node.id == instance), None)
        self._framed([deleted_node] if deleted_node else [],
                     "re-create deleted instance %s with other content (revision %d)"
                     % (instance, new.revision),
                     lambda: self._store(series, new))

    def _delete(self) -> None:
        level = self.rng.choices(_CHAIN, (1, 2, 3, 6))[0]
        resource = self.rng.choice(self.tree.ids(level))
        affected = self.tree.lineage(resource)

        def write() -> None:
            self._touch([node.id for node in affected + self.tree.subtree(resource)[1:]])
            answer = self._send("DELETE", "/%s/%s" % (level.value, resource))
            removed, remaining = self.tree.remove(resource)
            reported = (answer.json().get("RemainingAncestor") or {}).get("ID")
            if reported != remaining:
                raise ModelDiverged("deleting %s %s left %s, the model expected %s" % (
                    level.value, resource, reported, remaining))
            for node in removed:
                self.deleted.append(node)
                if node.level is Level.INSTANCE:
                    series, recipe = self.instance_recipes.pop(node.id)
                    self.graveyard[node.id] = (self.series_recipes[series], recipe)

        self._framed(affected, "delete %s %s" % (level.value, resource), write)

    def _change(self, method: str, suffix: str, data: Optional[bytes] = None) -> None:
        """A metadata or attachment write on a random resource, maybe between two reads of it."""
        level = self.rng.choice(_CHAIN)
        resource = self.rng.choice(self.tree.ids(level))
        path = "/%s/%s%s" % (level.value, resource, suffix)

        def write() -> None:
            self._touch([node.id for node in self.tree.lineage(resource)])
            self._send(method, path, data)

        description = "%s %s" % (method, path) + ("" if data is None else " %r" % data)
        self._framed([self.tree.nodes[resource]], description, write)

    def _put_metadata(self) -> None:
        name = self.rng.choice(USER_METADATA)
        self._change("PUT", "/metadata/" + name, b"value of step %d" % self.step)

    def _delete_metadata(self) -> None:
        self._change("DELETE", "/metadata/" + self.rng.choice(USER_METADATA))

    def _put_attachment(self) -> None:
        self._change("PUT", "/attachments/" + ATTACHMENT, b"note of step %d" % self.step)

    def _delete_attachment(self) -> None:
        self._change("DELETE", "/attachments/" + ATTACHMENT)

    def _label(self, method: str) -> None:
        """A label set or removed on a random resource: it touches no cached answer."""
        level = self.rng.choice(_CHAIN)
        resource = self.rng.choice(self.tree.ids(level))
        path = "/%s/%s/labels/%s" % (level.value, resource, self.rng.choice(LABELS))
        self._framed([self.tree.nodes[resource]], "%s %s" % (method, path),
                     lambda: self._send(method, path, b""))

    def _network(self, operation: str, body: Dict[str, Any]) -> None:
        """A C-ECHO or a query to a modality where nobody listens (it fails): it touches
        no cached answer; framed by reads of a random resource."""
        level = self.rng.choice(_CHAIN)
        node = self.tree.nodes[self.rng.choice(self.tree.ids(level))]
        path = "/modalities/%s/%s" % (MODALITY, operation)
        data = json.dumps(body).encode("utf-8")
        self._framed([node], "POST %s %s" % (path, data.decode("utf-8")),
                     lambda: self._send("POST", path, data))

    def _reconstruct(self) -> None:
        """``POST /{level}/{id}/reconstruct``: touches the resource, its subtree and its
        ancestors; sometimes rewriting the files too (``ReconstructFiles``)."""
        level = self.rng.choice(_CHAIN)
        resource = self.rng.choice(self.tree.ids(level))
        path = "/%s/%s/reconstruct" % (level.value, resource)
        data = b'{"ReconstructFiles": true}' if self.rng.random() < 0.3 else b"{}"
        affected = self.tree.lineage(resource)

        def write() -> None:
            self._touch([node.id for node in affected + self.tree.subtree(resource)[1:]])
            self._send("POST", path, data)

        self._framed(affected, "POST %s %s" % (path, data.decode("utf-8")), write)

    def _housekeeper_rewrite(self) -> None:
        """Every server restarted with the next ``IngestTranscoding``: the Housekeeper
        transcodes every stored file, with no change event, no new ``LastUpdate`` and
        nothing in /changes.  It touches every resource; the write ends when every
        Housekeeper is done (what it shows on the way is test_housekeeper.py's)."""
        syntax = INGEST_TRANSCODINGS[self._transcodings % len(INGEST_TRANSCODINGS)]
        self._transcodings += 1
        servers = [self.reference] + self.targets

        def write() -> None:
            self._touch(list(self.tree.nodes))
            for server in servers:
                server.stop()
            for server in servers:
                server.config["IngestTranscoding"] = syntax
                server.start()
            deadline = time.monotonic() + 120
            while not all(_housekeeper_done(server, syntax) for server in servers):
                if time.monotonic() > deadline:
                    raise ModelDiverged("the Housekeeper did not finish transcoding to " + syntax)
                time.sleep(0.2)
            # Proof that the files were rewritten (else this operation tests nothing).
            for instance in self.tree.ids(Level.INSTANCE)[:3]:
                found = self.reference.get("/instances/%s/metadata/TransferSyntax" % instance)
                if found.text != syntax:
                    raise ModelDiverged("instance %s is in %s after the Housekeeper's rewrite "
                                        "to %s" % (instance, found.text, syntax))

        # The answers a rewrite changes are the stored file's (/file, /header; archives
        # too, which Orthanc 1.13 leaves uncached): read some once settled, so that they
        # are stored (and served) before, read them right after, and once more when what
        # the rewrite touched has settled.
        instances = self.tree.ids(Level.INSTANCE)
        files = [Read("/instances/%s%s" % (instance, suffix))
                 for instance in self.rng.sample(instances, min(2, len(instances)))
                 for suffix in ("/file", "/header")]
        self._note("pause %.1f s: earlier writes settle" % self.TOUCH_SETTLE)
        time.sleep(self.TOUCH_SETTLE)
        for read in files * 2:
            self._check(read, conditional=False)
        affected = [self.tree.nodes[self.rng.choice(sorted(self.tree.nodes))]]
        self._framed(affected, "restart every server with IngestTranscoding %s: the "
                     "Housekeeper rewrites every file" % syntax, write)
        for read in files:
            self._check(read, conditional=True)
        self._note("pause %.1f s: what the rewrite touched settles" % self.TOUCH_SETTLE)
        time.sleep(self.TOUCH_SETTLE)
        for read in files * 2:
            self._check(read, conditional=True)

    def _series_recipe_below(self, resource_id: str) -> SeriesRecipe:
        instance = self.tree.any_instance_below(resource_id)
        return self.series_recipes[self.instance_recipes[instance][0]]

    # -- reads -------------------------------------------------------------------

    def _validators(self, read: Read) -> Tuple[Dict[str, str], Optional[Served]]:
        """Conditional headers from an earlier 200 of the plugin (mostly the latest).

        The random draws do not depend on the plugin's answers, so that a seed
        gives the same operations whatever the plugin does.
        """
        latest, position = self.rng.random() < 0.6, self.rng.random()
        style = self.rng.choices(("etag", "date", "both"), (5, 3, 2))[0]
        earlier = self.served.get(read)
        if not earlier:
            return {}, None
        held = earlier[-1] if latest else earlier[int(position * len(earlier))]
        headers = {}
        if style in ("etag", "both") and held.etag:
            headers["If-None-Match"] = held.etag
        if style in ("date", "both") and held.last_modified:
            headers["If-Modified-Since"] = held.last_modified
        return headers, (held if headers else None)

    def _comparable(self, server: OrthancServer, read: Read,
                    response: requests.Response) -> Exchange:
        """The oracle's view; a file's name (the attachment's uuid, random per server) renamed."""
        renamings: Dict[str, str] = {}
        if read.path.endswith("/file") and response.status_code == 200:
            instance = read.path.split("/")[2]
            renamings = attachment_names(server.get, {instance: instance})
        return unordered_zip(exchange(response, renamings))

    def _check(self, read: Read, conditional: Optional[bool] = None) -> None:
        """One read on a random node, compared with plain Orthanc's current answer."""
        if conditional is None:
            conditional = self.rng.random() < self.CONDITIONAL_CHANCE
        sent, held = self._validators(read) if conditional else ({}, None)
        name, target = self._node()
        writer, written_at = self._last_write
        if writer and writer != name:
            time.sleep(max(0.0, written_at + self.other_node_delay - time.monotonic()))
        headers = dict(_BASE_HEADERS)
        if read.accept is not None:
            headers["Accept"] = read.accept
        requested = time.monotonic()
        response = target.get(read.path, headers=dict(headers, **sent), allow_redirects=False)
        expected = self.reference.get(read.path, headers=headers, allow_redirects=False)
        plain = self._comparable(self.reference, read, expected)
        self.report.reads += 1
        self.recent.pop(read, None)
        self.recent[read] = None
        if len(self.recent) > self.RECENT:
            del self.recent[next(iter(self.recent))]
        self.report.routes_read[route_name(read)] += 1
        self.report.conditional_reads += bool(sent)
        event = self._note("GET %s on %s%s -> %d" % (
            read, name, "" if not sent else " with %s of step %d" % ("/".join(sent), held.step),
            response.status_code))
        history = self.plain_history[read]
        if not history or history[-1][2] != plain:
            history.append((self.step, event, plain))

        if response.status_code in (200, 304) and "ETag" in response.headers:
            self._check_etag(name, target, read, response, requested, event)
        if response.status_code == 304:
            self.report.not_modified += 1
            if held is None:
                self._violation("wrong 304", name, read, sent, None, plain, None,
                                "a 304 to an unconditional request")
            elif held.answer != plain and not held.fresh:
                self._violation("wrong 304", name, read, sent, None, plain, held,
                                "the client's copy is the plugin's stale answer of step %d"
                                % held.step)
            elif held.answer != plain:
                self._violation("wrong 304", name, read, sent, None, plain, held,
                                "the client's copy (step %d) is no longer plain Orthanc's "
                                "answer; %s" % (held.step, self._writes_since(read, held.event)))
            return
        actual = self._comparable(target, read, response)
        if actual != plain:
            earlier = [(step, at) for step, at, answer in history if answer == actual]
            if earlier:
                diagnosis = "the plugin served plain Orthanc's answer of step %d; %s" % (
                    earlier[-1][0], self._writes_since(read, earlier[-1][1]))
            else:
                diagnosis = ("not an answer plain Orthanc gave to this test's reads: a state "
                             "it did not read (stored by warm-up?) or a fidelity bug; "
                             + self._writes_since(read, 0))
            self._violation("stale body", name, read, sent, actual, plain, held, diagnosis)
        if response.status_code == 200 and "ETag" in response.headers:
            self.served[read].append(Served(self.step, event, response.headers["ETag"],
                                            response.headers.get("Last-Modified"), actual,
                                            fresh=actual == plain))

    def _check_etag(self, name: str, target: OrthancServer, read: Read,
                    response: requests.Response, requested: float, event: int) -> None:
        """The ETag of an answer taken while its resource had settled is the one of the
        latest such answer, unless a write touched the resource in between."""
        resource = read.path.split("/")[2]
        settled_from = max(self._settled_from.get(resource, 0.0),
                           self._started + self.TOUCH_SETTLE)
        if requested < settled_from:
            return
        self.report.settled_etags += 1
        etag = response.headers["ETag"]
        touches = len(self.writes_on[resource])
        earlier = self.etags.get((read, name))
        self.etags[(read, name)] = SeenETag(self.step, event, etag, touches)
        if earlier is None or earlier.touches != touches:
            return
        self.report.etag_checks += 1
        if etag == earlier.etag:
            return
        between = [(step, description) for step, at, description in self.write_log
                   if earlier.event < at < event]
        touched = self.writes_on[resource][-1:]
        uri = read.path.split("?")[0]
        decisions = re.findall(r"[^\n]*cache plugin: [A-Z-]+ GET %s: [^\n]*" % re.escape(uri),
                               target.log_text())
        diagnosis = (
            "the ETag of this settled answer was %s at step %d (settled too), and no write "
            "touched the resource since%s; %d writes elsewhere in between: %s; the node's "
            "latest decisions for %s:\n      %s" % (
                earlier.etag, earlier.step, "" if not touched else
                " (its last one: step %d: %s)" % (touched[0][0], touched[0][2]),
                len(between), "; ".join("step %d: %s" % write for write in between[-8:])
                or "none", uri, "\n      ".join(decisions[-4:])))
        plain = self._comparable(self.reference, read, self.reference.get(
            read.path, headers=dict(_BASE_HEADERS, **({} if read.accept is None
                                                      else {"Accept": read.accept}))))
        plugin = None if response.status_code == 304 else \
            self._comparable(target, read, response)
        self._violation("changed etag", name, read, {}, plugin, plain, None,
                        "ETag %s: %s" % (etag, diagnosis))

    def _writes_since(self, read: Read, event: int) -> str:
        """The writes that changed the read's resource after ``event``."""
        writes = [(step, description) for step, at, description
                  in self.writes_on[read.path.split("/")[2]] if at > event]
        if not writes:
            return "no write changed the resource since"
        return "last writes on the resource since: " + "; ".join(
            "step %d: %s" % write for write in writes[-5:])

    def _violation(self, kind: str, node: str, read: Read, sent: Dict[str, str],
                   plugin: Optional[Exchange],
                   plain: Exchange, held: Optional[Served], diagnosis: str) -> None:
        self.report.violations.append(Violation(kind, self.step, node, read, sent, plugin, plain,
                                                held, diagnosis, list(self.log)))

    def _read_logs(self) -> None:
        """Plugin outcomes and warm-ups, from the nodes' logs."""
        for target in self.targets:
            text = target.log_text()
            self.report.outcomes.update(_OUTCOME.findall(text))
            stored = [int(count) for count in _WARM_UP.findall(text)]
            self.report.warm_ups += len(stored)
            self.report.warmed_answers += sum(stored)
