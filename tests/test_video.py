"""MP4 output (embedtalk_sdk.runtime.video)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from embedtalk_sdk.runtime.video import read_audio_track, read_video, write_mp4

SR = 16000


def moving_gradient(n: int, h: int = 64, w: int = 96) -> Iterator[np.ndarray]:
    """Smooth frames (what H.264 keeps well), different per frame."""
    y, x = np.mgrid[0:h, 0:w]
    for i in range(n):
        r = (x * 2 + i * 3) % 256
        g = (y * 3 + i * 2) % 256
        b = np.full_like(x, (i * 5) % 256)
        yield np.stack([r, g, b], axis=-1).astype(np.uint8)


def test_round_trip_with_audio(tmp_path):
    path = tmp_path / "clip.mp4"
    audio = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32)
    assert write_mp4(path, moving_gradient(50), fps=25, audio=audio) == 50

    frames, fps = read_video(path)
    assert frames.shape == (50, 64, 96, 3) and frames.dtype == np.uint8
    assert fps == 25.0
    written = np.stack(list(moving_gradient(50))).astype(np.float32)
    # The gradient wraps 255 -> 0 in places: compare where the image is smooth.
    smooth = (written[..., 0] < 240) & (written[..., 0] > 10) & (written[..., 1] < 240)
    assert np.abs(frames.astype(np.float32) - written)[smooth].mean() < 3.0

    track = read_audio_track(path)
    assert track is not None
    samples, rate = track
    assert rate == SR
    assert abs(len(samples) / rate - 2.0) < 0.1
    spectrum = np.abs(np.fft.rfft(samples[: 2 * SR] * np.hanning(2 * SR)))
    assert abs(np.argmax(spectrum) * rate / (2 * SR) - 440) < 2
    assert 0.4 < np.max(np.abs(samples)) < 0.6
    assert not list(tmp_path.glob(".*.part"))


def test_no_audio_and_odd_size_is_padded(tmp_path):
    path = tmp_path / "odd.mp4"
    frames = [f[:33, :41] for f in moving_gradient(5)]
    write_mp4(path, iter(frames), fps=30)
    back, fps = read_video(path)
    assert back.shape == (5, 34, 42, 3) and fps == 30.0
    assert np.abs(back[:, :30, :38].astype(float) - np.stack(frames)[:, :30, :38]).mean() < 4
    assert read_audio_track(path) is None


def test_frames_are_consumed_lazily(tmp_path):
    produced = []

    def frames() -> Iterator[np.ndarray]:
        for i, frame in enumerate(moving_gradient(10)):
            produced.append(i)
            yield frame

    assert write_mp4(tmp_path / "lazy.mp4", frames()) == 10
    assert produced == list(range(10))


def test_failure_leaves_nothing_behind(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous")

    def broken() -> Iterator[np.ndarray]:
        yield from moving_gradient(3)
        yield np.zeros((10, 10, 3), np.uint8)  # wrong size

    with pytest.raises(ValueError, match="frame 3"):
        write_mp4(path, broken())
    assert path.read_bytes() == b"previous"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temp file left


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "a.mp4", [])
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "a.mp4", [np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="audio"):
        write_mp4(tmp_path / "a.mp4", moving_gradient(2), audio=np.zeros((2, 100), np.float32))
    with pytest.raises(FileNotFoundError):
        write_mp4(tmp_path / "missing" / "a.mp4", moving_gradient(2))
    assert not list(tmp_path.iterdir())
