"""A synthetic talking speaker in the TalkingGaussian dataset layout (docs/interfaces.md).

The ground truth is ray-cast in numpy from an analytic head, never splatted, so a Gaussian
model has to genuinely fit it. Head frame = world frame (metres-ish):

- the head is the ellipsoid (x/0.09)^2 + (y/0.12)^2 + (z/0.10)^2 = 1 centred at the origin,
  x to the subject's left (image right), y up, the face looking down +z;
- features are painted on that surface with lighting baked in the head frame (no view
  dependence): hair cap, brows (raised by AU01), eyes with lids (closed on blinks), a shaded
  nose bump, lips around an opening that follows the speech; through the opening the ray hits
  a recessed mouth wall (dark, upper teeth, tongue), so the mouth has real 3D structure;
- the head stays put and the camera moves (a head moving in front of a static camera); the
  torso is a static image-space RGBA layer over a static background.

MOUTH_CENTER is the mouth's centre on the surface, for mouth-weighted losses.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

from embedtalk_sdk.data.layout import (
    encode_image, write_au_csv, write_image, write_landmarks, write_npy, write_transforms, write_wav,
)
from embedtalk_sdk.runtime.audio.speech import SpeechTrack, synthesize_speech

HEAD_RADII = np.array([0.09, 0.12, 0.10])
MOUTH_Y = -0.060
MOUTH_CENTER = np.array([0.0, MOUTH_Y, 0.10 * np.sqrt(1.0 - (MOUTH_Y / 0.12) ** 2)])
CAMERA_DISTANCE = 0.62
CAMERA_DROP = 0.035  # the camera sits a little low so the head is above centre, torso below
HEAD_FRACTION = 0.5  # head height / image height
BLINK_PEAK = 3.5  # AU45 at a fully closed eye
_TEST_SALT = 1_000_003  # test sentences never reuse the training sentence's seed
_LIGHT = np.array([0.35, 0.45, 0.85]) / np.linalg.norm([0.35, 0.45, 0.85])

_SKIN = np.array([0.88, 0.68, 0.56])
_HAIR = np.array([0.24, 0.15, 0.09])
_BROW = np.array([0.22, 0.14, 0.09])
_LIP = np.array([0.74, 0.36, 0.35])
_SCLERA = np.array([0.94, 0.92, 0.89])
_IRIS = np.array([0.33, 0.45, 0.52])
_SHIRT = np.array([0.24, 0.33, 0.52])


@dataclass(frozen=True)
class FaceState:
    """What moves on the face in one frame: all in [0, 1]."""

    mouth_open: float = 0.0
    blink: float = 0.0  # 0 open .. 1 closed
    brow_raise: float = 0.0


@dataclass(frozen=True)
class View:
    """A pinhole camera: OpenGL camera-to-world [4,4], focal length and image size (square)."""

    c2w_gl: np.ndarray
    focal: float
    size: int


# ---------------------------------------------------------------------------------------------
# Small maths helpers.


def _smoothstep(e0: float | np.ndarray, e1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _inside(d: np.ndarray, soft: float) -> np.ndarray:
    """Soft indicator of d < 0 (d a signed distance-like value), soft edge of width `soft`."""
    return _smoothstep(soft, -soft, d)


def _surface_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """z of the ellipsoid's front surface above (x, y)."""
    a, b, c = HEAD_RADII
    return c * np.sqrt(np.maximum(1.0 - (x / a) ** 2 - (y / b) ** 2, 0.0))


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation [3,3]: yaw about y, pitch about x, roll about z (radians)."""
    cy, sy, cp, sp, cr, sr = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


# ---------------------------------------------------------------------------------------------
# The face: colour of a surface point, given the ray that hit it.


def _lip_lines(x: np.ndarray, state: FaceState) -> dict[str, np.ndarray]:
    """Heights [M] of the lip edges above x [M] (upper/lower, inner/outer) and the half-widths
    w_out (lips) and w_in (opening) as 0-d arrays."""
    h = 0.024 * state.mouth_open  # opening height at the centre
    w_out, w_in = 0.026, 0.021 + 0.003 * state.mouth_open
    q_in = np.sqrt(np.maximum(1.0 - (x / w_in) ** 2, 0.0))
    q_out = np.sqrt(np.maximum(1.0 - (x / w_out) ** 2, 0.0)) ** 0.6
    upper_in = MOUTH_Y + 0.25 * h * q_in  # the lower lip travels 3x as far as the upper
    lower_in = MOUTH_Y - 0.75 * h * q_in
    philtrum = 1.0 - 0.18 * np.exp(-(x / 0.003) ** 2 / 2)
    return {"upper_in": upper_in, "lower_in": lower_in,
            "upper_out": upper_in + 0.0060 * q_out * philtrum,
            "lower_out": lower_in - 0.0080 * q_out, "w_out": np.asarray(w_out),
            "w_in": np.asarray(w_in)}


def _nose_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bump (metres) that shades the nose: a ridge from the bridge to a rounded tip."""
    ridge = 0.010 * np.exp(-0.5 * (x / 0.0065) ** 2) * _smoothstep(0.016, 0.004, y) \
        * _smoothstep(-0.036, -0.022, y)
    tip = 0.008 * np.exp(-0.5 * (x ** 2 + ((y + 0.026) / 0.9) ** 2) / 0.0085 ** 2)
    wings = 0.004 * np.exp(-0.5 * ((np.abs(x) - 0.011) ** 2 + (y + 0.031) ** 2) / 0.005 ** 2)
    return ridge + tip + wings


