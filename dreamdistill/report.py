"""report.html: one page per text-to-3D run, to look at a result in a browser (from file://, with no network).

The page shows the prompt, method and teacher; the exported mesh (mesh.ply, with its vertex colours) in an
interactive 3D view (plotly's Mesh3d, WebGL); the turntable; the last validation strip; the metrics; the curves of
log.jsonl over the steps; and config.yaml. Everything is inside the one file: plotly.js is embedded (about 4.8 MB)
and the pictures are base64 data URIs, so the page can be mailed or archived alone.

:func:`read_run` gathers a run folder into a :class:`RunContents`; :func:`build_page` turns that into HTML (pure);
:func:`write_report` writes RUN_DIR/report.html atomically (``finish`` calls it after the last step, and
``dreamdistill report RUN_DIR`` rebuilds it).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import read_jsonl, write_text_atomic
from dreamdistill.run_files import (
    CONFIG_NAME,
    LOG_NAME,
    MESH_NAME,
    METRICS_NAME,
    REPORT_NAME,
    TURNTABLE_NAME,
    VALIDATION_FOLDER,
    VALIDATION_PATTERN,
)

MAX_FACES = 100_000
"""Meshes with more faces are decimated (vertex clustering) for the page; the page says so."""
MESH_VIEW_ID = "mesh-view"
"""The id of the 3D view's element (the browser test looks for it)."""
CURVES = {"loss": "loss", "grad_norm": "gradient norm", "t": "sampled t", "opacity": "mean opacity",
          "residual_rms": "residual RMS", "critic_loss": "critic loss (VSD)"}
"""log.jsonl keys plotted first, with their titles; any other numeric key follows under its own name."""
LOG_SCALE = ("loss", "grad_norm", "critic_loss")
"""Curves drawn on a log axis when all their values are positive."""
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class Mesh:
    """A triangle mesh with per-vertex colours."""

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int
    colours: np.ndarray  # [V, 3] uint8


@dataclass
class RunContents:
    """What the page shows, read from a run folder (None where the run has not written it)."""

    name: str
    config_text: str
    config: dict
    metrics: dict | None
    log: list[dict]
    mesh: Mesh | None
    turntable_gif: bytes | None
    validation: tuple[str, bytes] | None  # (file name, PNG bytes) of the last strip


# ---- reading a run folder -----------------------------------------------------------------------------


def read_mesh(path: Path) -> Mesh:
    """mesh.ply (as the run exports it: vertex colours) as a :class:`Mesh`."""
    import trimesh

    tri = trimesh.load(path, process=False, force="mesh")
    colours = np.asarray(tri.visual.vertex_colors)[:, :3] if tri.visual.kind == "vertex" else None
    if colours is None:
        colours = np.full((len(tri.vertices), 3), 200, np.uint8)
    return Mesh(np.asarray(tri.vertices, np.float32), np.asarray(tri.faces, np.int64), colours.astype(np.uint8))


def read_run(run_dir: str | Path) -> RunContents:
    """The files of a run folder that the page shows; a folder without config.yaml is not a run."""
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise DreamDistillError(f"{run_dir} is not a run folder (no {CONFIG_NAME}); pass a folder made by "
                                '`dreamdistill "a prompt"`')
    config_text = (run_dir / CONFIG_NAME).read_text()
    metrics_path = run_dir / METRICS_NAME
    strips = sorted((run_dir / VALIDATION_FOLDER).glob(VALIDATION_PATTERN))
    return RunContents(
        name=run_dir.resolve().name,
        config_text=config_text,
        config=yaml.safe_load(config_text) or {},
        metrics=json.loads(metrics_path.read_text()) if metrics_path.is_file() else None,
        log=read_jsonl(run_dir / LOG_NAME),
        mesh=read_mesh(run_dir / MESH_NAME) if (run_dir / MESH_NAME).is_file() else None,
        turntable_gif=(run_dir / TURNTABLE_NAME).read_bytes() if (run_dir / TURNTABLE_NAME).is_file() else None,
        validation=(strips[-1].name, strips[-1].read_bytes()) if strips else None,
    )


