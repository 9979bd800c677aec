"""Freshness: after any change, cached routes answer what Orthanc answers now.

Each test first makes the plugin store answers (the resource has settled and
a second GET is a HIT), then changes something that LastUpdate does not show
(or shows within the same second), and checks that the next GET is fresh and
that validators taken before the change give no 304 — at once on the node
that made the change, within the stated bound on another node.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import requests

from orthanc_cache_plugin.core.data import Outcome
from support.dicom_factory import make_instance, make_study
from support.orthanc_server import OrthancServer, free_port

#: Also run on Debian 12's Orthanc 1.10.1 (scripts/test.sh).
pytestmark = pytest.mark.old_stack

#: As browsers and viewers ask (requests decodes the gzip answers): freshness is that of the
#: one stored entry both codings come from, and identity clients are tested elsewhere.
BROWSER = {"Accept-Encoding": "gzip, deflate, br"}
#: freshness.SETTLE + freshness.GRACE: after a write, answers are stored again.
QUIET = 5.2
#: freshness.SETTLE: after a new instance, answers are stored again.
SETTLE_AFTER_UPLOAD = 3.2
#: The bound stated in docs/freshness.md for changes made through another node.
OTHER_NODE_BOUND = 1.0


def get(server: OrthancServer, path: str, **headers: str) -> requests.Response:
    return server.get(path, headers=dict(BROWSER, **headers))


def stored(server: OrthancServer, paths: List[str]) -> Dict[str, requests.Response]:
    """GET each path until the plugin serves it from its store (a parent's attachments:
    computed by Orthanc at each request, validated by content); the answers."""
    answers = {}
    for path in paths:
        get(server, path)
        answers[path] = get(server, path)
        assert server.outcomes(path)[-1] == kept(path), (path, server.outcomes(path))
    return answers


def kept(path: str) -> Outcome:
    """The outcome of a GET that the plugin answers without Orthanc: a hit, but for a
    parent's attachments, which Orthanc computes at each request."""
    return Outcome.MISS if path.endswith("/attachments") else Outcome.HIT


def assert_fresh(server: OrthancServer, before: Dict[str, requests.Response],
                 expected: Callable[[str], requests.Response]) -> None:
    """Every path answers like ``expected(path)``, and no earlier validator matches."""
    for path, old in before.items():
        now = get(server, path)
        truth = expected(path)
        assert (now.status_code, now.content) == (truth.status_code, truth.content), path
        for name, header in (("If-None-Match", "ETag"), ("If-Modified-Since", "Last-Modified")):
            conditional = get(server, path, **{name: old.headers[header]})
            assert conditional.status_code != 304, (path, name)


def upload(server: OrthancServer, seed: str, series: int = 2, instances: int = 2) -> List[dict]:
    uploaded = [server.upload(dicom) for dicom in make_study("PAT-" + seed, series, instances,
                                                             seed=seed)]
    time.sleep(QUIET)
    return uploaded


def parent_routes(study: str, series: str, patient: str) -> List[str]:
    return ["/%s/%s/%s" % (level, resource, route)
            for level, resource in (("studies", study), ("series", series), ("patients", patient))
            for route in ("shared-tags", "instances-tags", "instances-tags?short")]


def test_deleting_an_instance_refreshes_its_ancestors_at_once(cached_orthanc) -> None:
    server = cached_orthanc()
    instances = upload(server, "delete")
    first = instances[0]
    paths = parent_routes(first["ParentStudy"], first["ParentSeries"], first["ParentPatient"])
    before = stored(server, paths)
    assert server.delete("/instances/%s" % first["ID"]).status_code == 200
    assert_fresh(server, before, server.get)
    assert len(get(server, "/series/%s/instances-tags" % first["ParentSeries"]).json()) == 1
    # Once quiet again, answers are stored anew, at the new state.
    time.sleep(QUIET)
    again = stored(server, paths)
    assert len(again["/series/%s/instances-tags" % first["ParentSeries"]].json()) == 1


def test_on_one_node_the_change_log_is_plain_orthancs(cached_orthanc, orthanc_factory) -> None:
    """As Orthanc's own test_changes_2 checks: a deletion, metadata and reads log exactly
    what plain Orthanc logs (without a database plugin no other node shares the index,
    so the plugin logs nothing of its own)."""
    logs = []
    for server in (cached_orthanc(), orthanc_factory()):
        first, second = upload(server, "changes", series=1, instances=3)[:2]
        get(server, "/series/%s/shared-tags" % first["ParentSeries"])
        assert server.delete("/instances/%s" % first["ID"]).status_code == 200
        assert server.put("/instances/%s/metadata/1024" % second["ID"], data=b"x").ok
        time.sleep(QUIET)  # the plugin's reactions to the change events are done
        # (Orthanc drops the changes of deleted resources: the series stays.)
        changes = server.get("/changes?since=0&limit=1000").json()["Changes"]
        logs.append([(change["ChangeType"], change["ResourceType"]) for change in changes])
    assert ("UpdatedMetadata", "Instance") in logs[1]
    assert logs[0] == logs[1]


def test_a_deleted_resource_is_never_answered_from_the_store(cached_orthanc) -> None:
    server = cached_orthanc({"StoreBinary": True})
    first = upload(server, "gone")[0]
    paths = ["/instances/%s/%s" % (first["ID"], route) for route in ("tags", "preview", "file")]
    paths.append("/series/%s/shared-tags" % first["ParentSeries"])
    before = stored(server, paths)
    assert server.delete("/series/%s" % first["ParentSeries"]).status_code == 200
    for path, old in before.items():
        assert get(server, path).status_code == 404, path
        assert get(server, path, **{"If-None-Match": old.headers["ETag"]}).status_code == 404


def test_metadata_and_attachments_refresh_at_once(cached_orthanc) -> None:
    server = cached_orthanc()
    first = upload(server, "metadata")[0]
    instance, study = first["ID"], first["ParentStudy"]
    paths = ["/instances/%s/metadata" % instance, "/instances/%s/metadata?expand" % instance,
             "/studies/%s/attachments" % study]
    before = stored(server, paths)
    assert server.put("/instances/%s/metadata/1024" % instance, data="hello").status_code == 200
    assert server.put("/studies/%s/attachments/1030" % study, data="note").status_code == 200
    assert_fresh(server, before, server.get)
    assert "1024" in get(server, "/instances/%s/metadata" % instance).json()
    time.sleep(QUIET)
    before = stored(server, paths)
    assert server.delete("/instances/%s/metadata/1024" % instance).status_code == 200
    assert server.delete("/studies/%s/attachments/1030" % study).status_code == 200
    assert_fresh(server, before, server.get)


def test_writes_elsewhere_change_no_answer_and_no_etag(cached_orthanc) -> None:
    """Writes that touch other studies (an overwrite too), and writes that change no cached
    answer (network operations, finds, labels), leave a study's stored answers and ETags as
    they were; a write on the other study changes that study's ETags at once."""
    nowhere = ["NOWHERE", "127.0.0.1", free_port()]  # nobody listens: echo and query fail
    server = cached_orthanc(config={"DicomModalities": {"nowhere": nowhere},
                                    "OverwriteInstances": True})
    read = upload(server, "untouched")[0]
    other = upload(server, "touched")
    paths = parent_routes(read["ParentStudy"], read["ParentSeries"], read["ParentPatient"])
    paths += ["/instances/%s/%s" % (read["ID"], route) for route in ("tags", "metadata")]
    paths.append("/studies/%s/attachments" % read["ParentStudy"])
    other_path = "/studies/%s/shared-tags" % other[0]["ParentStudy"]
    before = stored(server, paths + [other_path])
    # (method, path, body, whether it touches the other study)
    writes: List[Tuple[str, str, dict, bool]] = [
        ("PUT", "/instances/%s/metadata/1024" % other[0]["ID"], {"data": b"x"}, True),
        # A study's attachment shows only in its list of attachments.
        ("PUT", "/studies/%s/attachments/1030" % other[0]["ParentStudy"], {"data": b"y"}, False),
        ("DELETE", "/instances/%s" % other[1]["ID"], {}, True),
        # Its DELETED event, which no request announced, once made every ETag change.
        ("POST", "/instances", {"data": make_instance(
            "PAT-touched", seed="touched", series_description="Overwritten")}, True),
        ("POST", "/modalities/nowhere/echo", {"data": b"{}"}, False),
        ("POST", "/modalities/nowhere/query", {"json": {"Level": "Study", "Query": {}}}, False),
        ("POST", "/tools/find", {"json": {"Level": "Study", "Query": {}}}, False),
    ]
    if server.get("/system").json()["ApiVersion"] >= 20:  # labels: Orthanc 1.12.0
        writes.append(("PUT", "/studies/%s/labels/reviewed" % read["ParentStudy"], {}, False))
    for method, path, body, touches_other in writes:
        server.request(method, path, **body)
        time.sleep(1)  # the change events of the write have been handled
        for checked, old in before.items():
            if checked == other_path and touches_other:
                assert get(server, checked).headers["ETag"] != old.headers["ETag"], path
                continue
            revalidated = get(server, checked, **{"If-None-Match": old.headers["ETag"]})
            assert revalidated.status_code == 304, (method, path, checked)
            again = get(server, checked)
            assert (again.headers["ETag"], again.content) == (old.headers["ETag"], old.content)
            assert server.outcomes(checked)[-1] == kept(checked), (method, path, checked)
        if touches_other:
            time.sleep(QUIET)  # the other study's answers settle again
            before.update(stored(server, [other_path]))
    # Nothing else was wrong: the other study answers as Orthanc computes it.
    assert len(get(server, "/studies/%s/instances-tags" % other[0]["ParentStudy"]).json()) == 3