def _normals(p: np.ndarray) -> np.ndarray:
    """Shading normals [M,3]: the ellipsoid's normal tilted by the nose bump's gradient."""
    n = p / HEAD_RADII ** 2
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    x, y = p[:, 0], p[:, 1]
    near = (np.abs(x) < 0.03) & (y > -0.05) & (y < 0.03) & (p[:, 2] > 0)
    if near.any():
        e = 5e-4
        xs, ys = x[near], y[near]
        gx = (_nose_height(xs + e, ys) - _nose_height(xs - e, ys)) / (2 * e)
        gy = (_nose_height(xs, ys + e) - _nose_height(xs, ys - e)) / (2 * e)
        m = n[near] - 0.7 * np.stack([gx, gy, np.zeros_like(gx)], axis=1)
        n[near] = m / np.linalg.norm(m, axis=1, keepdims=True)
    return n


def _skin_albedo(p: np.ndarray) -> np.ndarray:
    """Skin with low-frequency variation and rosy cheeks [M,3]."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    vary = 1.0 + 0.025 * np.sin(37 * x + 1.3) * np.sin(29 * y + 0.7) + 0.02 * np.sin(23 * z + 2.0)
    col = _SKIN * vary[:, None]
    cheek = np.exp(-0.5 * ((np.abs(x) - 0.047) ** 2 + (y + 0.028) ** 2) / 0.017 ** 2) * (z > 0)
    col += cheek[:, None] * np.array([0.05, -0.04, -0.03])
    return col


def _hair(p: np.ndarray, col: np.ndarray) -> None:
    """Paint the hair cap: hairline high on the forehead, down to ear level at the sides."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    line = np.interp(z, [-0.10, 0.0, 0.055, 0.10], [-0.075, -0.012, 0.058, 0.066])
    line = line + 0.004 * np.cos(70 * x)  # a gently wavy fringe
    w = _inside(line - y, 0.002)[:, None]
    strands = 1.0 + 0.07 * np.sin(90 * x + 40 * z) * np.sin(60 * y)
    col[:] = col * (1 - w) + (_HAIR * strands[:, None]) * w


def _brows(p: np.ndarray, col: np.ndarray, state: FaceState) -> None:
    """Eyebrows: arcs above the eyes; AU01 lifts them, the inner ends most."""
    x, y = p[:, 0], p[:, 1]
    for side in (-1.0, 1.0):
        u = (x - side * 0.034) * side  # > 0 towards the temple
        sel = (np.abs(u) < 0.026) & (np.abs(y - 0.048) < 0.02) & (p[:, 2] > 0)
        if not sel.any():
            continue
        us, ys = u[sel], y[sel]
        t = (us + 0.022) / 0.044  # 0 at the inner end, 1 at the outer end
        raise_ = state.brow_raise * 0.009 * (1.0 - 0.5 * t)
        centre = 0.043 + raise_ + 0.005 * (1.0 - (us / 0.022) ** 2)
        thick = 0.0032 * (1.0 - 0.45 * t)
        d = np.maximum(np.abs(ys - centre) - thick, np.abs(us) - 0.022)
        w = _inside(d, 0.0010)[:, None]
        col[sel] = col[sel] * (1 - w) + _BROW * w


