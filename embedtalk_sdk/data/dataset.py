"""Reader for the TalkingGaussian / ER-NeRF dataset folder (numpy only; layout in
docs/interfaces.md). Works on folders written by `embedtalk_sdk.synthetic.synth` and by the
TalkingGaussian / ER-NeRF preprocessing scripts.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from embedtalk_sdk.runtime.camera import intrinsics, viewmat_from_c2w_gl
from embedtalk_sdk.runtime.aus import BLINK_CSV_COLUMN, CSV_COLUMNS
from embedtalk_sdk.runtime.errors import EmbedTalkError

SPLITS = ("train", "val", "all")


class DatasetError(EmbedTalkError, ValueError):
    """A dataset folder is malformed (a missing file raises FileNotFoundError instead)."""


class TalkingDataset:
    """The frames of one split of a talking-head dataset folder.

    Index i runs over the split's frames (0 .. len-1); `frame_ids[i]` is the frame's img_id,
    the number in gt_imgs/{img_id}.jpg. split "all" is train followed by val.

    Attributes:
        root: the folder.   split: "train" | "val" | "all".
        width, height: image size in pixels.   fps: video frame rate.
        K: [3,3] float32 intrinsics.
        frame_ids: [n] int64 img_ids.   aud_ids: [n] int64 audio-feature frame indices.
        c2w_gl: [n,4,4] float32 OpenGL camera-to-world, as stored.
        viewmats: [n,4,4] float32 world-to-camera, OpenCV convention.
        aus: [n,6] float32 raw OpenFace intensities 0..5 (AU01, AU04, AU05, AU06, AU07, AU45);
            columns absent from au.csv read as 0, except AU45 which is required.
        audio_path: aud.wav.   points3d: [P,6] float32 xyz + rgb in [0,1], or None.

    Images are decoded lazily and cached (uint8) in memory.
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist")
        self.split = split
        meta, frames = self._read_transforms(split)
        self._read_camera(meta, frames)
        self.audio_path = self._require("aud.wav", "the speech track")
        self.aus = self._read_aus()
        pts = self.root / "points3d.npy"
        self.points3d = np.load(pts, allow_pickle=False).astype(np.float32) if pts.exists() \
            else None
        self._images: dict[int, np.ndarray] = {}
        self._torso: dict[int, np.ndarray] = {}
        self._landmarks: dict[int, np.ndarray] = {}
        self._bc: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __repr__(self) -> str:
        return (f"TalkingDataset({str(self.root)!r}, split={self.split!r}: {len(self)} frames, "
                f"{self.width}x{self.height} @ {self.fps:g} fps)")

    # -- metadata -------------------------------------------------------------------------

    def _require(self, name: str, what: str) -> Path:
        path = self.root / name
        if not path.exists():
            raise FileNotFoundError(f"{self.root}: missing {name} ({what})")
        return path

    def _read_transforms(self, split: str) -> tuple[dict, list[dict]]:
        names = ["train", "val"] if split == "all" else [split]
        metas = []
        for name in names:
            path = self._require(f"transforms_{name}.json", f"the {name} cameras")
            try:
                metas.append(json.loads(path.read_text()))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: not valid JSON ({e})") from e
        frames = [f for m in metas for f in m.get("frames", [])]
        if not frames:
            raise DatasetError(f"{self.root}: transforms_{split}.json lists no frames")
        return metas[0], frames

    def _read_camera(self, meta: dict, frames: list[dict]) -> None:
        try:
            fx = float(meta.get("focal_len", meta.get("fl_x")))
            fy = float(meta.get("fl_y", fx))
            cx, cy = float(meta["cx"]), float(meta["cy"])
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{self.root}: transforms JSON needs focal_len, cx, cy") from e
        self.width = int(meta.get("w", round(2 * cx)))
        self.height = int(meta.get("h", round(2 * cy)))
        self.fps = float(meta.get("fps", 25.0))
        self.K = intrinsics(fx, fy, cx, cy)
        self.frame_ids = np.array([int(f["img_id"]) for f in frames], dtype=np.int64)
        self.aud_ids = np.array([int(f.get("aud_id", f["img_id"])) for f in frames],
                                dtype=np.int64)
        c2w = np.array([f["transform_matrix"] for f in frames], dtype=np.float64)
        if c2w.shape[1:] != (4, 4):
            raise DatasetError(f"{self.root}: transform_matrix must be 4x4, got {c2w.shape[1:]}")
        self.c2w_gl = c2w.astype(np.float32)
        self.viewmats = viewmat_from_c2w_gl(c2w)

    def _read_aus(self) -> np.ndarray:
        """[n,6] AU intensities of this split's frames; au.csv row k is img_id k."""
        path = self._require("au.csv", "OpenFace action units")
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f, skipinitialspace=True) if r]
        header = [h.strip() for h in rows[0]] if rows else []
        if BLINK_CSV_COLUMN not in header:
            raise DatasetError(f"{path}: no {BLINK_CSV_COLUMN} column (header: {header})")
        body = np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float32)
        need = int(self.frame_ids.max()) + 1
        if len(body) < need:
            raise DatasetError(f"{path}: {len(body)} rows, frames need {need}")
        cols = [body[:, header.index(c)] if c in header else np.zeros(len(body), np.float32)
                for c in CSV_COLUMNS]
        return np.stack(cols, axis=1)[self.frame_ids]

    # -- per-frame data -------------------------------------------------------------------

    def _read_image(self, rel: str, mode: str) -> np.ndarray:
        path = self._require(rel, "frame image")
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode))
        if arr.shape[:2] != (self.height, self.width):
            raise DatasetError(f"{path}: size {arr.shape[1]}x{arr.shape[0]}, "
                               f"cameras say {self.width}x{self.height}")
        return arr

    def image(self, i: int) -> np.ndarray:
        """Ground-truth frame i: float32 [H,W,3] in [0,1]."""
        fid = int(self.frame_ids[i])
        if fid not in self._images:
            self._images[fid] = self._read_image(f"gt_imgs/{fid}.jpg", "RGB")
        return self._images[fid].astype(np.float32) / 255.0

    def background(self) -> np.ndarray:
        """bc.jpg, the scene without the person: float32 [H,W,3]."""
        if self._bc is None:
            self._require("bc.jpg", "background image")
            self._bc = self._read_image("bc.jpg", "RGB").astype(np.float32) / 255.0
        return self._bc

    def torso_bg(self, i: int) -> np.ndarray:
        """Frame i's torso (torso_imgs RGBA) over bc.jpg: float32 [H,W,3], the render target's
        background."""
        fid = int(self.frame_ids[i])
        if fid not in self._torso:
            self._torso[fid] = self._read_image(f"torso_imgs/{fid}.png", "RGBA")
        rgba = self._torso[fid].astype(np.float32) / 255.0
        a = rgba[..., 3:]
        return rgba[..., :3] * a + self.background() * (1.0 - a)

    def landmarks(self, i: int) -> np.ndarray:
        """Frame i's 68 landmarks: float32 [68,2] pixel (x, y)."""
        fid = int(self.frame_ids[i])
        if fid not in self._landmarks:
            path = self._require(f"ori_imgs/{fid}.lms", "68 facial landmarks")
            lms = np.loadtxt(path, dtype=np.float32, ndmin=2)
            if lms.shape != (68, 2):
                raise DatasetError(f"{path}: expected 68 rows of 'x y', got {lms.shape}")
            self._landmarks[fid] = lms
        return self._landmarks[fid]

    def mouth_box(self, i: int, margin: float = 0.25) -> tuple[int, int, int, int]:
        """Square pixel box (x0, y0, x1, y1), end-exclusive, around the lips (landmarks 48-67).

        The side is the lips' larger extent times (1 + 2 * margin), clamped to the image.
        """
        lips = self.landmarks(i)[48:68]
        lo, hi = lips.min(axis=0), lips.max(axis=0)
        centre = (lo + hi) / 2
        half = max(float((hi - lo).max()) / 2 * (1 + 2 * margin), 4.0)
        x0, y0 = np.floor(centre - half).astype(int)
        x1, y1 = np.ceil(centre + half).astype(int)
        return (max(int(x0), 0), max(int(y0), 0), min(int(x1), self.width),
                min(int(y1), self.height))
