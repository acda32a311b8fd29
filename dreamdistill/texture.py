"""UV texture baking: an xatlas unwrap, a texel rasteriser, colours at the texels' surface points, seam dilation.

Pipeline (:func:`bake_texture`, after :func:`unwrap`):
1. xatlas cuts the mesh into charts and packs them into the unit square (seams duplicate vertices);
2. :func:`rasterize_uv` finds, for every texel centre, the UV triangle that contains it and its barycentric
   coordinates (vectorised over the texels of each triangle's bounding box);
3. the texel's 3D position and normal are the barycentric blend of its triangle's corners; ``colour_fn`` colours
   them (export samples the albedo slightly inside the surface, as for vertex colours);
4. :func:`dilate` grows the charts by a few texels so filtering at the seams does not pick up the empty
   background; the texels still empty after that take the mean colour.

UV (0, 0) is the bottom-left corner of the image (the OBJ convention): image row 0 is v = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dreamdistill.errors import DreamDistillError

MIN_TEXTURE_SIZE = 16
ColourFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(points [N, 3], unit normals [N, 3]) -> uint8 RGB [N, 3]."""


def require_xatlas():
    """The xatlas module, or a one-line error saying how to install it."""
    try:
        import xatlas
    except ImportError:
        raise DreamDistillError("a textured OBJ (texture_size > 0) needs xatlas: pip install xatlas") from None
    return xatlas


def check_texture_size(size: int, name: str = "export.texture_size") -> None:
    """0 (vertex colours only) or at least MIN_TEXTURE_SIZE with xatlas installed; else one line."""
    if size != 0 and size < MIN_TEXTURE_SIZE:
        raise DreamDistillError(f"{name} must be 0 (vertex colours only) or at least {MIN_TEXTURE_SIZE}, got {size}")
    if size:
        require_xatlas()


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int,
           padding: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a ``size``² texture with ``padding`` texels between charts.

    Returns ``vmapping`` [V'] (the input vertex of each output vertex; seams duplicate vertices),
    ``faces`` [F, 3] int64 into the output vertices (same order as the input faces) and ``uvs`` [V', 2] in [0, 1]."""
    xatlas = require_xatlas()
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = padding
    atlas.generate(pack_options=pack)
    vmapping, indices, uvs = atlas[0]
    return vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float32)


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int,
                 max_candidates: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """The UV triangle under each texel centre of a ``size``² image, and its barycentric coordinates.

    ``uvs`` [V, 2] in [0, 1], ``faces`` [F, 3]. Texel (row r, column c) has its centre at
    u = (c + 0.5) / size, v = 1 − (r + 0.5) / size. Every texel in each triangle's bounding box is tested
    (``max_candidates`` at a time); a centre on a shared edge goes to one of the triangles.
    Returns ``face`` [size, size] int64 (−1: no triangle) and ``barycentric`` [size, size, 3] float32
    (weights of the triangle's corners, summing to 1; zero where ``face`` is −1)."""
    face_map = np.full((size, size), -1, np.int64)
    bary_map = np.zeros((size, size, 3), np.float32)
    # pixel coordinates: texel centres sit on integers, x along columns, y along rows (down)
    pixels = np.stack([uvs[:, 0] * size - 0.5, (1.0 - uvs[:, 1]) * size - 0.5], axis=-1).astype(np.float64)
    triangles = pixels[faces]  # [F, 3, 2]
    low = np.clip(np.ceil(triangles.min(1)), 0, size - 1).astype(np.int64)  # [F, 2]
    high = np.clip(np.floor(triangles.max(1)), 0, size - 1).astype(np.int64)
    span = np.maximum(high - low + 1, 0)
    span[(triangles.max(1) < 0).any(-1) | (triangles.min(1) > size - 1).any(-1)] = 0  # boxes off the image
    counts = span[:, 0] * span[:, 1]
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):  # chunks of whole triangles with at most max_candidates texels in all
        stop = max(int(np.searchsorted(ends, (ends[start - 1] if start else 0) + max_candidates, "right")), start + 1)
        ids = np.arange(start, stop)
        n = counts[ids]
        face = np.repeat(ids, n)  # [C] the triangle of each candidate texel
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        x = low[face, 0] + local % span[face, 0]
        y = low[face, 1] + local // np.maximum(span[face, 0], 1)
        a, b, c = (triangles[face, k] for k in range(3))
        e1, e2 = b - a, c - a
        px, py = x - a[:, 0], y - a[:, 1]
        det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
        safe = np.where(det == 0, 1.0, det)
        w1 = (px * e2[:, 1] - e2[:, 0] * py) / safe
        w2 = (e1[:, 0] * py - px * e1[:, 1]) / safe
        w0 = 1.0 - w1 - w2
        eps = 1e-7
        inside = (det != 0) & (w0 >= -eps) & (w1 >= -eps) & (w2 >= -eps)
        face_map[y[inside], x[inside]] = face[inside]
        bary_map[y[inside], x[inside]] = np.stack([w0, w1, w2], -1)[inside]
        start = stop
    return face_map, bary_map


def dilate(image: np.ndarray, filled: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow the ``filled`` texels of ``image`` [H, W, C] by ``iterations`` texels: each round an empty texel
    with filled 8-neighbours takes their mean. Returns the new image (float32) and mask."""
    image = np.where(filled[..., None], image, 0).astype(np.float32)
    filled = filled.copy()
    h, w = filled.shape
    for _ in range(iterations):
        padded_image = np.pad(image * filled[..., None], ((1, 1), (1, 1), (0, 0)))
        padded_mask = np.pad(filled, 1).astype(np.float32)
        total = np.zeros_like(image)
        count = np.zeros((h, w), np.float32)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                if dy == dx == 1:
                    continue
                total += padded_image[dy:dy + h, dx:dx + w]
                count += padded_mask[dy:dy + h, dx:dx + w]
        grow = ~filled & (count > 0)
        if not grow.any():
            break
        image[grow] = total[grow] / count[grow][:, None]
        filled = filled | grow
    return image, filled


def bake_texture(vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int,
                 colour_fn: ColourFn, dilation: int = 4) -> tuple[np.ndarray, float]:
    """uint8 RGB texture [size, size, 3] of ``colour_fn`` over the surface, and the share of texels covered.

    ``vertices``/``normals`` [V, 3] and ``uvs`` [V, 2] are per (unwrapped) vertex, ``faces`` [F, 3] index them.
    Charts are dilated by ``dilation`` texels; texels still empty take the mean colour."""
    face_map, bary = rasterize_uv(uvs, faces, size)
    covered = face_map >= 0
    corners = faces[face_map[covered]]  # [T, 3]
    weights = bary[covered][..., None]  # [T, 3, 1]
    points = (vertices[corners] * weights).sum(1).astype(np.float32)
    blended = (normals[corners] * weights).sum(1)
    blended /= np.maximum(np.linalg.norm(blended, axis=-1, keepdims=True), 1e-12)
    image = np.zeros((size, size, 3), np.float32)
    image[covered] = colour_fn(points, blended.astype(np.float32))
    image, filled = dilate(image, covered, dilation)
    if covered.any():
        image[~filled] = image[covered].mean(0)
    return (image + 0.5).clip(0, 255).astype(np.uint8), float(covered.mean())