def _eyes(p: np.ndarray, col: np.ndarray, state: FaceState) -> None:
    """Almond eyes with sclera, iris and pupil; the upper lid sweeps down on a blink."""
    x, y = p[:, 0], p[:, 1]
    for side in (-1.0, 1.0):
        ex, ey, ew, eh = side * 0.032, 0.018, 0.0155, 0.0075
        sel = (np.abs(x - ex) < 0.04) & (np.abs(y - ey) < 0.03) & (p[:, 2] > 0)
        if not sel.any():
            continue
        xs, ys, c = x[sel], y[sel], col[sel]
        socket = np.exp(-0.5 * (((xs - ex) / 0.013) ** 2 + ((ys - ey - 0.002) / 0.008) ** 2))
        c *= (1.0 - 0.10 * socket)[:, None]  # soft socket shadow
        q = np.maximum(1.0 - ((xs - ex) / ew) ** 2, 0.0)
        top, bottom = ey + eh * q, ey - 0.8 * eh * q
        lid = top - state.blink * (top - bottom)
        in_eye = np.minimum(_inside(ys - lid, 0.0006), _inside(bottom - ys, 0.0006))
        in_eye *= _inside(np.abs(xs - ex) - ew, 0.0006)
        r = np.hypot(xs - ex, ys - ey)
        ball = _SCLERA * (1 - _inside(r - 0.0068, 0.0007))[:, None] \
            + _IRIS * (_inside(r - 0.0068, 0.0007) - _inside(r - 0.0030, 0.0006))[:, None] \
            + 0.06 * _inside(r - 0.0030, 0.0006)[:, None]
        c = c * (1 - in_eye)[:, None] + ball * in_eye[:, None]
        lash = np.exp(-0.5 * ((ys - lid) / 0.0009) ** 2) * np.sqrt(q)
        c *= (1.0 - 0.65 * lash)[:, None]  # lash line on the lid edge
        crease = np.exp(-0.5 * ((ys - top - 0.0035) / 0.0010) ** 2) * np.sqrt(q)
        c *= (1.0 - 0.12 * crease)[:, None]
        col[sel] = c


def _nostrils(p: np.ndarray, col: np.ndarray) -> None:
    x, y = p[:, 0], p[:, 1]
    d = ((np.abs(x) - 0.0085) / 0.0038) ** 2 + ((y + 0.034) / 0.0021) ** 2
    col *= (1.0 - 0.55 * np.exp(-0.5 * d ** 1.5) * (p[:, 2] > 0))[:, None]