def test_an_instance_added_in_the_same_second_is_seen(cached_orthanc) -> None:
    server = cached_orthanc()
    first = upload(server, "same-second", series=1, instances=1)[0]
    path = "/series/%s/instances-tags" % first["ParentSeries"]
    for number in range(2, 6):  # upload and read within the same second, repeatedly
        server.upload(make_instance("PAT-same-second", seed="same-second", instance_number=number))
        assert len(get(server, path).json()) == number


def test_a_restart_keeps_valid_entries_and_never_revives_stale_ones(cached_orthanc) -> None:
    server = cached_orthanc()
    instances = upload(server, "restart")
    study_path = "/studies/%s/shared-tags" % instances[0]["ParentStudy"]
    series_path = "/series/%s/instances-tags" % instances[0]["ParentSeries"]
    before = stored(server, [study_path, series_path])
    server.restart()
    assert get(server, study_path).content == before[study_path].content
    assert server.outcomes(study_path)[-1] == Outcome.HIT
    assert server.delete("/instances/%s" % instances[0]["ID"]).status_code == 200
    server.restart()
    assert len(get(server, series_path).json()) == 1


def test_overwriting_an_instance_refreshes_its_routes(cached_orthanc) -> None:
    server = cached_orthanc(config={"OverwriteInstances": True})
    first = upload(server, "overwrite", series=1, instances=1)[0]
    paths = ["/instances/%s/tags?simplify" % first["ID"],
             "/series/%s/instances-tags" % first["ParentSeries"]]
    before = stored(server, paths)
    replacement = make_instance("PAT-overwrite", seed="overwrite", instance_number=1,
                                series_description="Overwritten")
    assert server.upload(replacement)["ID"] == first["ID"]
    assert get(server, paths[0]).json()["SeriesDescription"] == "Overwritten"
    assert_fresh(server, before, server.get)


def test_changes_through_another_node_are_seen_within_the_bound(cluster) -> None:
    nodes = cluster(2).nodes
    writer, reader = nodes
    instances = upload(writer, "cluster")
    first = instances[0]
    paths = parent_routes(first["ParentStudy"], first["ParentSeries"], first["ParentPatient"])
    paths += ["/instances/%s/metadata" % instances[1]["ID"],
              "/studies/%s/attachments" % first["ParentStudy"]]
    before = stored(reader, paths)
    assert writer.delete("/instances/%s" % first["ID"]).status_code == 200
    assert writer.put("/instances/%s/metadata/1024" % instances[1]["ID"],
                      data="x").status_code == 200
    assert writer.put("/studies/%s/attachments/1030" % first["ParentStudy"],
                      data="n").status_code == 200
    time.sleep(OTHER_NODE_BOUND)
    assert_fresh(reader, before, writer.get)
    assert get(reader, "/instances/%s/tags" % first["ID"]).status_code == 404


#: A startup script with its own callbacks: a stored-instance one, before or after the
#: plugin's, and a change one that can hold up the delivery of change events.
SCRIPT = '''
import os
import sys
import time
sys.path.insert(0, {repo!r})

import orthanc
from orthanc_cache_plugin import enable_cache_plugin


def on_stored_instance(dicom, instance_id):
    orthanc.LogWarning("script saw instance " + instance_id)


def on_change(change_type, level, resource_id):
    # One thread delivers every change event: sleeping here holds up the later ones.
    if change_type == orthanc.ChangeType.NEW_INSTANCE and os.path.exists({flag!r}):
        os.remove({flag!r})
        orthanc.LogWarning("script holds change events up")
        time.sleep(3)


if {changes_first!r}:
    orthanc.RegisterOnChangeCallback(on_change)
if {stored_first!r}:
    orthanc.RegisterOnStoredInstanceCallback(on_stored_instance)
enable_cache_plugin()
if not {stored_first!r}:
    orthanc.RegisterOnStoredInstanceCallback(on_stored_instance)
if not {changes_first!r}:
    orthanc.RegisterOnChangeCallback(on_change)
orthanc.LogWarning("script ready")
'''


def start_with_script(cached_orthanc, repo_root: Path, tmp_path: Path, stored_first: bool = False,
                      changes_first: bool = False) -> Tuple[OrthancServer, Path]:
    flag = tmp_path / "hold-changes-up"
    script = tmp_path / "startup.py"
    script.write_text(SCRIPT.format(repo=str(repo_root), flag=str(flag),
                                    stored_first=stored_first, changes_first=changes_first))
    server = cached_orthanc(python_script=script)
    server.wait_for_log("script ready")
    return server, flag


@pytest.mark.parametrize("stored_first", [False, True], ids=["script after", "script before"])
def test_a_new_instance_is_seen_at_once_by_answers_already_stored(
        stored_first: bool, cached_orthanc, repo_root: Path, tmp_path: Path) -> None:
    """The plugin remembers each resource's LastUpdate between changes.  The stored-instance
    callback, which Orthanc runs before it answers an upload, makes it forget them: here the
    change events come seconds later, held up by the script's change callback (which the
    plugin calls after its own).  A script's stored-instance callback registered before the
    plugin's makes the plugin ask Orthanc for LastUpdate on every request (and say so)."""
    server, flag = start_with_script(cached_orthanc, repo_root, tmp_path, stored_first)
    first = upload(server, "remembered", series=1, instances=2)[0]
    paths = ["/series/%s/instances-tags" % first["ParentSeries"],
             "/studies/%s/shared-tags" % first["ParentStudy"],
             "/patients/%s/instances-tags?short" % first["ParentPatient"]]
    for number in range(3, 6):
        stored(server, paths)
        flag.write_text("")
        server.upload(make_instance("PAT-elsewhere", seed="elsewhere-%d" % number))
        server.wait_for_log("(?s)(script holds change events up.*){%d}" % (number - 2))
        before = stored(server, paths)  # LastUpdate read again, and remembered
        added = server.upload(make_instance("PAT-remembered", seed="remembered",
                                            instance_number=number))
        assert len(get(server, paths[0]).json()) == number
        assert_fresh(server, before, server.get)
        time.sleep(SETTLE_AFTER_UPLOAD)
    log = server.log_text()
    assert "script saw instance " + added["ID"] in log
    refused = re.findall(r"cannot register orthanc\.(\w+)", log)
    assert refused == (["RegisterOnStoredInstanceCallback"] if stored_first else [])


def test_a_change_callback_registered_before_the_plugin_keeps_it_off(
        cached_orthanc, repo_root: Path, tmp_path: Path) -> None:
    """Without change events the plugin could serve stale answers: it does not start."""
    server, _ = start_with_script(cached_orthanc, repo_root, tmp_path, changes_first=True)
    server.wait_for_log("cache plugin: not started: Orthanc's change events go to a callback")
    instance = server.upload(make_instance("PAT-off", seed="off"))["ID"]
    answer = get(server, "/instances/%s/tags" % instance)
    assert answer.status_code == 200 and "X-Cache-Status" not in answer.headers