# ---- pure helpers ---------------------------------------------------------------------------------------


def decimate(mesh: Mesh, max_faces: int = MAX_FACES) -> Mesh:
    """At most ``max_faces`` faces by vertex clustering: vertices in one cell of a cubic grid merge into their mean
    (colours too), collapsed and repeated faces are dropped; the cell grows until the mesh is small enough."""
    if len(mesh.faces) <= max_faces:
        return mesh
    low, high = mesh.vertices.min(0), mesh.vertices.max(0)
    extent = float((high - low).max()) or 1.0
    # marching cubes: faces ~ (cells along a side)², so start near the size that gives max_faces
    cells = max(2.0, np.sqrt(len(mesh.faces) / 2) * np.sqrt(max_faces / len(mesh.faces)))
    while True:
        keys = np.floor((mesh.vertices - low) / (extent / cells)).astype(np.int64)
        _, cluster, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        cluster = cluster.reshape(-1)
        faces = cluster[mesh.faces]
        faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
        _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
        faces = faces[np.sort(first)]
        if len(faces) <= max_faces or cells <= 2:
            break
        cells *= 0.85
    vertices = np.zeros((len(counts), 3), np.float64)
    colours = np.zeros((len(counts), 3), np.float64)
    np.add.at(vertices, cluster, mesh.vertices)
    np.add.at(colours, cluster, mesh.colours)
    return Mesh((vertices / counts[:, None]).astype(np.float32), faces,
                np.round(colours / counts[:, None]).astype(np.uint8))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean over ``window`` samples (shorter at the ends); NaNs are skipped."""
    finite = np.isfinite(values)
    kernel = np.ones(max(1, window))
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def curve_names(log: list[dict]) -> list[str]:
    """The numeric log.jsonl keys to plot: :data:`CURVES` first (those present), then the others in log order."""
    present: dict[str, None] = {}
    for record in log:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                present.setdefault(key, None)
    return [key for key in CURVES if key in present] + [key for key in present if key not in CURVES]


def flatten(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested metrics as (dotted key, value) rows, in their order."""
    rows: list[tuple[str, object]] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def format_value(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---- figures ----------------------------------------------------------------------------------------------


def mesh_figure(mesh: Mesh):
    """The mesh with its vertex colours, z up, seen from the front-left (as the turntable starts), no axes."""
    import plotly.graph_objects as go

    trace = go.Mesh3d(
        x=mesh.vertices[:, 0], y=mesh.vertices[:, 1], z=mesh.vertices[:, 2],
        i=mesh.faces[:, 0].astype(np.int32), j=mesh.faces[:, 1].astype(np.int32), k=mesh.faces[:, 2].astype(np.int32),
        vertexcolor=mesh.colours, hoverinfo="skip", flatshading=False,
        lighting={"ambient": 0.4, "diffuse": 0.75, "specular": 0.1, "roughness": 0.7, "fresnel": 0.05},
        lightposition={"x": 3e4, "y": -1e4, "z": 4e4},  # in front of the chair's front (+x), above, to the left
    )
    hidden = {"visible": False, "showbackground": False}
    azimuth, elevation, distance = np.deg2rad(25.0), np.deg2rad(20.0), 1.9
    eye = distance * np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                               np.sin(elevation)])
    figure = go.Figure(trace)
    figure.update_layout(
        template="none", height=520, margin={"l": 0, "r": 0, "t": 0, "b": 0}, paper_bgcolor="white",
        scene={"xaxis": hidden, "yaxis": hidden, "zaxis": hidden, "aspectmode": "data", "bgcolor": "white",
               "camera": {"up": {"x": 0, "y": 0, "z": 1}, "eye": dict(zip("xyz", eye.tolist()))}},
    )
    return figure