def _mouth_interior(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Colour seen through the lips [M,3]: the ray goes on to a wall 18 mm behind the lips."""
    z_wall = MOUTH_CENTER[2] - 0.018
    t = (z_wall - p[:, 2]) / np.minimum(d[:, 2], -1e-6)
    w = p + t[:, None] * d
    x, y = w[:, 0], w[:, 1]
    col = np.tile(np.array([0.20, 0.06, 0.07]), (len(p), 1))
    tongue = _inside(((x / 0.015) ** 2 + ((y - MOUTH_Y + 0.015) / 0.007) ** 2) - 1.0, 0.15)
    col = col * (1 - tongue)[:, None] + np.array([0.55, 0.22, 0.24]) * tongue[:, None]
    teeth = _inside(np.abs(y - (MOUTH_Y - 0.0005)) - 0.0022, 0.0006) * _inside(np.abs(x) - 0.015,
                                                                                 0.003)
    enamel = np.array([0.86, 0.84, 0.78]) * (1.0 - 0.25 * (np.abs(x) / 0.015) ** 2)[:, None]
    col = col * (1 - teeth)[:, None] + enamel * teeth[:, None]
    return col


def _lips(p: np.ndarray, col: np.ndarray, state: FaceState) -> tuple[np.ndarray, np.ndarray]:
    """Paint red lips (the lower lip moves down as the mouth opens) into the albedo `col`.

    Returns (idx [K], opening [K]): the points near the mouth and how much of each lies in the
    opening, to be replaced by the mouth interior after shading.
    """
    x, y = p[:, 0], p[:, 1]
    idx = np.nonzero((np.abs(x) < 0.032) & (np.abs(y - MOUTH_Y + 0.006) < 0.03) & (p[:, 2] > 0))[0]
    xs, ys, c = x[idx], y[idx], col[idx]
    e = _lip_lines(xs, state)
    chin = np.exp(-0.5 * ((ys - e["lower_out"] + 0.005) / 0.003) ** 2) * _inside(
        np.abs(xs) - 0.02, 0.006)
    c *= (1.0 - 0.12 * chin)[:, None]  # shadow under the lower lip, follows it down
    lip_d = np.maximum.reduce([ys - e["upper_out"], e["lower_out"] - ys, np.abs(xs) - e["w_out"]])
    lip = _inside(lip_d, 0.0007)
    tone = np.where(ys > MOUTH_Y, 0.88, 1.0)[:, None] * _LIP  # upper lip a touch darker
    c = c * (1 - lip)[:, None] + tone * lip[:, None]
    seam = np.exp(-0.5 * ((ys - MOUTH_Y) / 0.0010) ** 2) * _inside(np.abs(xs) - e["w_in"], 0.002)
    c *= (1.0 - 0.45 * seam)[:, None]  # the closed-lip line
    col[idx] = c
    hole = np.maximum.reduce([ys - e["upper_in"], e["lower_in"] - ys, np.abs(xs) - e["w_in"]])
    opening = _inside(hole, 0.0006) * (e["upper_in"] - e["lower_in"] > 1e-5)
    return idx, opening


def surface_colour(p: np.ndarray, d: np.ndarray, state: FaceState) -> np.ndarray:
    """Baked colour [M,3] in [0,1] of head-surface points p [M,3] hit by rays with directions d."""
    col = _skin_albedo(p)
    _hair(p, col)
    _brows(p, col, state)
    _eyes(p, col, state)
    _nostrils(p, col)
    idx, opening = _lips(p, col, state)
    col *= (0.52 + 0.55 * np.maximum(_normals(p) @ _LIGHT, 0.0))[:, None]  # baked Lambert
    keep = opening > 0
    if keep.any():  # the cavity is unlit by the face's light: it stays dark
        k, w = idx[keep], opening[keep][:, None]
        col[k] = col[k] * (1 - w) + _mouth_interior(p[k], d[k]) * w
    return np.clip(col, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Ray casting.


def _camera_rays(view: View, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """World directions [..., 3] through pixel positions (rows, cols are pixel coordinates)."""
    c2w_cv = view.c2w_gl[:3, :3] * np.array([1.0, -1.0, -1.0])
    half = view.size / 2.0
    cam = np.stack([(cols - half) / view.focal, (rows - half) / view.focal,
                    np.ones_like(cols)], axis=-1)
    return cam @ c2w_cv.T


def _intersect(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays o + t d (o [3], d [M,3]) with the head ellipsoid: (hit [M], t [M])."""
    os_, ds = o / HEAD_RADII, d / HEAD_RADII
    a = np.einsum("ij,ij->i", ds, ds)
    b = 2.0 * ds @ os_
    c = os_ @ os_ - 1.0
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
    return hit & (t > 0), t


def _head_bbox(view: View) -> tuple[int, int, int, int]:
    """Pixel box (r0, r1, c0, c1), end-exclusive, holding the head's exact outline.

    The outline of the ellipsoid is the conic dual to P Q* P^T; its tangent lines x = u and
    y = v give the box in closed form.
    """
    viewmat = np.linalg.inv(view.c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0]))
    k = np.array([[view.focal, 0, view.size / 2], [0, view.focal, view.size / 2], [0, 0, 1]])
    proj = k @ viewmat[:3]
    dual = proj @ np.diag([*(HEAD_RADII ** 2), -1.0]) @ proj.T
    box = []
    for i in (1, 0):  # rows from y (index 1), cols from x (index 0)
        roots = np.roots([dual[2, 2], -2 * dual[i, 2], dual[i, i]]).real
        box += [int(np.floor(roots.min())) - 1, int(np.ceil(roots.max())) + 2]
    r0, r1, c0, c1 = (int(np.clip(v, 0, view.size)) for v in box)
    return r0, r1, c0, c1


def render_head(view: View, state: FaceState, ss: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the head: premultiplied rgb [H,W,3] and coverage alpha [H,W], float32.

    ss x ss supersampling per pixel anti-aliases the outline and the painted edges.
    """
    size = view.size
    rgb = np.zeros((size, size, 3), np.float32)
    alpha = np.zeros((size, size), np.float32)
    r0, r1, c0, c1 = _head_bbox(view)
    if r1 <= r0 or c1 <= c0:
        return rgb, alpha
    offs = (np.arange(ss) + 0.5) / ss
    rows = (np.arange(r0, r1)[:, None] + offs[None, :]).reshape(-1)
    cols = (np.arange(c0, c1)[:, None] + offs[None, :]).reshape(-1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    d = _camera_rays(view, rr, cc).reshape(-1, 3)
    o = view.c2w_gl[:3, 3]
    hit, t = _intersect(o, d)
    col = np.zeros_like(d)
    col[hit] = surface_colour(o + t[hit, None] * d[hit], d[hit], state)
    h, w = r1 - r0, c1 - c0
    col = col.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
    cov = hit.reshape(h, ss, w, ss).mean(axis=(1, 3))
    rgb[r0:r1, c0:c1] = col
    alpha[r0:r1, c0:c1] = cov
    return rgb, alpha


def project(view: View, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates [M,2] (x, y) of world points [M,3]."""
    viewmat = np.linalg.inv(view.c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0]))
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    return view.focal * cam[:, :2] / cam[:, 2:3] + view.size / 2.0


# ---------------------------------------------------------------------------------------------
# Landmarks (68-point iBUG layout, subject's right = image left = -x).


def _on_surface(x: np.ndarray, y: np.ndarray, lift: np.ndarray | float = 0.0) -> np.ndarray:
    return np.stack([x, y, _surface_z(x, y) + lift], axis=1)


def landmarks_3d(state: FaceState) -> np.ndarray:
    """The 68 landmarks [68,3] in head coordinates for a face state."""
    a, b, _ = HEAD_RADII
    phi = np.linspace(np.pi * 1.08, np.pi * 1.92, 17)
    jaw = _on_surface(0.97 * a * np.cos(phi), 0.97 * b * np.sin(phi))
    brows = []
    for side in (-1.0, 1.0):
        u = np.linspace(0.022, -0.022, 5) if side < 0 else np.linspace(-0.022, 0.022, 5)
        t = (u + 0.022) / 0.044
        y = 0.043 + state.brow_raise * 0.009 * (1 - 0.5 * t) + 0.005 * (1 - (u / 0.022) ** 2)
        brows.append(_on_surface(side * 0.034 + side * u, y))
    ny = np.linspace(0.012, -0.026, 4)
    bridge = _on_surface(np.zeros(4), ny, _nose_height(np.zeros(4), ny))
    nx = np.linspace(-0.012, 0.012, 5)
    nose_low = _on_surface(nx, np.full(5, -0.033), _nose_height(nx, np.full(5, -0.033)))
    eyes = [_eye_landmarks(side, state) for side in (-1.0, 1.0)]
    mouth = _mouth_landmarks(state)
    return np.concatenate([jaw, *brows, bridge, nose_low, *eyes, mouth]).astype(np.float64)


def _eye_landmarks(side: float, state: FaceState) -> np.ndarray:
    """Six eye points: outer corner, 2 upper lid, inner corner, 2 lower lid (iBUG order)."""
    ex, ey, ew, eh = side * 0.032, 0.018, 0.0155, 0.0075
    # iBUG goes left-to-right in the image along the top: right eye outer->inner, left inner->outer
    xs = ex + np.array([-1.0, -0.35, 0.35, 1.0, 0.35, -0.35]) * ew
    q = np.maximum(1 - ((xs - ex) / ew) ** 2, 0.0)
    top, bottom = ey + eh * q, ey - 0.8 * eh * q
    lid = top - state.blink * (top - bottom)
    ys = np.where(np.arange(6) < 3, lid, bottom)
    ys[[0, 3]] = ey
    return _on_surface(xs, ys)


def _mouth_landmarks(state: FaceState) -> np.ndarray:
    """Rows 48..67: outer lip (12) then inner lip (8), iBUG order."""
    e_out = np.array([-0.018, -0.008, 0.0, 0.008, 0.018])
    w_out = 0.026
    xs_o = np.concatenate([[-w_out], e_out, [w_out], e_out[::-1]])
    lines = _lip_lines(xs_o, state)
    ys_o = np.concatenate([[MOUTH_Y], lines["upper_out"][1:6], [MOUTH_Y],
                           lines["lower_out"][7:12]])
    w_in = float(_lip_lines(np.zeros(1), state)["w_in"])
    e_in = np.array([-0.010, 0.0, 0.010])
    xs_i = np.concatenate([[-w_in], e_in, [w_in], e_in[::-1]])
    li = _lip_lines(xs_i, state)
    ys_i = np.concatenate([[MOUTH_Y], li["upper_in"][1:4], [MOUTH_Y], li["lower_in"][5:8]])
    return np.concatenate([_on_surface(xs_o, ys_o), _on_surface(xs_i, ys_i)])


# ---------------------------------------------------------------------------------------------
# Static layers: background and torso (image space).


