"""Head pose -> the dataset's camera track (docs/interfaces.md: head fixed at the origin, camera moving,
OpenGL camera-to-world, metres).

MediaPipe gives, per frame, a pose of its canonical face model (centimetres) in a 63-degree
perspective camera (`face.MEDIAPIPE_FOV_DEG`). That pose is fitted to a generic face, so it lands
~5 px off a real person's landmarks at 512 px. `fit_head_poses` refines it: it reconstructs a
person-specific template of the 468 mesh landmarks (each frame's landmarks back-projected at the
current pose's depth, taken into the head frame, median over frames), then solves each frame's pose by
PnP against the template's most rigid landmarks (the ones that move least in the head frame: not the
lips, jaw or lids). Two rounds bring the re-projection error to ~1 px on the real test clips. A light
Gaussian filter over time (`smooth_poses`) then removes the remaining jitter.

World frame = the canonical face frame (x to the subject's left, y up, the face looking +z), shifted
so that the head ellipsoid's centre `HEAD_CENTRE_CM` is the origin, and scaled to metres.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

# The head as an ellipsoid around the canonical face model (cm): skull ~19 cm deep behind the brow,
# ~23 cm from chin to crown, ~16 cm wide at the ears. Centre and radii in canonical coordinates.
HEAD_CENTRE_CM = np.array([0.0, 2.0, -4.0])
HEAD_RADII_CM = np.array([8.0, 11.5, 9.8])
CM = 0.01  # metres per centimetre

_FLIP = np.diag([1.0, -1.0, -1.0])  # OpenGL camera <-> OpenCV camera


def project_gl(points_cam: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """OpenGL camera-space points [..., 3] (looking down -z) -> pixel (x, y) [..., 2]."""
    depth = -points_cam[..., 2]
    return np.stack([cx + focal * points_cam[..., 0] / depth, cy - focal * points_cam[..., 1] / depth], axis=-1)


def _to_camera(rot: np.ndarray, trans: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """[n,3,3], [n,3], points [K,3] or [n,K,3] -> camera-space points [n,K,3]."""
    if pts.ndim == 2:
        return np.einsum("nij,kj->nki", rot, pts) + trans[:, None]
    return np.einsum("nij,nkj->nki", rot, pts) + trans[:, None]


def fit_head_poses(
    landmarks: np.ndarray, matrices: np.ndarray, canonical: np.ndarray, focal: float, cx: float, cy: float,
    rounds: int = 2, rigid_fraction: float = 0.6,
) -> dict:
    """Person-specific head poses from 2D landmarks, started at MediaPipe's poses.

    Args:
        landmarks: [n, 478, >=2] pixel landmarks (the first 468 are the mesh vertices).
        matrices: [n, 4, 4] MediaPipe facial transformation matrices (canonical cm -> OpenGL camera cm).
        canonical: [468, 3] canonical mesh vertices (cm).
        focal, cx, cy: the pixel camera the matrices assume.
        rounds: template / PnP alternations.
        rigid_fraction: share of landmarks (the most rigid) used for PnP.

    Returns dict: rot [n,3,3], trans [n,3] (cm; head frame -> OpenGL camera), template [468,3] (cm,
    canonical frame), rigid (landmark ids used), error_mediapipe_px, error_px (mean re-projection
    error of all 468 landmarks before / after).
    """
    import cv2  # opencv comes with mediapipe

    uv = landmarks[:, :468, :2].astype(np.float64)
    rot = matrices[:, :3, :3].astype(np.float64).copy()
    trans = matrices[:, :3, 3].astype(np.float64).copy()
    template = canonical.astype(np.float64).copy()
    k_cv = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1.0]])
    err0 = float(np.linalg.norm(project_gl(_to_camera(rot, trans, template), focal, cx, cy) - uv, axis=-1).mean())
    rigid = np.arange(468)
    for _ in range(rounds):
        cam = _to_camera(rot, trans, template)
        depth = -cam[..., 2]
        back = np.stack([(uv[..., 0] - cx) * depth / focal, -(uv[..., 1] - cy) * depth / focal, -depth], axis=-1)
        in_head = np.einsum("nji,nkj->nki", rot, back - trans[:, None])  # R^T (p - t)
        template = np.median(in_head, axis=0)
        spread = np.linalg.norm(in_head - template, axis=-1).mean(axis=0)
        rigid = np.sort(np.argsort(spread)[: max(12, int(rigid_fraction * 468))])
        obj = np.ascontiguousarray(template[rigid])
        for i in range(len(uv)):
            rvec, _ = cv2.Rodrigues(_FLIP @ rot[i])
            tvec = (_FLIP @ trans[i]).reshape(3, 1)
            ok, rvec, tvec = cv2.solvePnP(obj, np.ascontiguousarray(uv[i, rigid]), k_cv, None, rvec, tvec,
                                          True, cv2.SOLVEPNP_ITERATIVE)  # fmt: skip
            if ok and np.all(np.isfinite(tvec)) and tvec[2, 0] > 0:
                rot[i] = _FLIP @ cv2.Rodrigues(rvec)[0]
                trans[i] = _FLIP @ tvec[:, 0]
    err = float(np.linalg.norm(project_gl(_to_camera(rot, trans, template), focal, cx, cy) - uv, axis=-1).mean())
    return {"rot": rot, "trans": trans, "template": template, "rigid": rigid,
            "error_mediapipe_px": err0, "error_px": err}


def smooth_poses(rot: np.ndarray, trans: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian filter over time (sigma in frames; 0 = none) of rotations (as rotation vectors
    relative to their mean, which is exact enough for a head's few tens of degrees) and translations."""
    if sigma <= 0 or len(rot) < 2:
        return rot, trans
    rs = Rotation.from_matrix(rot)
    mean = rs.mean()
    rel = (mean.inv() * rs).as_rotvec()
    rel = gaussian_filter1d(rel, sigma, axis=0, mode="nearest")
    t = gaussian_filter1d(trans, sigma, axis=0, mode="nearest")
    return (mean * Rotation.from_rotvec(rel)).as_matrix(), t


def camera_track(rot: np.ndarray, trans: np.ndarray, centre_cm: np.ndarray = HEAD_CENTRE_CM) -> np.ndarray:
    """Head poses (canonical cm -> OpenGL camera cm) -> OpenGL camera-to-world [n,4,4] in metres,
    with world = (canonical - centre_cm) * 0.01."""
    n = len(rot)
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = CM * (np.einsum("nij,j->ni", rot, centre_cm) + trans)
    return np.linalg.inv(w2c)


def canonical_to_world(points_cm: np.ndarray, centre_cm: np.ndarray = HEAD_CENTRE_CM) -> np.ndarray:
    """Canonical-frame points (cm) -> world points (m)."""
    return (np.asarray(points_cm) - centre_cm) * CM
