"""MP4 output (H.264 + AAC) and small readers for tests; numpy + PyAV only (no PyTorch).

Colour: frames are converted RGB -> YUV 4:2:0 with swscale's default BT.601 limited-range matrix,
and the stream is tagged BT.601 (smpte170m) so players decode with the same matrix at any size.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from embedtalk_sdk.runtime.audio.io import decode_audio
from embedtalk_sdk.runtime.fileio import atomic_path

__all__ = ["write_mp4", "check_output_path", "read_video", "read_audio_track"]

_BT601_TAGS = "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m"


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
) -> int:
    """Encode frames (and audio) to an MP4 file, atomically.

    Frames are consumed one at a time (a generator is never materialised). The file appears at
    `path` only when complete: it is written to a temporary file in the same folder, then
    moved with os.replace; on error the temporary file is removed and `path` is untouched.

    Args:
        path: output .mp4; its folder must exist.
        frames: iterable of uint8 [H, W, 3] RGB, all the same size. Odd H or W is padded to even
            by repeating the last row/column (H.264 4:2:0 needs even sizes).
        fps: frame rate.
        audio: optional float [S] mono in [-1, 1] at `sample_rate`, muxed as AAC; written in
            full even if longer or shorter than the video.
        sample_rate: rate of `audio` in Hz.
        crf: libx264 constant rate factor (0 = lossless, 18 = visually lossless, 23 = default).

    Returns:
        the number of frames written.

    Raises:
        ValueError: no frames, a frame with the wrong dtype/shape/size, bad audio.
    """
    path = check_output_path(path)
    samples = None if audio is None else _check_audio(audio)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"write_mp4: no frames to write to {path}")
    with atomic_path(path) as tmp:
        n = _encode(str(tmp), first, it, fps, samples, sample_rate, crf)
    return n


def check_output_path(path: str | os.PathLike) -> Path:
    """`path` as a Path if a video can be written there (its folder exists, it is not a folder);
    called before any work so that a bad `-o` fails at once, not after rendering."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name, e.g. {path / 'speech.mp4'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"write_mp4: folder {path.parent} does not exist; create it first")
    return path


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream (loads all: meant for tests and tools).

    Returns:
        (frames uint8 [T, H, W, 3] RGB, fps).
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"read_video: {path} has no video frames")
    return np.stack(frames), float(rate)


def read_audio_track(path: str | os.PathLike) -> tuple[np.ndarray, int] | None:
    """The first audio track at its own rate, channels averaged, or None if the file has none.

    Returns:
        (samples float32 [S], sample_rate) or None.
    """
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
    data, rate = decode_audio(path)
    return data.mean(axis=1).astype(np.float32), rate


def _encode(
    tmp: str,
    first: np.ndarray,
    rest: Iterator[np.ndarray],
    fps: float,
    audio: np.ndarray | None,
    sample_rate: int,
    crf: int,
) -> int:
    h, w = _check_frame(first, 0, None)
    rate = Fraction(fps).limit_denominator(1_000_000)
    # faststart: index at the front, so browsers can play while downloading.
    with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height = w + w % 2, h + h % 2
        video.pix_fmt = "yuv420p"
        video.options = {"crf": str(int(crf)), "x264-params": _BT601_TAGS}
        sound = None
        if audio is not None:
            sound = out.add_stream("aac", rate=sample_rate, layout="mono")
        sent = 0  # audio samples encoded so far
        n = 0
        for n, frame in enumerate(_chain(first, rest)):
            _check_frame(frame, n, (h, w))
            _mux(out, video.encode(_video_frame(frame, n)))
            if sound is not None:  # keep audio in step with video: small interleave buffers
                t_end = (n + 1) * sample_rate * rate.denominator // rate.numerator
                sent = _send_audio(out, sound, audio, sent, min(t_end, audio.shape[0]), sample_rate)
        _mux(out, video.encode(None))
        if sound is not None:
            _send_audio(out, sound, audio, sent, audio.shape[0], sample_rate)
            _mux(out, sound.encode(None))
    return n + 1


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _check_frame(frame: np.ndarray, n: int, size: tuple[int, int] | None) -> tuple[int, int]:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        kind = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"write_mp4: frame {n} must be a uint8 numpy array, got {kind}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"write_mp4: frame {n} must be [H, W, 3], got shape {frame.shape}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"write_mp4: frame {n} is {frame.shape[:2]}, the first frame is {size}")
    return frame.shape[0], frame.shape[1]


def _video_frame(frame: np.ndarray, n: int) -> av.VideoFrame:
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    vf.pts = n  # the stream's time base is 1 / fps
    return vf


def _check_audio(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"write_mp4: audio must be float mono [S], got {a.dtype} {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("write_mp4: audio has NaN or Inf samples")
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def _send_audio(
    out: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    audio: np.ndarray,
    start: int,
    end: int,
    sample_rate: int,
) -> int:
    """Encode audio[start:end]; return the new position (the encoder re-chunks to its frames)."""
    if end <= start:
        return start
    af = av.AudioFrame.from_ndarray(audio[None, start:end], format="fltp", layout="mono")
    af.sample_rate = sample_rate
    af.pts = start
    _mux(out, stream.encode(af))
    return end


def _mux(out: av.container.OutputContainer, packets: list[av.Packet]) -> None:
    for packet in packets:
        out.mux(packet)
