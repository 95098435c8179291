"""The torso/background track: stored as H.264 video (or raw uint8 frames), read in playback order.

Playback shows track image pingpong(n, Kb) at frame n (runtime/camera.py). Video cannot be decoded
backwards cheaply, so the exporter stores the whole ping-pong period forward — images 0..Kb-1 then
Kb-2..1, `loop_length(Kb)` frames — and the player decodes it sequentially, rewinding at the end of
the period or when a new clip starts at frame 0: one decoder and one frame in memory, whatever Kb.

Codec (chosen by measurement, runtime/design.md "Track codec"): libx264, 4:4:4 chroma (4:2:0 halves
the colour resolution of the torso's edges), full-range BT.601, constant quality `crf`. Numpy + PyAV
only.
"""
from __future__ import annotations

import io
from fractions import Fraction
from typing import Generator, Protocol

import av
import numpy as np

from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.camera import pingpong

CODECS = ("h264", "raw")
DEFAULT_CRF = 10  # 0 = lossless ... 51; runtime/design.md has the size/quality table
PIX_FMT = "yuv444p"
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG: 0..255 luma, no 16..235 squeeze (a few tenths of a level less error)
_BT601 = 5  # AVCOL_SPC_SMPTE170M / BT470BG matrix


def loop_length(kb: int) -> int:
    """Frames in one ping-pong period of a Kb-image track (1 for a still image)."""
    return 1 if kb <= 1 else 2 * (kb - 1)


def loop_order(kb: int) -> np.ndarray:
    """Track images in the order the encoded video stores them: one ping-pong period."""
    return pingpong(np.arange(loop_length(kb)), kb).astype(np.int64)


class Track(Protocol):
    """What the player asks of a track."""

    def frame(self, n: int) -> np.ndarray:
        """The uint8 [H, W, 3] background of video frame n (do not modify; may be reused)."""
        ...


class RawTrack:
    """Kb uint8 images held in memory (format "raw": what bundles stored before video)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def frame(self, n: int) -> np.ndarray:
        return self.images[int(pingpong(n, self.images.shape[0]))]


class VideoTrack:
    """An encoded track decoded on demand, sequentially.

    Asking for frames in increasing order (as speak and stream do) decodes each once; asking for an
    earlier frame of the period rewinds to the start. Raises BundleError naming `where` if the data
    is not a decodable H.264 track of the declared size and length.
    """

    def __init__(self, data: bytes, where: str, images: int, height: int, width: int) -> None:
        self._data, self._where = data, where
        self._length = loop_length(images)
        self._size = (height, width)
        self._frames: Generator[np.ndarray, None, None] | None = None
        self._pos = 0  # index (within the period) of the next frame the decoder gives
        self._current: np.ndarray | None = None
        self._check_stream()

    @property
    def length(self) -> int:
        """Frames in the stored loop."""
        return self._length

    def frame(self, n: int) -> np.ndarray:
        i = int(n) % self._length
        if self._frames is None or i < self._pos - 1:
            if self._frames is not None:
                self._frames.close()  # releases its container
            self._frames, self._pos = self._decode(), 0
        while self._pos <= i:
            self._current = self._next()
        assert self._current is not None
        return self._current

    def _next(self) -> np.ndarray:
        assert self._frames is not None
        try:
            image = next(self._frames)
        except StopIteration:
            raise BundleError(f"{self._where}: the track ends after {self._pos} of {self._length} frames") from None
        self._pos += 1
        return image

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(io.BytesIO(self._data), mode="r")
        except av.FFmpegError as e:
            raise BundleError(f"{self._where} is not a readable video: {e}") from None

    def _check_stream(self) -> None:
        with self._open() as container:
            if not container.streams.video:
                raise BundleError(f"{self._where} has no video stream")
            s = container.streams.video[0]
            declared = (s.codec_context.height, s.codec_context.width)
            if s.codec_context.name != "h264" or declared != self._size or s.frames != self._length:
                raise BundleError(
                    f"{self._where} is {s.codec_context.name} {declared[1]}x{declared[0]} with {s.frames} frames, "
                    f"expected h264 {self._size[1]}x{self._size[0]} with {self._length} (one ping-pong period)"
                )

    def _decode(self) -> Generator[np.ndarray, None, None]:
        with self._open() as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # 2 cores: the renderer uses them; decoding is ~1 ms/frame
            try:
                for frame in container.decode(stream):
                    image = frame.to_ndarray(format="rgb24", src_colorspace=_BT601, src_color_range=_FULL_RANGE)
                    if image.shape[:2] != self._size:
                        raise BundleError(f"{self._where}: frame {self._pos} is {image.shape[:2]}, expected {self._size}")
                    yield image
            except av.FFmpegError as e:
                raise BundleError(f"{self._where} is corrupt at frame {self._pos}: {e}") from None


def encode_track(images: np.ndarray, crf: int = DEFAULT_CRF, fps: float = 25.0) -> bytes:
    """The Kb track images uint8 [Kb, H, W, 3] as one ping-pong period of H.264 4:4:4 (mp4 bytes)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise ValueError(f"track images must be uint8 [Kb, H, W, 3], got {images.dtype} {images.shape}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"track crf must be 0..51 (0 = lossless), got {crf}")
    _, h, w, _ = images.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1_000_000))
        stream.width, stream.height, stream.pix_fmt = w, h, PIX_FMT
        stream.color_range = _FULL_RANGE
        stream.options = {"crf": str(int(crf)), "preset": "slow", "threads": "1",
                          "x264-params": "colormatrix=smpte170m:fullrange=on"}  # fmt: skip
        for n, k in enumerate(loop_order(images.shape[0])):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(images[k]), format="rgb24")
            frame = frame.reformat(format=PIX_FMT, dst_colorspace=_BT601, dst_color_range=_FULL_RANGE)
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def open_track(bundle: Bundle, entry: dict, images: int, height: int, width: int) -> Track:
    """The torso/background track a bundle's manifest `tracks.torso` entry describes.

    entry: {"file": ..., "codec": "h264" | "raw"}. images: Kb (`tracks.torso_frames`).
    Raises BundleError for an unknown codec or a file that does not hold Kb images of H x W.
    """
    if not isinstance(entry, dict) or entry.get("codec") not in CODECS or not isinstance(entry.get("file"), str):
        raise BundleError(f"bundle {bundle.path}: manifest tracks.torso must be {{file, codec in {CODECS}}}, got {entry!r}")
    where = f"{bundle.path}/{entry['file']}"
    if entry["codec"] == "h264":
        return VideoTrack(bundle.bytes_of(entry["file"]), where, images, height, width)
    raw = bundle.array(entry["file"])
    want = (images, height, width, 3)
    if raw.shape != want or raw.dtype != np.uint8 or images < 1:
        raise BundleError(f"{where} is {raw.dtype} {raw.shape}, expected uint8 {want}")
    return RawTrack(raw)
