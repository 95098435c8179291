"""Faces in video frames with MediaPipe Face Landmarker (offline; mediapipe 1.2.x, `[preprocess]`).

What one tracked frame gives: 478 landmarks (pixel x, y and MediaPipe's relative depth z, in pixel
units), 52 blendshape scores in [0, 1] and the 4x4 facial transformation matrix (head pose: the
canonical face model, in centimetres, into MediaPipe's camera space). That camera is an OpenGL
perspective camera with a fixed vertical field of view of 63 degrees and the principal point at the
image centre (`MEDIAPIPE_FOV_DEG`; checked here: re-projecting the canonical model with it lands on
the 2D landmarks to a few pixels, any other focal length does far worse).

Action units from blendshapes (OpenFace intensities are 0..5, so AU = 5 x score, clipped):

    AU01 (inner brow raiser)  = browInnerUp
    AU04 (brow lowerer)       = mean(browDownLeft, browDownRight)
    AU05 (upper lid raiser)   = mean(eyeWideLeft, eyeWideRight)
    AU06 (cheek raiser)       = mean(cheekSquintLeft, cheekSquintRight)
    AU07 (lid tightener)      = mean(eyeSquintLeft, eyeSquintRight)
    AU45 (blink)              = mean(eyeBlinkLeft, eyeBlinkRight)
    AU25 (lips part)          = jawOpen   (not used by our model; TalkingGaussian's reader needs the column)

iBUG-68 landmarks (`IBUG68_FROM_MEDIAPIPE`): the usual correspondence of the 68-point layout with
MediaPipe's mesh vertices: jaw 0-16 along the face oval, brows 17-26, nose 27-35, eyes 36-47 and the
mouth 48-67 (outer lip from the subject's right corner 61 clockwise, inner lip from 78), image-left
first as in iBUG.
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from embedtalk_sdk.runtime.aus import CSV_COLUMNS
from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.protobuf import VARINT, fields, read_varint

MEDIAPIPE_FOV_DEG = 63.0
N_LANDMARKS = 478

IBUG68_FROM_MEDIAPIPE = np.array([
    # jaw 0-16 (image left -> chin 8 -> image right)
    234, 93, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 323, 454,
    # brows 17-21 (subject's right, outer -> inner), 22-26 (subject's left, inner -> outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30, lower nose 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41, left eye 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lip 48-59
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lip 60-67
    78, 82, 13, 312, 308, 317, 14, 87,
])  # fmt: skip

# The lower face oval, subject's right jaw angle -> chin -> left jaw angle: the head / neck boundary.
JAW_CHAIN = np.array([132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361])
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
                      377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109])
MOUTH_IBUG = np.arange(48, 68)
INNER_LIP_UP, INNER_LIP_DOWN = 13, 14
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263

AU_BLENDSHAPES = {
    "AU01_r": ("browInnerUp",),
    "AU04_r": ("browDownLeft", "browDownRight"),
    "AU05_r": ("eyeWideLeft", "eyeWideRight"),
    "AU06_r": ("cheekSquintLeft", "cheekSquintRight"),
    "AU07_r": ("eyeSquintLeft", "eyeSquintRight"),
    "AU25_r": ("jawOpen",),
    "AU45_r": ("eyeBlinkLeft", "eyeBlinkRight"),
}
# au.csv as preprocess writes it: the model's AUs plus AU25 (jaw open), kept for inspection.
AU_CSV_COLUMNS = (*CSV_COLUMNS[:-1], "AU25_r", CSV_COLUMNS[-1])


class FaceModelError(EmbedTalkError, ValueError):
    """A face-landmarker model file that cannot be used."""


def focal_from_fov(height: int, fov_deg: float = MEDIAPIPE_FOV_DEG) -> float:
    """Focal length in pixels of a camera whose vertical field of view is fov_deg."""
    return (height / 2.0) / float(np.tan(np.deg2rad(fov_deg) / 2.0))


def to_ibug68(landmarks: np.ndarray) -> np.ndarray:
    """MediaPipe landmarks [..., 478, C] -> the iBUG-68 subset [..., 68, C]."""
    return landmarks[..., IBUG68_FROM_MEDIAPIPE, :]


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over the outer-eye-corner distance, [...] from landmarks [..., 478, >=2]."""
    gap = np.linalg.norm(landmarks[..., INNER_LIP_UP, :2] - landmarks[..., INNER_LIP_DOWN, :2], axis=-1)
    eyes = np.linalg.norm(landmarks[..., EYE_OUTER_RIGHT, :2] - landmarks[..., EYE_OUTER_LEFT, :2], axis=-1)
    return gap / np.maximum(eyes, 1e-6)


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """Outer-eye-corner distance in pixels [...] from landmarks [..., 478, >=2]."""
    return np.linalg.norm(landmarks[..., EYE_OUTER_RIGHT, :2] - landmarks[..., EYE_OUTER_LEFT, :2], axis=-1)