def background(size: int, seed: int) -> np.ndarray:
    """A wall: vertical gradient plus a few soft blobs and a gentle wave [H,W,3] float32."""
    rng = np.random.default_rng([seed, 7])
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    top, bottom = np.array([0.66, 0.71, 0.76]), np.array([0.46, 0.47, 0.52])
    img = top * (1 - yy[..., None]) + bottom * yy[..., None]
    for _ in range(4):
        cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 0.35)
        tint = rng.uniform(-0.08, 0.08, 3)
        img += tint * np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / s ** 2)[..., None]
    img += 0.03 * np.sin(2 * np.pi * (1.3 * xx + rng.uniform()))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def torso_rgba(size: int, ss: int = 4) -> np.ndarray:
    """Neck and shoulders [H,W,4] float32 (straight RGB + coverage alpha), image space."""
    offs = (np.arange(ss) + 0.5) / ss
    g = (np.arange(size)[:, None] + offs).reshape(-1) / size
    yy, xx = np.meshgrid(g, g, indexing="ij")
    u = xx - 0.5
    neck_w = 0.085 + 0.03 * _smoothstep(0.70, 0.86, yy)
    neck = (np.abs(u) < neck_w) & (yy > 0.45)
    shoulders = yy > 0.79 + np.maximum(np.abs(u) - 0.08, 0) ** 1.5
    v_neck = (np.abs(u) < 0.11 * (1 - (yy - 0.80) / 0.16)) & (yy < 0.96)
    shirt = shoulders & ~v_neck
    skin = _SKIN * 0.93 * (0.70 + 0.30 * _smoothstep(0.55, 0.80, yy))[..., None]  # chin shadow
    cloth = _SHIRT * (1.0 - 0.35 * (np.abs(u) / 0.5) ** 2)[..., None] \
        * (1.0 - 0.1 * _smoothstep(0.85, 1.0, yy))[..., None]
    body = neck | shoulders
    rgb = np.where(shirt[..., None], cloth, skin) * body[..., None]
    rgba = np.concatenate([rgb, body[..., None].astype(np.float64)], axis=-1)
    rgba = rgba.reshape(size, ss, size, ss, 4).mean(axis=(1, 3))
    a = rgba[..., 3:]
    rgba[..., :3] = np.where(a > 0, rgba[..., :3] / np.maximum(a, 1e-6), 0.0)
    return rgba.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Motion tracks.


def _events(rng: np.random.Generator, seconds: float, first: tuple[float, float],
            gap: tuple[float, float]) -> list[float]:
    """Event start times: the first in `first`, then separated by gaps drawn from `gap`."""
    times, t = [], rng.uniform(*first)
    while t < seconds:
        times.append(t)
        t += rng.uniform(*gap)
    return times


def blink_curve(t: np.ndarray, starts: list[float]) -> np.ndarray:
    """Lid closure [T] in [0,1]: 70 ms closing, 50 ms shut, 80 ms opening per blink (0.2 s)."""
    out = np.zeros_like(t)
    for s in starts:
        closing = _smoothstep(s, s + 0.07, t)
        opening = _smoothstep(s + 0.12, s + 0.20, t)
        out = np.maximum(out, closing * (1 - opening))
    return out


def _brow_curve(t: np.ndarray, rng: np.random.Generator, starts: list[float]) -> np.ndarray:
    """Brow raise [T] in [0,1]: sin^2 humps of 0.6-1.4 s and random height."""
    out = np.zeros_like(t)
    for s in starts:
        dur, amp = rng.uniform(0.6, 1.4), rng.uniform(0.5, 1.0)
        u = np.clip((t - s) / dur, 0, 1)
        out = np.maximum(out, amp * np.sin(np.pi * u) ** 2)
    return out


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float, scale: float) -> np.ndarray:
    x = gaussian_filter1d(rng.standard_normal(n + 8 * int(sigma)), sigma)[4 * int(sigma):][:n]
    return scale * x / max(float(x.std()), 1e-6)


def face_tracks(n: int, fps: float, speech: SpeechTrack,
                rng: np.random.Generator) -> tuple[list[FaceState], np.ndarray]:
    """Per-frame face states and OpenFace-style AUs [n,6] (AU01,04,05,06,07,45; 0..5)."""
    t = np.arange(n) / fps
    blink = blink_curve(t, _events(rng, t[-1] + 1, (0.8, 2.5), (2.5, 4.5)))
    brow = _brow_curve(t, rng, _events(rng, t[-1] + 1, (1.0, 3.0), (3.0, 7.0)))
    mouth = speech.mouth_open(t)
    aus = np.stack([
        3.0 * brow + np.abs(_smooth_noise(rng, n, 6.0, 0.12)),
        *(np.abs(_smooth_noise(rng, n, 10.0, 0.25)) for _ in range(4)),
        BLINK_PEAK * blink + np.abs(_smooth_noise(rng, n, 4.0, 0.08)),
    ], axis=1)
    states = [FaceState(float(m), float(b), float(r)) for m, b, r in zip(mouth, blink, brow)]
    return states, np.clip(aus, 0.0, 5.0).astype(np.float32)


