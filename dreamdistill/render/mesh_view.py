"""Pictures of an exported mesh (not the field): flat-shaded triangles drawn far to near (painter's algorithm).

Used beside the NeRF's own renders so that a mesh's defects (holes, fragments, missing seats) are seen. Same
cameras and light as the field's orbit renders (``render/cameras.py`` conventions, ``render/lights.py``'s
camera-frame light direction); supersampled 2× and downsampled for antialiasing. CPU only, no OpenGL.
"""

from __future__ import annotations

import numpy as np

from dreamdistill.render.cameras import Cameras, focal_length

SUPERSAMPLE = 2


def project(vertices: np.ndarray, camera_to_world: np.ndarray, focal: float, resolution: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [V, 2] (column, row; row 0 at the top) and depths [V] (distance along the view axis)."""
    rotation, origin = camera_to_world[:3, :3], camera_to_world[:3, 3]
    local = (vertices - origin) @ rotation  # world -> camera frame (x right, y up, z backward)
    depth = -local[:, 2]
    safe = np.maximum(depth, 1e-6)
    columns = resolution / 2 + focal * local[:, 0] / safe
    rows = resolution / 2 - focal * local[:, 1] / safe
    return np.stack([columns, rows], axis=1), depth


def face_shading(vertices: np.ndarray, faces: np.ndarray, to_camera: np.ndarray, light: np.ndarray,
                 ambient: float) -> np.ndarray:
    """Lambertian factor [F] of each face, its normal turned towards the camera (open meshes stay lit)."""
    triangles = vertices[faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    facing = np.sign((normals * (to_camera - triangles.mean(1))).sum(1, keepdims=True))
    normals = normals * np.where(facing == 0, 1, facing)
    return ambient + (1 - ambient) * np.clip(normals @ light, 0.0, 1.0)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, cameras: Cameras, resolution: int,
                light_direction: tuple[float, float, float] = (-0.45, 0.6, 0.66), ambient: float = 0.5,
                background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Views [B, H, W, 3] uint8 of a mesh (vertices [V, 3], faces [F, 3], vertex colours [V, 3] uint8)."""
    from PIL import Image, ImageDraw

    size = resolution * SUPERSAMPLE
    face_colors = colors[faces].astype(np.float64).mean(1) if len(faces) else np.zeros((0, 3))
    c2w_all = cameras.camera_to_world.double().numpy()
    focals = focal_length(cameras.fov.double(), size).numpy()
    views = []
    for c2w, focal in zip(c2w_all, focals):
        picture = Image.new("RGB", (size, size), background)
        if len(faces):
            pixels, depth = project(vertices.astype(np.float64), c2w, float(focal), size)
            light = c2w[:3, :3] @ (np.asarray(light_direction) / np.linalg.norm(light_direction))
            shade = face_shading(vertices.astype(np.float64), faces, c2w[:3, 3], light, ambient)
            rgb = np.clip(face_colors * shade[:, None], 0, 255).astype(np.uint8)
            order = np.argsort(-depth[faces].mean(1))  # far first
            visible = order[(depth[faces[order]] > 1e-3).all(1)]
            draw = ImageDraw.Draw(picture)
            corners = pixels[faces]
            for index in visible:
                draw.polygon([tuple(p) for p in corners[index]], fill=tuple(int(c) for c in rgb[index]))
        views.append(np.asarray(picture.resize((resolution, resolution), Image.LANCZOS)))
    return np.stack(views)