def aus_from_blendshapes(scores: np.ndarray, names: list[str],
                         columns: tuple[str, ...] = AU_CSV_COLUMNS) -> np.ndarray:
    """Blendshape scores [n, 52] (named by `names`) -> AU intensities [n, len(columns)] in 0..5."""
    idx = {name: k for k, name in enumerate(names)}
    out = []
    for col in columns:
        parts = AU_BLENDSHAPES[col]
        missing = [p for p in parts if p not in idx]
        if missing:
            raise FaceModelError(f"the face model gives no blendshape {missing[0]!r} (needed for {col})")
        out.append(np.mean([scores[:, idx[p]] for p in parts], axis=0))
    return np.clip(5.0 * np.stack(out, axis=1), 0.0, 5.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The canonical face mesh inside the .task bundle (a protobuf, read without protobuf classes).


def _proto_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message: ints, or bytes for types 1, 2, 5."""
    return [(n, w, v if w == VARINT else buf[v[0]:v[1]]) for n, w, v in fields(buf)]


def canonical_face_mesh(task_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The canonical face model of a Face Landmarker .task file.

    Returns (vertices [468, 3] float64 in centimetres: x to the subject's left, y up, z out of the
    face; triangles [T, 3] int64). Read from geometry_pipeline_metadata_landmarks.binarypb
    (GeometryPipelineMetadata.canonical_mesh: Mesh3d with vertex_buffer x,y,z,u,v and index_buffer).
    """
    try:
        with zipfile.ZipFile(task_path) as zf:
            blob = zf.read("geometry_pipeline_metadata_landmarks.binarypb")
        mesh = next(v for f, w, v in _proto_fields(blob) if f == 1 and w == 2)
        floats: list[float] = []
        indices: list[int] = []
        for f, w, v in _proto_fields(mesh):
            if f == 3 and w == 5:
                floats.append(struct.unpack("<f", v)[0])
            elif f == 3 and w == 2:
                floats.extend(np.frombuffer(v, "<f4").tolist())
            elif f == 4 and w == 0:
                indices.append(int(v))
            elif f == 4 and w == 2:
                j = 0
                while j < len(v):
                    x, j = read_varint(v, j, len(v))
                    indices.append(x)
    except (zipfile.BadZipFile, KeyError, StopIteration, ValueError, IndexError) as e:
        raise FaceModelError(f"{task_path}: not a MediaPipe Face Landmarker .task with a face geometry "
                             f"pipeline ({type(e).__name__}); give face_landmarker.task (v2, with blendshapes)") from e
    verts = np.asarray(floats, np.float64).reshape(-1, 5)[:, :3]
    tris = np.asarray(indices, np.int64).reshape(-1, 3)
    if verts.shape[0] != 468:
        raise FaceModelError(f"{task_path}: canonical mesh has {verts.shape[0]} vertices, expected 468")
    return verts, tris


# ---------------------------------------------------------------------------------------------
# Tracking.


@dataclass
class FaceTrack:
    """Per-frame face tracking of a clip (the largest face where there are several).

    landmarks: [n, 478, 3] float32 pixel x, y and MediaPipe's relative depth z (pixels).
    blendshapes: [n, 52] float32 scores; names: their 52 names.
    matrices: [n, 4, 4] float32 MediaPipe facial transformation matrices (canonical cm -> camera).
    found: [n] bool, a face was detected (rows of frames without one are interpolated).
    faces: [n] int, how many faces were detected.
    """

    landmarks: np.ndarray
    blendshapes: np.ndarray
    names: list[str]
    matrices: np.ndarray
    found: np.ndarray
    faces: np.ndarray
    width: int
    height: int

    def save(self, path: Path) -> None:
        np.savez(path, landmarks=self.landmarks, blendshapes=self.blendshapes, names=np.array(self.names),
                 matrices=self.matrices, found=self.found, faces=self.faces,
                 size=np.array([self.width, self.height]))

    @classmethod
    def load(cls, path: Path) -> "FaceTrack":
        with np.load(path, allow_pickle=False) as z:
            w, h = (int(v) for v in z["size"])
            return cls(z["landmarks"], z["blendshapes"], [str(s) for s in z["names"]], z["matrices"],
                       z["found"], z["faces"], w, h)


def load_mediapipe():
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("preprocessing needs mediapipe: pip install 'embedtalk-sdk[preprocess]'") from e
    return mp, BaseOptions, vision


def check_model(path: str | Path, what: str, option: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FaceModelError(f"{p}: {what} model not found; pass its path with {option}")
    return p


class FaceLandmarker:
    """MediaPipe Face Landmarker on RGB uint8 frames. Use as a context manager.

    video=True tracks across frames (timestamps must increase); False treats frames independently.
    """

    def __init__(self, model_path: str | Path, num_faces: int = 2, video: bool = True) -> None:
        mp, base_options, vision = load_mediapipe()
        self._mp = mp
        path = check_model(model_path, "face landmarker", "--face-model")
        opts = vision.FaceLandmarkerOptions(
            base_options=base_options(model_asset_path=str(path)),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=num_faces, output_face_blendshapes=True, output_facial_transformation_matrixes=True,
        )  # fmt: skip
        try:
            self._task = vision.FaceLandmarker.create_from_options(opts)
        except Exception as e:  # mediapipe raises RuntimeError / ValueError for bad model files
            raise FaceModelError(f"{path}: not a usable Face Landmarker model ({e}); "
                                 "give face_landmarker.task (v2, with blendshapes)") from e
        self._video = video

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None

    def detect(self, frame: np.ndarray, timestamp_ms: int = 0) -> list[dict]:
        """Faces in one RGB uint8 frame [H, W, 3], largest first: dicts with "landmarks" [478, 3]
        (pixels), "blendshapes" [52], "names", "matrix" [4, 4]."""
        h, w = frame.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        res = self._task.detect_for_video(image, int(timestamp_ms)) if self._video else self._task.detect(image)
        faces = []
        for k, lms in enumerate(res.face_landmarks):
            pts = np.array([[p.x * w, p.y * h, p.z * w] for p in lms], np.float32)
            shapes = res.face_blendshapes[k] if res.face_blendshapes else []
            faces.append({
                "landmarks": pts,
                "blendshapes": np.array([b.score for b in shapes], np.float32),
                "names": [b.category_name for b in shapes],
                "matrix": np.asarray(res.facial_transformation_matrixes[k], np.float32)
                if res.facial_transformation_matrixes else np.eye(4, dtype=np.float32),
            })  # fmt: skip
        faces.sort(key=lambda f: -float(np.prod(np.ptp(f["landmarks"][:, :2], axis=0))))
        return faces


def track_faces(frames: Iterable[np.ndarray], n: int, model_path: str | Path, fps: float = 25.0,
                progress: Callable[[int, int], None] | None = None) -> FaceTrack:
    """Track the (largest) face through n RGB frames. Frames without a face keep found=False and
    zero rows; `fill_missing` interpolates them."""
    lms = np.zeros((n, N_LANDMARKS, 3), np.float32)
    mats = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    shapes: np.ndarray | None = None
    names: list[str] = []
    found = np.zeros(n, bool)
    faces = np.zeros(n, np.int64)
    w = h = 0
    with FaceLandmarker(model_path, num_faces=2, video=True) as lm:
        for i, frame in enumerate(frames):
            if i >= n:
                break
            h, w = frame.shape[:2]
            det = lm.detect(frame, round(i * 1000.0 / fps))
            faces[i] = len(det)
            if det:
                best = det[0]
                if shapes is None:
                    names = best["names"]
                    shapes = np.zeros((n, len(names)), np.float32)
                lms[i], mats[i], found[i] = best["landmarks"], best["matrix"], True
                shapes[i] = best["blendshapes"]
            if progress:
                progress(i + 1, n)
    if shapes is None:
        shapes = np.zeros((n, 0), np.float32)
    return FaceTrack(lms, shapes, names, mats, found, faces, w, h)


def fill_missing(track: FaceTrack) -> FaceTrack:
    """Linear interpolation (edge hold) of the rows of frames where no face was found."""
    ok = np.flatnonzero(track.found)
    if len(ok) == 0 or len(ok) == len(track.found):
        return track
    t = np.arange(len(track.found))

    def interp(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(len(a), -1)
        out = np.stack([np.interp(t, ok, flat[ok, j]) for j in range(flat.shape[1])], axis=1)
        return out.reshape(a.shape).astype(a.dtype)

    return FaceTrack(interp(track.landmarks), interp(track.blendshapes), track.names,
                     interp(track.matrices), track.found, track.faces, track.width, track.height)
