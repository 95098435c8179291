"""WebRTC media (aiortc): the session's outgoing video and audio tracks and the incoming microphone.

`SessionMedia` is a session's sink: the renderer thread hands it frame n and frame n's 40 ms of
sound; it passes them to the event loop, where `AvatarVideoTrack.recv` / `AvatarAudioTrack.recv`
give them to aiortc's senders (which encode VP8 / Opus in a worker thread). Both tracks carry
time stamps from the same frame index (video n / fps, audio n x 640 samples at 16 kHz), so picture
and sound stay in step however the sending is delayed. A video queue longer than `MAX_QUEUED`
frames means the encoder falls behind: the oldest frame is dropped (counted in dropped_frames).
"""
from __future__ import annotations

import asyncio
import fractions
import logging
import time
from typing import Any
from urllib.parse import unquote

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from embedtalk_sdk.runtime.audio.encoders import SAMPLE_RATE
from embedtalk_sdk.serve.metrics import SessionMetrics

log = logging.getLogger("embedtalk_sdk.serve")

VIDEO_CLOCK = 90000
MAX_QUEUED = 3


class AvatarVideoTrack(MediaStreamTrack):
    """The avatar's frames as a WebRTC video track (pts = n x 90000 / fps)."""

    kind = "video"

    def __init__(self, fps: float, metrics: SessionMetrics) -> None:
        super().__init__()
        self.fps, self.metrics = float(fps), metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.last: np.ndarray | None = None
        self.sent_log: list[tuple[int, float]] | None = None  # (n, time) of sent frames, when a test asks

    def put(self, item: tuple[int, np.ndarray, float | None]) -> None:
        self.queue.put_nowait(item)
        while self.queue.qsize() > MAX_QUEUED:
            self.queue.get_nowait()
            self.metrics.dropped()

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n, frame, t_in = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        now = time.monotonic()
        self.metrics.sent(None if t_in is None else (now - t_in) * 1000.0, now)
        if self.sent_log is not None:
            self.sent_log.append((n, now))
        out = av.VideoFrame.from_ndarray(frame, format="rgb24")
        out.pts = int(round(n * VIDEO_CLOCK / self.fps))
        out.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return out


class AvatarAudioTrack(MediaStreamTrack):
    """The speech the avatar is saying, 16 kHz mono s16, one 40 ms frame per video frame."""

    kind = "audio"

    def __init__(self, metrics: SessionMetrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item: tuple[int, np.ndarray | None]) -> None:
        self.queue.put_nowait(item)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n, samples = await self.queue.get()
        if samples is None:
            raise MediaStreamError
        pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
        out = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        out.sample_rate = SAMPLE_RATE
        out.pts = n * pcm.shape[0]
        out.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.metrics.audio_sent()
        return out


class SessionMedia:
    """A session's sink: renderer thread -> event loop -> the two tracks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fps: float, metrics: SessionMetrics) -> None:
        self.loop = loop
        self.video_track = AvatarVideoTrack(fps, metrics)
        self.audio_track = AvatarAudioTrack(metrics)

    def video(self, n: int, frame: np.ndarray | None, t_in: float | None) -> None:
        if frame is not None:
            self._call(self.video_track.put, (n, frame, t_in))

    def audio(self, n: int, samples: np.ndarray) -> None:
        self._call(self.audio_track.put, (n, samples.copy()))

    def _call(self, fn, item) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, item)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def stop(self) -> None:
        for track in (self.video_track, self.audio_track):
            self._call(track.put, (-1, None) if track.kind == "audio" else (-1, None, None))
            self.loop.call_soon_threadsafe(track.stop)


async def consume_microphone(track: MediaStreamTrack, push: Any, name: str = "microphone") -> None:
    """Read a remote audio track until it ends, resampled to 16 kHz mono int16 (PyAV's resampler,
    stateful across frames), and `push` each chunk into the session."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            pcm = out.to_ndarray().reshape(-1)
            if pcm.size:
                try:
                    push(pcm, name)
                except ValueError as e:  # the session closed, or a chunk it refuses
                    log.info("%s: %s", name, e)
                    return


ICE_SCHEMES = ("stun", "stuns", "turn", "turns")
SDP_ERRORS = (ValueError, KeyError, IndexError, AssertionError, StopIteration, TypeError, AttributeError)  # aiortc's parser


def check_offer(sdp: str) -> None:
    """Parse an SDP offer (aiortc's parser) and require a video section: ValueError says what is
    wrong. Cheap, so a server checks it before it spends a peer connection on the offer."""
    from aiortc.sdp import SessionDescription

    try:
        parsed = SessionDescription.parse(sdp)
    except SDP_ERRORS as e:
        raise ValueError(f"the SDP offer cannot be read: {type(e).__name__} {str(e)[:80]}") from None
    if not any(m.kind == "video" for m in parsed.media):
        raise ValueError("the offer has no video: add a recvonly video transceiver")


def parse_ice_server(url: str) -> dict:
    """`--ice-server` -> the RTCIceServer dict the page and aiortc both take.

    stun:HOST[:PORT], or turn(s):USER:SECRET@HOST[:PORT][?transport=udp|tcp]: the credentials
    before the last "@", split at their last ":" (percent-encode a ":" or "@" in the secret)."""
    scheme, sep, rest = url.strip().partition(":")
    if not sep or scheme.lower() not in ICE_SCHEMES:
        raise ValueError(f"--ice-server {_redact(url)!r}: start with stun:, stuns:, turn: or turns:")
    scheme = scheme.lower()
    server: dict = {}
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, colon, secret = userinfo.rpartition(":")
        if not colon or not user:
            raise ValueError(f"--ice-server {_redact(url)!r}: credentials go as USER:SECRET@HOST")
        server.update(username=unquote(user), credential=unquote(secret))
    host = rest.split("?", 1)[0]
    if not host or host.startswith("/") or any(c.isspace() for c in rest):
        raise ValueError(f"--ice-server {_redact(url)!r}: no host (e.g. turn:USER:SECRET@turn.example.com:3478)")
    if scheme.startswith("turn") and "username" not in server:
        raise ValueError(f"--ice-server {_redact(url)!r}: a TURN server needs USER:SECRET@ before its host")
    server["urls"] = f"{scheme}:{rest}"
    return server


def rtc_ice_servers(servers: list[dict]) -> list:
    """aiortc's RTCIceServer objects of `parse_ice_server` dicts."""
    from aiortc import RTCIceServer

    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in servers]


def _redact(url: str) -> str:
    """The URL without its credentials (error messages must not echo a secret)."""
    scheme, _, rest = url.partition(":")
    return f"{scheme}:...@{rest.rsplit('@', 1)[1]}" if "@" in rest else url


def restrict_ice_to_loopback() -> None:
    """Offer only 127.0.0.1 as this process's ICE host candidate (aioice skips loopback by default):
    a server bound to a loopback address keeps its media on the machine too."""
    import aioice.ice

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback
