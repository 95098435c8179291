"""The avatars a server offers, and what one session of each costs this machine.

AVATARS is one bundle (an `.etk` folder or a `.zip`) or a folder whose direct children are
bundles. Each is opened and verified once at start-up (`Avatar.load`); its id is its file name
without the suffix. Clients choose by id only: an id is looked up in this table and nothing else,
so no path a client sends is ever opened.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedtalk_sdk.runtime.audio.encoders import SAMPLE_RATE
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.bundle import MANIFEST, BundleError
from embedtalk_sdk.runtime.errors import EmbedTalkError

log = logging.getLogger("embedtalk_sdk.serve")

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class UnknownAvatar(EmbedTalkError, LookupError):
    """An avatar id that is not one of the server's; the message lists the ones there are."""


@dataclass
class AvatarEntry:
    id: str
    avatar: Avatar
    render_ms: float = 0.0      # one frame through network + rasteriser (measured at start-up)
    encode_ms: float = 0.0      # one frame through the VP8 encoder + its sound through Opus
    features_ms: float = 0.0    # one frame's audio through the session's feature streamer

    @property
    def frame_ms(self) -> float:
        return self.render_ms + self.encode_ms + self.features_ms

    def info(self) -> dict:
        a = self.avatar
        return {"id": self.id, "width": a.width, "height": a.height, "fps": a.fps, "backend": a.backend_name,
                "render_ms": round(self.render_ms, 2), "encode_ms": round(self.encode_ms, 2),
                "features_ms": round(self.features_ms, 2)}


def _is_bundle(p: Path) -> bool:
    return (p.is_dir() and (p / MANIFEST).is_file()) or (p.is_file() and p.suffix == ".zip")


def find_bundles(avatars: str | os.PathLike) -> list[Path]:
    """The bundles of AVATARS: itself if it is one, else its direct children that are bundles."""
    root = Path(avatars)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such bundle or folder of bundles")
    if _is_bundle(root):
        return [root]
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle (an .etk folder with manifest.json, or a .zip)")
    found = sorted(p for p in root.iterdir() if _is_bundle(p))
    if not found:
        raise BundleError(f"{root}: holds no bundles (.etk folders with manifest.json, or .zip files)")
    return found


def avatar_id(path: Path) -> str:
    name = path.name
    for suffix in (".zip", ".etk"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


class AvatarRegistry:
    """Loaded avatars by id. `get(id)` is the only way a client reaches one."""

    def __init__(self, entries: list[AvatarEntry]) -> None:
        self._entries = {e.id: e for e in entries}

    @classmethod
    def load(cls, avatars: str | os.PathLike, backend: str = "auto", measure: bool = True,
             log_fn=log.info) -> "AvatarRegistry":
        """Open every bundle of AVATARS; with `measure`, time one frame of each (`measure_cost`)."""
        entries: list[AvatarEntry] = []
        for path in find_bundles(avatars):
            ident = avatar_id(path)
            if not ID_RE.match(ident) or ident in {e.id for e in entries}:
                raise BundleError(f"{path}: its id {ident!r} is not usable (letters, digits, . _ -; unique)")
            t = time.monotonic()
            entry = AvatarEntry(ident, Avatar.load(path, backend=backend))
            if measure:
                measure_cost(entry)
            log_fn(f"avatar {ident}: {entry.avatar.width}x{entry.avatar.height} @ {entry.avatar.fps:g} fps, "
                   f"{entry.avatar.backend_name}, loaded in {time.monotonic() - t:.1f} s; frame "
                   f"{entry.render_ms:.1f} ms render + {entry.encode_ms:.1f} ms encode + "
                   f"{entry.features_ms:.1f} ms audio features")
            entries.append(entry)
        return cls(entries)

    def get(self, ident: object) -> AvatarEntry:
        if isinstance(ident, str) and ident in self._entries:
            return self._entries[ident]
        shown = ident if isinstance(ident, str) else type(ident).__name__
        raise UnknownAvatar(f"unknown avatar {str(shown)[:120]!r}: choose one of {sorted(self._entries)} "
                            "(avatars are chosen by id; paths are not accepted)")

    @property
    def ids(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[AvatarEntry]:
        return [self._entries[i] for i in self.ids]


def measure_cost(entry: AvatarEntry, frames: int = 24) -> None:
    """Time one frame of this avatar the way a session makes it: the network and rasteriser on
    silence windows (median of batches of the avatar's batch size, after a warm-up batch), the
    session's feature streamer on 20 ms pieces of faint noise (a microphone's; the phone posteriors
    cost a 256² phonetic session about as much as its VP8 encode), and the VP8 + Opus encoders
    aiortc sends with."""
    import fractions

    import av
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from embedtalk_sdk.serve.session import StreamState

    a = entry.avatar
    state = StreamState(a)
    window = np.repeat(state.silence_row[None, None], a.window, axis=1)[0]
    b = a.batch
    aus = a.generated_aus()(0, b)
    per_batch = []
    for k in range(1 + max(1, frames // b)):
        t = time.perf_counter()
        for _ in a.render_network_inputs(np.repeat(window[None], b, axis=0), aus, np.arange(b * k, b * k + b)):
            pass
        if k:
            per_batch.append((time.perf_counter() - t) / b)
    entry.render_ms = float(np.median(per_batch)) * 1000.0

    if a.audio_encoder.name != "features":  # a "features" bundle's rows come from the application
        noise = np.random.default_rng(0).normal(0, 0.01, 2 * SAMPLE_RATE).astype(np.float32)
        piece = SAMPLE_RATE // 50
        streamer = a.audio_encoder.streamer()
        streamer.feed(noise[:SAMPLE_RATE // 2])  # warm-up: sessions, caches
        t = time.perf_counter()
        for i in range(SAMPLE_RATE // 2, len(noise), piece):
            streamer.feed(noise[i:i + piece])
        entry.features_ms = (time.perf_counter() - t) / ((len(noise) - SAMPLE_RATE // 2) / SAMPLE_RATE * a.fps) * 1000.0

    vp8 = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
    opus = get_encoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2))
    img = np.zeros((a.height, a.width, 3), dtype=np.uint8)
    times = []
    for i in range(12):
        img[:] = (i * 20) % 255
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts, vf.time_base = i * 3600, fractions.Fraction(1, 90000)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.int16), format="s16", layout="mono")
        af.sample_rate, af.pts, af.time_base = 16000, i * 640, fractions.Fraction(1, 16000)
        t = time.perf_counter()
        vp8.encode(vf, i == 0)
        opus.encode(af)
        if i >= 2:
            times.append(time.perf_counter() - t)
    entry.encode_ms = float(np.median(times)) * 1000.0


class Admission:
    """How many sessions this server takes. With `max_sessions` given: that many. Otherwise each
    session is charged its avatar's measured frame time x fps, and a new one is refused when the
    charges would pass `utilisation` of the machine's time (what it holds at the avatars' fps)."""

    def __init__(self, registry: AvatarRegistry, max_sessions: int | None = None, utilisation: float = 0.8) -> None:
        self.registry, self.max_sessions, self.utilisation = registry, max_sessions, float(utilisation)

    def cost(self, entry: AvatarEntry) -> float:
        """The share of one second a session of this avatar takes (frame time x fps)."""
        return entry.frame_ms / 1000.0 * entry.avatar.fps

    def capacity(self, entry: AvatarEntry) -> int:
        """Sessions of this avatar alone that fit."""
        if self.max_sessions is not None:
            return self.max_sessions
        c = self.cost(entry)
        return max(1, int(self.utilisation / c)) if c > 0 else 1

    def check(self, entry: AvatarEntry, open_entries: list[AvatarEntry]) -> str | None:
        """None if one more session of `entry` fits beside `open_entries`, else why not."""
        n = len(open_entries)
        if self.max_sessions is not None:
            if n + 1 > self.max_sessions:
                return (f"server full: {n} of {self.max_sessions} sessions open (--max-sessions); "
                        "close one or try again later")
            return None
        used = sum(self.cost(e) for e in open_entries)
        if n and used + self.cost(entry) > self.utilisation:
            return (f"server full: {n} sessions use {used:.0%} of this machine (a {entry.id} session takes "
                    f"{self.cost(entry):.0%}: {entry.frame_ms:.1f} ms a frame at {entry.avatar.fps:g} fps, "
                    f"limit {self.utilisation:.0%}); try again later, or set --max-sessions")
        return None