def camera_track(n: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """OpenGL camera-to-world [n,4,4] in head coordinates.

    A static camera films a head that sways a few degrees and millimetres; in the head's frame
    that is the camera moving: c2w_head = head_pose^-1 @ camera.
    """
    t = np.arange(n) / fps

    def sway(amplitude: float) -> np.ndarray:
        f = rng.uniform(0.05, 0.25, 2)
        ph = rng.uniform(0, 2 * np.pi, 2)
        return amplitude * (0.7 * np.sin(2 * np.pi * f[0] * t + ph[0])
                            + 0.3 * np.sin(2 * np.pi * f[1] * t + ph[1]))

    yaw, pitch, roll = (np.deg2rad(sway(d)) for d in (4.0, 2.5, 1.5))
    shift = np.stack([sway(0.004), sway(0.003), sway(0.005)], axis=1)
    cam = np.eye(4)
    cam[:3, 3] = [0.0, -CAMERA_DROP, CAMERA_DISTANCE]
    out = np.empty((n, 4, 4))
    for i in range(n):
        head = np.eye(4)
        head[:3, :3] = _rot(yaw[i], pitch[i], roll[i])
        head[:3, 3] = shift[i]
        out[i] = np.linalg.inv(head) @ cam
    return out


def focal_for(size: int) -> float:
    """Focal length (pixels) at which the head is HEAD_FRACTION of the image height."""
    return HEAD_FRACTION * size * CAMERA_DISTANCE / (2 * HEAD_RADII[1])


# ---------------------------------------------------------------------------------------------
# Point cloud.


def head_points(n: int, rng: np.random.Generator, noise: float = 0.0008) -> np.ndarray:
    """[n,6] float32 xyz + rgb: the camera-facing head surface with its neutral colours.

    Area-uniform on the ellipsoid (rejection), kept where the camera can see it, jittered by
    `noise` metres and ~0.02 in colour, as a dense multi-view reconstruction would give.
    """
    cam = np.array([0.0, -CAMERA_DROP, CAMERA_DISTANCE])
    pts = np.zeros((0, 3))
    while len(pts) < n:
        s = rng.standard_normal((4 * n, 3))
        s /= np.linalg.norm(s, axis=1, keepdims=True)
        area = np.linalg.norm(s / HEAD_RADII, axis=1)  # the ellipsoid's area element
        keep = rng.uniform(0, area.max(), len(s)) < area
        p = s[keep] * HEAD_RADII
        normal = p / HEAD_RADII ** 2
        seen = np.einsum("ij,ij->i", normal, cam - p) > 0.05 * np.linalg.norm(normal, axis=1)
        pts = np.concatenate([pts, p[seen]])
    n_cavity = n // 40
    pts = pts[: n - n_cavity]
    d = pts - cam
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rgb = surface_colour(pts, d, FaceState())
    cavity, cavity_rgb = _cavity_points(n_cavity, rng)
    pts, rgb = np.concatenate([pts, cavity]), np.concatenate([rgb, cavity_rgb])
    pts = pts + noise * rng.standard_normal(pts.shape)
    rgb = np.clip(rgb + 0.02 * rng.standard_normal(rgb.shape), 0, 1)
    return np.concatenate([pts, rgb], axis=1).astype(np.float32)


def _cavity_points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[n,3] points on the mouth's back wall and their colours [n,3]: what a reconstruction from
    frames with the mouth open sees behind the lips (hidden by the lips when it is closed)."""
    z_wall = MOUTH_CENTER[2] - 0.018
    x = rng.uniform(-0.028, 0.028, 4 * n)
    y = rng.uniform(MOUTH_Y - 0.030, MOUTH_Y + 0.004, 4 * n)
    p = np.stack([x, y, np.full(4 * n, z_wall)], axis=1)
    p = p[np.linalg.norm(p / HEAD_RADII, axis=1) < 0.96][:n]  # only where the wall is inside the head
    return p, _mouth_interior(p, np.tile([0.0, 0.0, -1.0], (len(p), 1)))


# ---------------------------------------------------------------------------------------------
# Writing the dataset.


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to render frames (sent once per worker process)."""

    out_dir: Path
    views: list[View]
    states: list[FaceState]
    torso_bg: np.ndarray  # [H,W,3] float32: exactly what TalkingDataset.torso_bg() returns
    torso_png: bytes


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _write_frame(job: _Job, i: int) -> None:
    """Render frame i and write gt_imgs/i.jpg, torso_imgs/i.png, ori_imgs/i.lms."""
    rgb, alpha = render_head(job.views[i], job.states[i])
    img = rgb + job.torso_bg * (1.0 - alpha[..., None])  # rgb is premultiplied by coverage
    img8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    write_image(job.out_dir / "gt_imgs" / f"{i}.jpg", img8)
    (job.out_dir / "torso_imgs" / f"{i}.png").write_bytes(job.torso_png)
    write_landmarks(job.out_dir / "ori_imgs" / f"{i}.lms", project(job.views[i], landmarks_3d(job.states[i])))


def _write_chunk(frames: list[int]) -> int:
    assert _JOB is not None
    for i in frames:
        _write_frame(_JOB, i)
    return len(frames)


def _render_all(job: _Job, n: int, workers: int,
                progress: Callable[[int, int], None] | None) -> None:
    """Render frames 0..n-1 over `workers` processes, reporting (done, total) as chunks finish."""
    chunks = [list(range(k, min(k + 8, n))) for k in range(0, n, 8)]
    done = 0
    if progress:
        progress(0, n)
    if workers <= 1:
        _init_worker(job)
        for c in chunks:
            done += _write_chunk(c)
            if progress:
                progress(done, n)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        for k in pool.imap_unordered(_write_chunk, chunks):
            done += k
            if progress:
                progress(done, n)


def _static_layers(out_dir: Path, size: int, seed: int) -> tuple[np.ndarray, bytes]:
    """Write bc.jpg; return torso_bg [H,W,3] float32 (as a reader will rebuild it) and the PNG.

    The composite uses the decoded JPEG and the quantised RGBA so that, away from the head,
    gt frames equal TalkingDataset.torso_bg() up to the gt frame's own JPEG error.
    """
    bg8 = np.round(background(size, seed) * 255).astype(np.uint8)
    write_image(out_dir / "bc.jpg", bg8)
    bc = np.asarray(Image.open(out_dir / "bc.jpg").convert("RGB"), np.float32) / 255.0
    rgba8 = np.round(torso_rgba(size) * 255).astype(np.uint8)
    # Encoded once and copied into every frame: the slower, smaller zlib level costs nothing.
    return composite_rgba(rgba8, bc), encode_image(rgba8, ".png", png_level=6)


def composite_rgba(rgba8: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """uint8 RGBA [H,W,4] over float background [H,W,3] -> float32 [H,W,3]."""
    rgba = rgba8.astype(np.float32) / 255.0
    a = rgba[..., 3:]
    return rgba[..., :3] * a + bg * (1.0 - a)


def synthesize_dataset(out_dir: str | Path, seconds: float = 40.0, size: int = 256,
                       fps: int = 25, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None,
                       workers: int | None = None, n_points: int = 30000) -> Path:
    """Write a synthetic talking speaker to `out_dir` in the docs/interfaces.md layout.

    seconds of speech at 16 kHz -> n = round(seconds * fps) frames of size x size pixels.
    progress(done, total) is called as frames finish. workers: processes for rendering
    (default: all cores, 1 for short clips). Returns out_dir.
    """
    out = Path(out_dir)
    for sub in ("gt_imgs", "ori_imgs", "torso_imgs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    speech = synthesize_speech(seconds, seed)
    write_wav(out / "aud.wav", speech.samples, speech.sample_rate)
    n = int(round(len(speech.samples) * fps / speech.sample_rate))
    states, aus = face_tracks(n, fps, speech, rng)
    c2w = camera_track(n, fps, rng)
    focal = focal_for(size)
    torso_bg, torso_png = _static_layers(out, size, seed)
    write_au_csv(out / "au.csv", aus, fps)
    write_transforms(out, c2w, focal, size / 2.0, size / 2.0, size, size, fps)
    write_npy(out / "points3d.npy", head_points(n_points, rng))
    views = [View(c, focal, size) for c in c2w]
    if workers is None:
        workers = 1 if n < 100 else max(1, min(os.cpu_count() or 1, 8))
    _render_all(_Job(out, views, states, torso_bg, torso_png), n, workers, progress)
    return out


def synthesize_sentence_wav(path: str | Path, seconds: float = 8.0, seed: int = 0) -> Path:
    """Write a fresh test sentence (16 kHz PCM16 wav) for demos.

    Uses a salted seed, so it is never the training sentence of synthesize_dataset(seed=seed).
    """
    speech = synthesize_speech(seconds, seed + _TEST_SALT)
    return write_wav(path, speech.samples, speech.sample_rate)