def curves_figure(log: list[dict]):
    """One small plot per logged quantity over the steps (raw values, and a running mean where noisy)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = curve_names(log)
    columns = 3
    rows = max(1, -(-len(names) // columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[CURVES.get(n, n) for n in names],
                           horizontal_spacing=0.07, vertical_spacing=0.5 / rows)
    steps = np.array([record.get("step", index) for index, record in enumerate(log)], np.float64)
    window = max(1, len(log) // 40)
    for index, name in enumerate(names):
        row, column = index // columns + 1, index % columns + 1
        values = np.array([float(r[name]) if isinstance(r.get(name), (int, float)) else np.nan for r in log])
        figure.add_trace(go.Scatter(x=steps, y=values, mode="lines" if name != "t" else "markers", name=name,
                                    line={"width": 1, "color": "rgba(31,119,180,0.35)"},
                                    marker={"size": 3, "color": "rgba(31,119,180,0.5)"}, showlegend=False),
                         row=row, col=column)
        if window > 1:
            figure.add_trace(go.Scatter(x=steps, y=moving_average(values, window), mode="lines",
                                        name=f"{name} (mean of {window})", line={"width": 2, "color": "#1f77b4"},
                                        showlegend=False), row=row, col=column)
        finite = values[np.isfinite(values)]
        if name in LOG_SCALE and len(finite) and (finite > 0).all():
            figure.update_yaxes(type="log", row=row, col=column)
        figure.update_xaxes(title_text="step" if row == rows else None, row=row, col=column)
    figure.update_layout(template="plotly_white", height=260 * rows, margin={"l": 50, "r": 20, "t": 40, "b": 40})
    return figure


def figure_html(figure, div_id: str, include_plotlyjs: bool) -> str:
    """A figure as a <div> (with plotly.js itself when ``include_plotlyjs``); when drawn, the div gets
    ``data-rendered="true"``."""
    import plotly.io as pio

    ready = f'document.getElementById("{div_id}").dataset.rendered = "true";'
    return pio.to_html(figure, include_plotlyjs=include_plotlyjs, full_html=False, div_id=div_id,
                       config=PLOTLY_CONFIG, post_script=ready, default_height=figure.layout.height)


# ---- the page ---------------------------------------------------------------------------------------------


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; margin: 0 0 4px 0; } h2 { font-size: 1.15em; margin: 28px 0 8px 0; }
.subtitle { color: #555; margin-bottom: 16px; }
.top { display: grid; grid-template-columns: minmax(0, 1fr) 300px; gap: 20px; align-items: start; }
.panel { border: 1px solid #ddd; border-radius: 6px; padding: 8px; background: #fff; }
.caption { color: #666; font-size: 0.85em; margin-top: 4px; }
.cards { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; margin-top: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 6px 8px; }
.card .value { font-size: 1.3em; font-weight: 600; } .card .label { color: #666; font-size: 0.8em; }
img.pixelated { image-rendering: pixelated; }
table { border-collapse: collapse; font-size: 0.9em; } td { padding: 2px 14px 2px 0; vertical-align: top; }
td.key { color: #555; font-family: ui-monospace, monospace; }
.tables { display: flex; gap: 40px; flex-wrap: wrap; }
pre { background: #f6f6f6; padding: 12px; border-radius: 6px; font-size: 0.85em; overflow-x: auto; }
.missing { color: #a00; }
"""


def metric_cards(metrics: dict | None) -> str:
    """The headline numbers: R-precision, view consistency, best and mean nearest-real IoU."""
    metrics = metrics or {}
    shape = metrics.get("shape") or {}
    cards = [("R-precision", metrics.get("r_precision")), ("view consistency", metrics.get("view_consistency")),
             ("shape IoU (best)", (shape.get("iou") or {}).get("best")),
             ("shape IoU (mean)", (shape.get("iou") or {}).get("mean"))]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="value">{html.escape(format_value(value))}</div>'
        f'<div class="label">{html.escape(label)}</div></div>' for label, value in cards) + "</div>"


def table(rows: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f'<tr><td class="key">{html.escape(key)}</td><td>{html.escape(format_value(value))}'
                               "</td></tr>" for key, value in rows) + "</table>"


