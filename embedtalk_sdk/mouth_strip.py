"""Mouth strips: the truth's most open and most closed frames, its mouth above the avatar's.

The picture a person checks lip sync with (demo's `mouth_strip.png`, eval's `mouth_strip.png` of
the frames rendered as `speak` drives the avatar): teeth where the truth is widest, lips shut
where it is closed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


def strip_picks(opening: np.ndarray, per_side: int = 4) -> list[int]:
    """Frame indices: the `per_side` most open, then the `per_side` most closed (each in time order)."""
    order = np.argsort(np.asarray(opening), kind="stable")
    return sorted(int(i) for i in order[::-1][:per_side]) + sorted(int(i) for i in order[:per_side])


def box_around(points: np.ndarray, width: int, height: int, margin: float = 0.35) -> Box:
    """The box around pixel points [K, 2] grown by `margin` of its size on each side, inside the image."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = (hi - lo) * margin + 2
    x0, y0 = np.floor(lo - pad).astype(int)
    x1, y1 = np.ceil(hi + pad).astype(int)
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def save_mouth_strip(frames: Mapping[int, np.ndarray] | Sequence[np.ndarray],
                     truth: Mapping[int, np.ndarray] | Sequence[np.ndarray],
                     boxes: Mapping[int, Box] | Sequence[Box], opening: np.ndarray, path: Path,
                     picks: Sequence[int] | None = None, label: str = "avatar") -> None:
    """PNG of frames `picks` (default `strip_picks(opening)`): truth[n] (a mouth crop) above
    frames[n] cut to boxes[n]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = strip_picks(opening) if picks is None else list(picks)
    fig, axes = plt.subplots(2, len(picks), figsize=(1.6 * len(picks), 3.6), dpi=110, squeeze=False)
    for c, n in enumerate(picks):
        x0, y0, x1, y1 = boxes[n]
        for r, (name, img) in enumerate((("truth", truth[n]), (label, frames[n][y0:y1, x0:x1]))):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_title(f"{name} {n}\nopen {opening[n]:.2f}" if r == 0 else name, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
