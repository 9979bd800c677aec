"""The harness itself: plain Orthanc with synthetic data, and the Python plugin loading."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

import pytest

from support.dicom_factory import make_pdf_instance, make_study
from support.orthanc_server import OrthancServer

#: Also run on Debian 12's Orthanc 1.10.1 (scripts/test.sh).
pytestmark = pytest.mark.old_stack


def test_plain_orthanc_stores_generated_study(
        orthanc_factory: Callable[..., OrthancServer]) -> None:
    orthanc = orthanc_factory()
    study = make_study("PAT-SMOKE", n_series=2, n_instances=3, seed="smoke")
    pdf = make_pdf_instance("PAT-SMOKE", seed="smoke")

    answers = [orthanc.upload(dicom) for dicom in study + [pdf]]

    assert {a["Status"] for a in answers} == {"Success"}
    assert len({a["ParentStudy"] for a in answers}) == 1
    assert len(orthanc.get("/studies").json()) == 1
    assert len(orthanc.get("/series").json()) == 3
    assert len(orthanc.get("/instances").json()) == 7

    preview = orthanc.get(f"/instances/{answers[0]['ID']}/preview")
    assert preview.status_code == 200
    assert preview.headers["Content-Type"] == "image/png"
    assert preview.content.startswith(b"\x89PNG")

    document = orthanc.get(f"/instances/{answers[-1]['ID']}/pdf")
    assert document.status_code == 200
    assert document.content.startswith(b"%PDF-")


def test_python_plugin_loads_script(
    orthanc_factory: Callable[..., OrthancServer], tmp_path: Path
) -> None:
    script = tmp_path / "harness_check.py"
    script.write_text(
        textwrap.dedent(
            """
            import orthanc

            def harness_check(output, uri, **request):
                output.AnswerBuffer("ok", "text/plain")

            orthanc.RegisterRestCallback("/harness-check", harness_check)
            orthanc.LogInfo("harness-check registered")
            """
        )
    )
    orthanc = orthanc_factory(python_script=script)

    response = orthanc.get("/harness-check")
    assert response.status_code == 200
    assert response.text == "ok"
    orthanc.wait_for_log(r"\(plugins\) harness-check registered")

    result = orthanc.stop()
    assert result.returncode == 0
    assert not result.killed
