"""report.html: written by a finished run, rebuilt by `dreamdistill report`, and drawn by a real browser."""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_lift3d import TINY, only_run, run

from dreamdistill import cli
from dreamdistill.report import (
    MESH_VIEW_ID,
    REPORT_NAME,
    Mesh,
    build_page,
    curve_names,
    decimate,
    moving_average,
    read_run,
)


@pytest.fixture(scope="module")
def finished_run(tiny_pixel_teacher_dir, tmp_path_factory) -> Path:
    """A tiny 3-step run of the real toy vocabulary (so metrics.json has a shape score)."""
    out = tmp_path_factory.mktemp("report-run")
    assert run("a red chair", tiny_pixel_teacher_dir, out, "--steps", "3",
               overrides=TINY + ["export.formats=[ply]", "turntable_resolution=32"]) == 0
    return only_run(out)


def missing(page: str, *needles: str) -> list[str]:
    """The needles not in the page (asserting on a 5 MB string directly makes pytest print all of it)."""
    return [needle for needle in needles if needle not in page]


def test_a_finished_run_writes_a_self_contained_report(finished_run):
    page = (finished_run / REPORT_NAME).read_text()
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert missing(page, "<h1>a red chair</h1>", "SDS on teacher", f"{metrics['mesh']['faces']:,} faces",
                   "data:image/gif;base64,", "data:image/png;base64,", "validation/step-000003.png") == []
    assert page.count("Plotly.newPlot(") == 2  # the mesh view and the curves
    assert re.findall(r"<(?:script|img|link)[^>]*(?:src|href)=\"(?!data:)", page) == []  # nothing loaded from outside
    assert "critic loss" not in page  # SDS logs no critic loss


def test_report_command_rebuilds_the_page(finished_run, tmp_path, capsys):
    copy = shutil.copytree(finished_run, tmp_path / finished_run.name)
    (copy / REPORT_NAME).unlink()
    assert cli.main(["report", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {copy / REPORT_NAME}"
    assert (copy / REPORT_NAME).read_bytes() == (finished_run / REPORT_NAME).read_bytes()


def test_report_of_an_unfinished_run_says_what_is_missing(finished_run, tmp_path):
    copy = shutil.copytree(finished_run, tmp_path / "copy")
    for name in ("metrics.json", "mesh.ply", "turntable.gif"):
        (copy / name).unlink()
    shutil.rmtree(copy / "validation")
    page = build_page(read_run(copy))
    assert missing(page, "No metrics.json yet", "No mesh.ply", "No turntable.gif yet", "No validation strip") == []
    assert page.count("Plotly.newPlot(") == 1  # the curves still


@pytest.mark.parametrize("make,message", [
    (lambda folder: folder, "is not a run folder (no config.yaml)"),
    (lambda folder: folder / "nope", "is not a folder"),
])
def test_report_errors_are_one_line(make, message, tmp_path, capsys):
    assert cli.main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_decimate_keeps_the_shape_and_colours_within_the_face_budget():
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20,480 faces
    colours = np.where(sphere.vertices[:, 2:] > 0, [200, 30, 30], [30, 30, 200]).astype(np.uint8)
    mesh = Mesh(sphere.vertices.astype(np.float32), sphere.faces, colours)
    small = decimate(mesh, 2000)
    assert 500 < len(small.faces) <= 2000 and small.faces.max() < len(small.vertices)
    np.testing.assert_allclose(np.linalg.norm(small.vertices, axis=1), 1.0, atol=0.05)
    top, bottom = small.vertices[:, 2] > 0.2, small.vertices[:, 2] < -0.2
    assert (small.colours[top] == [200, 30, 30]).all() and (small.colours[bottom] == [30, 30, 200]).all()
    assert decimate(mesh, len(mesh.faces)) is mesh


def test_curves_and_their_running_mean():
    log = [{"step": 0, "loss": 1.0, "opacity_entropy": 2.0, "t": 900.0}, {"step": 1, "loss": 3.0, "critic_loss": 0.5}]
    assert curve_names(log) == ["loss", "t", "critic_loss", "opacity_entropy"]
    np.testing.assert_allclose(moving_average(np.array([1.0, 2.0, np.nan, 4.0]), 3), [1.5, 1.5, 3.0, 4.0])


def test_the_page_draws_in_headless_chromium(finished_run, tmp_path):
    """The page of a finished run in a real browser: no console errors or uncaught exceptions, no request leaves
    the machine, and the 3D view's box is not blank (its middle differs from the page's background)."""
    pytest.importorskip("websockets", reason="the browser test talks to Chromium with the websockets package")
    from browser import find_chromium, visit
    from PIL import Image

    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does this)")
    seen = visit((finished_run / REPORT_NAME).resolve().as_uri(), MESH_VIEW_ID)
    (tmp_path / "report.png").write_bytes(seen.screenshot)  # to look at when it fails
    assert seen.errors == [] and seen.remote_requests == []
    assert seen.rendered, "plotly never finished drawing the mesh view"
    assert "WebGL" not in seen.text, seen.text  # plotly's words when the browser has no WebGL
    picture = np.asarray(Image.open(io.BytesIO(seen.screenshot)).convert("RGB")).astype(np.int16)
    x, y, width, height = (round(seen.box[k]) for k in ("x", "y", "width", "height"))
    assert width > 300 and height > 300 and y + height <= picture.shape[0]
    background = picture[y + 2, x + 2]  # the view's own corner
    middle = picture[y + height // 5: y + 4 * height // 5, x + width // 5: x + 4 * width // 5]
    drawn = (np.abs(middle - background).max(axis=-1) > 24).mean()
    assert drawn > 0.02, f"the 3D view is blank ({drawn:.1%} of its middle differs from the background)"
