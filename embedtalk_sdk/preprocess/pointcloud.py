"""A dense initial point cloud for the head, from a few frames of one monocular clip.

No multi-view stereo is possible with one static camera and a nearly still head, so each chosen
frame's head pixels are back-projected onto a surface: the person's face surface (the landmark
template of `headpose.fit_head_poses`, posed for the frame, interpolated between landmarks; the
mouth opening is left out, so the mouth interior falls through to the surface behind it), and where
the face does not cover a head pixel (hair, ears, neck under the chin, the mouth cavity) the head
ellipsoid
`HEAD_CENTRE_CM` / `HEAD_RADII_CM`; pixels whose ray misses even that (hair sticking out) go onto the
plane through the head centre facing the camera. Points get the pixel's colour, are merged over the
frames on a voxel grid (mean colour per voxel) and subsampled.
"""
from __future__ import annotations

import numpy as np

from embedtalk_sdk.preprocess.headpose import CM, HEAD_CENTRE_CM, HEAD_RADII_CM, project_gl

INNER_LIP_RING = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)


def mesh_depth(verts_cam: np.ndarray, rows: np.ndarray, cols: np.ndarray, focal: float, cx: float,
               cy: float) -> np.ndarray:
    """Depth (distance along -z) of the face surface at pixel centres (rows, cols) [M], NaN where the
    face does not cover the pixel or inside the mouth opening.

    The surface is the piecewise-linear interpolation of the projected landmark depths over their
    Delaunay triangulation (the face oval is convex enough for that; the head turns only a few
    tens of degrees in a talking-head clip, so the nose hides little).
    """
    import matplotlib.tri as mtri  # scipy's find_simplex is ~1000x slower here
    from matplotlib.path import Path as PolyPath

    from embedtalk_sdk.preprocess.face import FACE_OVAL

    uv = project_gl(verts_cam, focal, cx, cy)
    pix = np.stack([cols + 0.5, rows + 0.5], axis=1)
    depth = np.full(len(pix), np.nan)
    # only pixels on the face: scipy's simplex search is slow for points outside the hull
    face = PolyPath(uv[FACE_OVAL]).contains_points(pix) & ~PolyPath(uv[list(INNER_LIP_RING)]).contains_points(pix)
    if face.any():
        tri = mtri.Triangulation(uv[:, 0], uv[:, 1])
        z = mtri.LinearTriInterpolator(tri, -verts_cam[:, 2])(pix[face, 0], pix[face, 1])
        depth[face] = np.ma.filled(z.astype(np.float64), np.nan)
    return depth


def _rays(width: int, height: int, focal: float, cx: float, cy: float, rows: np.ndarray,
          cols: np.ndarray) -> np.ndarray:
    """OpenGL camera-space ray directions [M,3] with z = -1, through pixel centres."""
    return np.stack([(cols + 0.5 - cx) / focal, -(rows + 0.5 - cy) / focal, -np.ones(len(rows))], axis=1)


def frame_points(image: np.ndarray, head_mask: np.ndarray, rot: np.ndarray, trans: np.ndarray,
                 template: np.ndarray, focal: float, cx: float, cy: float,
                 scale: float = 1.0, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Back-project one frame's head pixels.

    image: uint8 [H,W,3]; head_mask: bool [H,W]; rot [3,3], trans [3]: head (canonical cm) -> OpenGL
    camera (cm); template [468,3] cm; stride: use every stride-th pixel row and column; scale: head size relative to the canonical model (scales the ellipsoid's
    radii; its centre stays the world origin).
    Returns (world points [M,3] in metres, colours [M,3] in [0,1]).
    """
    h, w = head_mask.shape
    rows, cols = np.nonzero(head_mask[::stride, ::stride])
    rows, cols = rows * stride, cols * stride
    dirs = _rays(w, h, focal, cx, cy, rows, cols)  # z = -1: a point is dirs * depth
    depth = mesh_depth(template @ rot.T + trans, rows, cols, focal, cx, cy)
    miss = ~np.isfinite(depth)
    if miss.any():  # the head ellipsoid, in camera space: |A^-1 R^T (p - c)| = 1
        centre = rot @ HEAD_CENTRE_CM + trans
        radii = HEAD_RADII_CM * scale
        m = rot.T  # camera -> head rotation
        o = (m @ (-centre)) / radii  # camera origin in unit-sphere coordinates
        d = (dirs[miss] @ m.T) / radii
        a = np.einsum("ij,ij->i", d, d)
        b = 2 * d @ o
        c = o @ o - 1.0
        disc = b * b - 4 * a * c
        t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), -centre[2])
        depth[miss] = t
    pts_cam = dirs * depth[:, None]
    pts_head = (pts_cam - trans) @ rot  # R^T (p - t), canonical cm
    world = (pts_head - HEAD_CENTRE_CM) * CM
    return world, image[rows, cols].astype(np.float32) / 255.0


def merge_points(points: list[np.ndarray], colours: list[np.ndarray], voxel: float, target: int,
                 seed: int = 0) -> np.ndarray:
    """Voxel-merge (mean position and colour per `voxel`-metre cell) and subsample to <= target.

    Returns [P, 6] float32 xyz + rgb.
    """
    xyz = np.concatenate(points)
    rgb = np.concatenate(colours)
    cells = np.floor(xyz / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 6))
    np.add.at(sums, inv, np.concatenate([xyz, rgb], axis=1))
    merged = sums / counts[:, None]
    if len(merged) > target:
        merged = merged[np.random.default_rng(seed).choice(len(merged), target, replace=False)]
    return merged.astype(np.float32)


def pick_frames(yaw: np.ndarray, mouth: np.ndarray, k: int = 8) -> list[int]:
    """k frames spread over head yaw (quantiles) plus the two with the widest-open mouth."""
    n = len(yaw)
    order = np.argsort(yaw)
    picks = [int(order[int(round(q * (n - 1)))]) for q in np.linspace(0.02, 0.98, max(k - 2, 1))]
    picks += [int(i) for i in np.argsort(mouth)[-2:]]
    return sorted(set(picks))