def metrics_section(metrics: dict | None) -> str:
    if metrics is None:
        return f'<p class="missing">No {METRICS_NAME} yet: the run has not finished.</p>'
    groups = {"scores": {k: v for k, v in metrics.items() if k not in ("shape", "mesh")},
              "shape (nearest real object, toy world)": metrics.get("shape"), "mesh": metrics.get("mesh")}
    parts = []
    for title, values in groups.items():
        body = table(flatten(values)) if values else "<p>n/a (not a toy-world teacher or prompt)</p>"
        parts.append(f"<div><h3>{html.escape(title)}</h3>{body}</div>")
    return '<div class="tables">' + "".join(parts) + "</div>"


def build_page(run: RunContents, max_faces: int = MAX_FACES) -> str:
    """The whole report.html of a run (pure: contents in, HTML out)."""
    config = run.config
    prompt = str(config.get("prompt", run.name))
    method = str(config.get("method", "?")).upper()
    steps = run.metrics.get("steps") if run.metrics else config.get("steps")
    seconds = run.metrics.get("seconds") if run.metrics else None
    subtitle = f"{method} on teacher <b>{html.escape(str(config.get('teacher', '?')))}</b> · {steps} steps"
    subtitle += f" in {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
    subtitle += f" · seed {html.escape(str(config.get('seed', '?')))} · {html.escape(run.name)}"

    plotly_included = False

    def figure_block(figure, div_id: str) -> str:
        nonlocal plotly_included
        block = figure_html(figure, div_id, include_plotlyjs=not plotly_included)
        plotly_included = True
        return block

    if run.mesh is not None and len(run.mesh.faces):
        shown = decimate(run.mesh, max_faces)
        size = f"{len(run.mesh.faces):,} faces, {len(run.mesh.vertices):,} vertices"
        if len(shown.faces) < len(run.mesh.faces):
            size += f"; shown decimated to {len(shown.faces):,} faces (vertex clustering)"
        view = figure_block(mesh_figure(shown), MESH_VIEW_ID)
        view += f'<div class="caption">{MESH_NAME}: {size}. Drag to turn, scroll to zoom.</div>'
    else:
        view = f'<p class="missing" id="{MESH_VIEW_ID}">No {MESH_NAME}: the run has not finished or the scene was ' \
               "empty.</p>"
    if run.turntable_gif is not None:
        turntable = (f'<img src="{data_uri(run.turntable_gif, "image/gif")}" alt="turntable" width="280">'
                     f'<div class="caption">{TURNTABLE_NAME} (the field\'s own render)</div>')
    else:
        turntable = f'<p class="missing">No {TURNTABLE_NAME} yet.</p>'
    if run.validation is not None:
        name, png = run.validation
        strip = (f'<img class="pixelated" src="{data_uri(png, "image/png")}" alt="validation strip" '
                 f'style="width: 100%; max-width: 768px">'
                 f'<div class="caption">{VALIDATION_FOLDER}/{html.escape(name)}: orbit views at elevation 15° '
                 "(azimuth 0°, 90°, 180°, 270°)</div>")
    else:
        strip = '<p class="missing">No validation strip yet.</p>'
    curves = (figure_block(curves_figure(run.log), "curves") if curve_names(run.log)
              else f'<p class="missing">No {LOG_NAME} records.</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(prompt)} · dreamdistill report</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(prompt)}</h1>
<div class="subtitle">{subtitle}</div>
<div class="top">
  <div class="panel">{view}</div>
  <div>{turntable}{metric_cards(run.metrics)}</div>
</div>
<h2>Validation strip</h2>
{strip}
<h2>Metrics</h2>
{metrics_section(run.metrics)}
<h2>Over the steps ({LOG_NAME})</h2>
{curves}
<h2>Config ({CONFIG_NAME})</h2>
<pre>{html.escape(run.config_text)}</pre>
</body>
</html>
"""


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.html from the run's files, written atomically."""
    return write_text_atomic(Path(run_dir) / REPORT_NAME, build_page(read_run(run_dir)))
