"""The torso/background track: stored as H.264 video (or raw uint8 frames), decoded once into memory.

Playback shows track image pingpong(n, Kb) at frame n (runtime/camera.py). The video holds the Kb
images forward, once. From `Avatar.load` on, a worker thread decodes them in order into one
[Kb, H, W, 3] uint8 array; a frame waits only for an image not decoded yet (the first one is ready
within milliseconds), and once all are in, every frame of every clip, any order, any number of
readers, is an array lookup as with raw frames. Memory: Kb x H x W x 3 bytes once decoded (49 MB
for 250 images at 256², 197 MB at 512²; `export --track-frames` sets Kb), the same as a raw track.

Codec (chosen by measurement, runtime/design.md "Small bundles"): libx264rgb, H.264 coding the R, G
and B planes themselves (High 4:4:4 profile). No YUV matrix: an 8-bit YUV round trip alone costs ~0.7
levels per pixel, which caps 4:4:4 YUV at ~47 dB; RGB reaches 50 dB at a smaller size, and decodes
faster (no colour conversion). Constant quality `crf`. Numpy + PyAV only.
"""
from __future__ import annotations

import io
import threading
from fractions import Fraction
from typing import Iterator, Protocol

import av
import numpy as np

from embedtalk_sdk.runtime.bundle import Bundle, BundleError
from embedtalk_sdk.runtime.camera import pingpong

CODECS = ("h264", "raw")
DEFAULT_CRF = 14  # 0 = lossless ... 51; runtime/design.md has the size/quality table
ENCODER = "libx264rgb"
PIX_FMT = "rgb24"


class Track(Protocol):
    """What the player asks of a track."""

    def frame(self, n: int) -> np.ndarray:
        """The uint8 [H, W, 3] background of video frame n (read-only)."""
        ...


class RawTrack:
    """Kb uint8 images stored as they are (`export --raw-track`)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def frame(self, n: int) -> np.ndarray:
        return self.images[int(pingpong(n, self.images.shape[0]))]


class _Decoded:
    """The images decoded so far, shared by the worker (writes) and the readers (wait, then read)."""

    def __init__(self, images: int, height: int, width: int) -> None:
        self.images = np.empty((images, height, width, 3), dtype=np.uint8)
        self.ready = 0  # images[:ready] are final
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def fill(self, frames: Iterator[np.ndarray], where: str) -> None:
        try:
            for image in frames:
                if self.ready == len(self.images):
                    raise BundleError(f"{where} holds more than the {len(self.images)} images its manifest lists")
                self.images[self.ready] = image
                with self.cond:
                    self.ready += 1
                    self.cond.notify_all()
            if self.ready < len(self.images):
                raise BundleError(f"{where}: the track ends after {self.ready} of {len(self.images)} images")
        except BaseException as e:  # noqa: BLE001 - handed to the readers, raised there
            with self.cond:
                self.error = e
                self.cond.notify_all()


class VideoTrack:
    """An H.264 track, decoded once into memory by a worker thread started here.

    Raises BundleError naming `where` if the data is not an H.264 track of Kb images of H x W: at once
    for what the container declares, from `frame` for what only decoding shows (a frame that asks for
    an image the stream could not give).
    """

    def __init__(self, data: bytes, where: str, images: int, height: int, width: int) -> None:
        _check_stream(data, where, images, (height, width))
        self._decoded = _Decoded(images, height, width)
        self.images = self._decoded.images.view()
        self.images.flags.writeable = False
        worker = threading.Thread(target=self._decoded.fill, args=(_decode(data, where, (height, width)), where),
                                  name="embedtalk-track", daemon=True)  # fmt: skip
        worker.start()

    def frame(self, n: int) -> np.ndarray:
        k = int(pingpong(n, len(self.images)))
        d = self._decoded
        if d.ready <= k:
            with d.cond:
                while d.ready <= k and d.error is None:
                    d.cond.wait()
            if d.ready <= k:
                raise d.error  # type: ignore[misc]
        return self.images[k]

    def wait(self) -> np.ndarray:
        """Block until every image is decoded; the images uint8 [Kb, H, W, 3] (read-only)."""
        self.frame(len(self.images) - 1)
        return self.images


def _check_stream(data: bytes, where: str, images: int, size: tuple[int, int]) -> None:
    with _open(data, where) as container:
        if not container.streams.video:
            raise BundleError(f"{where} has no video stream")
        s = container.streams.video[0]
        declared = (s.codec_context.height, s.codec_context.width)
        if s.codec_context.name != "h264" or declared != size or s.frames != images:
            raise BundleError(
                f"{where} is {s.codec_context.name} {declared[1]}x{declared[0]} with {s.frames} frames, "
                f"expected h264 {size[1]}x{size[0]} with {images}"
            )


def _decode(data: bytes, where: str, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Every frame of an encoded track, uint8 [H, W, 3], in stored order."""
    with _open(data, where) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # one worker thread: the renderer has the other cores' work
        n = 0
        try:
            for frame in container.decode(stream):
                image = frame.to_ndarray(format="rgb24")
                if image.shape[:2] != size:
                    raise BundleError(f"{where}: frame {n} is {image.shape[:2]}, expected {size}")
                yield image
                n += 1
        except av.FFmpegError as e:
            raise BundleError(f"{where} is corrupt at frame {n}: {e}") from None


def _open(data: bytes, where: str) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as e:
        raise BundleError(f"{where} is not a readable video: {e}") from None


def encode_track(images: np.ndarray, crf: int = DEFAULT_CRF, fps: float = 25.0) -> bytes:
    """The Kb track images uint8 [Kb, H, W, 3] as H.264 RGB, in order (mp4 bytes); crf 0 is lossless."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise ValueError(f"track images must be uint8 [Kb, H, W, 3], got {images.dtype} {images.shape}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"track crf must be 0..51 (0 = lossless), got {crf}")
    _, h, w, _ = images.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream(ENCODER, rate=Fraction(fps).limit_denominator(1_000_000))
        stream.width, stream.height, stream.pix_fmt = w, h, PIX_FMT
        # One thread: the same bytes on every machine (x264's output depends on its thread count).
        stream.options = {"crf": str(int(crf)), "preset": "slow", "threads": "1"}
        for n, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=PIX_FMT)
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