#: Tags of Orthanc Explorer 2's study page that Orthanc reads from the files.
FILE_TAGS = "?expand&requestedTags=SoftwareVersions;0018,0015;ModalitiesInStudy"


def child_lists(instance: dict) -> List[str]:
    """The lists Orthanc Explorer 2 reads around ``instance``, as it asks for them."""
    study, series = instance["ParentStudy"], instance["ParentSeries"]
    return ["/studies/%s/series" % study, "/studies/%s/instances%s" % (study, FILE_TAGS),
            "/series/%s/instances" % series, "/series/%s/instances%s" % (series, FILE_TAGS),
            "/studies/%s/series%s" % (study, FILE_TAGS),
            "/patients/%s/studies%s" % (instance["ParentPatient"], FILE_TAGS)]


def test_child_lists_follow_instances_labels_stability_and_deletions(cached_orthanc) -> None:
    """The child lists are fresh after each change, whether or not LastUpdate shows it;
    with file tags they are stored (HIT), without them Orthanc computes them."""
    stable_age = 12
    server = cached_orthanc(config={"StableAge": stable_age})
    start = time.monotonic()
    uploaded = [server.upload(dicom) for dicom in make_study("PAT-lists", 2, 2, seed="lists")]
    first = uploaded[0]
    study, series = first["ParentStudy"], first["ParentSeries"]
    paths = child_lists(first)
    stored_paths = [path for path in paths if "requestedTags" in path]
    time.sleep(SETTLE_AFTER_UPLOAD)

    def remember() -> Dict[str, requests.Response]:
        before = stored(server, stored_paths)
        for path in paths:
            if path not in before:
                before[path] = get(server, path)
                assert server.outcomes(path)[-1] == Outcome.MISS, path
                again = get(server, path, **{"If-None-Match": before[path].headers["ETag"]})
                assert again.status_code == 304, path
        return before

    # Stored while Orthanc says IsStable false; its STABLE event moves no LastUpdate.
    before = remember()
    assert not get(server, "/studies/%s/series%s" % (study, FILE_TAGS)).json()[0]["IsStable"]
    time.sleep(max(0.0, start + stable_age + 3 - time.monotonic()))
    series_list = get(server, "/studies/%s/series%s" % (study, FILE_TAGS)).json()
    assert all(item["IsStable"] for item in series_list), series_list
    # Instances show no IsStable: only the lists of series and studies changed.
    assert_fresh(server, {path: answer for path, answer in before.items()
                          if "/instances" not in path}, server.get)

    # A new instance in a series changes its study's lists.
    time.sleep(SETTLE_AFTER_UPLOAD)
    before = remember()
    added = server.upload(make_instance("PAT-lists", seed="lists", instance_number=9))
    assert added["ParentStudy"] == study
    assert_fresh(server, before, server.get)
    assert len(get(server, "/studies/%s/instances%s" % (study, FILE_TAGS)).json()) == 5

    if server.get("/system").json()["ApiVersion"] >= 20:  # labels: Orthanc 1.12.0
        time.sleep(SETTLE_AFTER_UPLOAD)
        before = remember()
        for level, resource in (("studies", study), ("series", series),
                                ("instances", first["ID"])):
            assert server.put("/%s/%s/labels/seen" % (level, resource)).status_code == 200
        assert_fresh(server, before, server.get)
        for path in paths:
            labelled = [item for item in get(server, path).json() if "seen" in item["Labels"]]
            assert len(labelled) == 1, path

    # Deletions: an instance, then a whole series.
    time.sleep(QUIET)
    before = remember()
    listed = len(before["/series/%s/instances%s" % (series, FILE_TAGS)].json())
    assert server.delete("/instances/%s" % first["ID"]).status_code == 200
    assert_fresh(server, before, server.get)
    assert len(get(server, "/series/%s/instances%s" % (series, FILE_TAGS)).json()) == listed - 1
    time.sleep(QUIET)
    before = remember()
    assert server.delete("/series/%s" % series).status_code == 200
    for path in paths:
        if "/series/%s/" % series in path:
            assert get(server, path).status_code == 404, path
    assert len(get(server, "/studies/%s/series%s" % (study, FILE_TAGS)).json()) == 1
    assert_fresh(server, {path: before[path] for path in paths if "/series/" not in path},
                 server.get)
