"""One live avatar stream for an agent framework: speech pushed as it is generated, frames out in real time.

The serve pieces do the work: a `Session` (real-time timeline, idle life, interrupt, the frame's
40 ms of sound with it) on an `AvatarRenderer` (the avatar's render thread, shared by every
stream of that avatar in the process). This module adds what agent frameworks need on top:
speech *segments* (a TTS turn: its start, and "played to its end" once its last sample's frame is
out, from the session's marks) and an asyncio iterator of `LiveFrame`s. The LiveKit and Pipecat
adapters (livekit_avatar.py, pipecat_video.py) only convert their frames to and from these.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import numpy as np

from embedtalk_sdk.runtime.audio.encoders import SAMPLE_RATE
from embedtalk_sdk.runtime.audio.io import pcm_chunk
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.serve.renderer import AvatarRenderer
from embedtalk_sdk.serve.session import LOOKAHEAD_ROWS, Session

_names = itertools.count(1)


@dataclass
class LiveFrame:
    """Frame n of a live stream, with the 40 ms of sound it shows."""

    n: int
    image: np.ndarray | None    # uint8 [H, W, 3]; None: dropped by an overloaded renderer (late)
    audio: np.ndarray           # float32 [samples_per_frame], 16 kHz: the timeline's sound of frame n
    speech: bool                # its audio holds samples of a speech segment (else idle: silence)
    segment_end: bool           # a segment's last sample is in this frame (it played to its end)
    segment: int                # the number of the segment its speech belongs to (0: idle)
    t_in: float | None          # monotonic time its middle sample was pushed (None: idle)


class LiveAvatarStream:
    """A live stream of one avatar: `push` speech (any time, faster than real time is fine: it is
    queued and played at its own speed), `end_segment` after a turn's last chunk, `interrupt` to stop
    at once; `frames()` yields a `LiveFrame` every 1/fps seconds from its first call on, idle frames
    (closed mouth, blinks) whenever no speech is queued.

    renderer: the avatar's shared render thread (one per avatar per process: a worker's streams of
    one avatar are rendered together); None starts a private one, stopped by `aclose`.
    lookahead_rows: as `embedtalk-sdk serve --lookahead-rows` (None: frames equal `speak`'s).
    clock: what the timeline follows; it must be the renderer's clock.
    """

    def __init__(self, avatar: Avatar, *, renderer: AvatarRenderer | None = None, avatar_id: str = "avatar",
                 lookahead_rows: int | None = LOOKAHEAD_ROWS, clock: Callable[[], float] | None = None) -> None:
        if renderer is not None and renderer.avatar is not avatar:
            raise ValueError("the renderer renders another avatar")
        self.avatar = avatar
        self._own_renderer = renderer is None
        if renderer is None:
            renderer = AvatarRenderer(avatar, f"{avatar_id}-{next(_names)}", clock=clock or time.monotonic)
        elif clock is not None and clock is not renderer.clock:
            raise ValueError("a stream follows its renderer's clock")
        self.renderer = renderer
        self.session = Session(avatar_id, avatar, self, on_event=self._on_event, lookahead_rows=lookahead_rows)
        self.samples_per_frame = self.session.stream.samples_per_frame
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[LiveFrame | None] = asyncio.Queue()
        self._cur: tuple[int, np.ndarray | None, float | None, list[tuple[str, int, int]]] | None = None
        # push side (the caller's loop)
        self._segment = 0          # number of the latest segment
        self._open = False         # a segment is being pushed (its end not marked yet)
        self._cleared = 0          # segments up to this number were interrupted: their marks are ignored
        # output side (the caller's loop)
        self._speech_from: int | None = None   # timeline sample where the playing segment starts
        self._speech_segment = 0
        self.closed = False

    # ------------------------------------------------------------------ input

    @property
    def fps(self) -> float:
        return self.avatar.fps

    def push(self, samples: np.ndarray) -> None:
        """Speech at 16 kHz mono (float32 in [-1, 1] or int16), part of the current segment (one is
        opened if none is)."""
        x = pcm_chunk(samples, "speech chunk")
        if x.size == 0:
            return
        if not self._open:
            self._segment += 1
            self._open = True
            self.session.mark(f"start:{self._segment}")
        self.session.say(x)
        self.renderer.notify()

    def end_segment(self) -> None:
        """The current segment has no more audio: its last frame comes with `segment_end`."""
        if self._open:
            self._open = False
            self.session.mark(f"end:{self._segment}")

    def interrupt(self) -> None:
        """Drop the queued speech; the next frame rendered is idle and no segment audio follows."""
        self._open = False
        self._cleared = self._segment
        self._speech_from = None
        self.session.interrupt()
        self.renderer.notify()

    def cleared(self, segment: int) -> bool:
        """Whether speech segment `segment` was interrupted (its audio must not be played any more)."""
        return 0 < segment <= self._cleared

    # ------------------------------------------------------------------ output

    def start(self) -> None:
        """Start the timeline (the first `frames()` call does it)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.session.start(self.renderer.clock())
            self.renderer.add(self.session)

    async def frames(self) -> AsyncIterator[LiveFrame]:
        """The stream's frames, in real time, until `aclose`."""
        self.start()
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if self.cleared(item.segment):  # queued before an interrupt
                item.speech = item.segment_end = False
            yield item

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.close()
        self.renderer.remove(self.session)
        self._queue.put_nowait(None)
        if self._own_renderer:
            await asyncio.to_thread(self.renderer.stop)

    # ------------------------------------------------------------------ the session's sink (render thread)

    def video(self, n: int, frame: np.ndarray | None, t_in: float | None) -> None:
        self._cur = (n, frame, t_in, [])

    def _on_event(self, event: dict) -> None:
        if event.get("type") == "mark" and self._cur is not None:
            kind, _, k = event["name"].partition(":")
            self._cur[3].append((kind, int(k), int(event["sample"])))

    def audio(self, n: int, samples: np.ndarray) -> None:
        cur, self._cur = self._cur, None
        if cur is None or cur[0] != n or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._emit, cur, samples.copy())
        except RuntimeError:  # the loop is closed: the stream's owner has gone
            pass

    # ------------------------------------------------------------------ segments (the caller's loop)

    def _emit(self, cur: tuple, audio: np.ndarray) -> None:
        n, image, t_in, marks = cur
        spf = self.samples_per_frame
        speech = segment_end = False
        segment = 0
        for kind, k, p in marks:
            if k <= self._cleared:
                continue  # a mark of an interrupted segment
            if kind == "start":
                self._speech_from, self._speech_segment = p, k
            elif kind == "end":
                if self._speech_from is not None and p > self._speech_from:
                    speech, segment = True, k  # the segment's last samples are in this frame
                segment_end, segment = True, k
                self._speech_from = None
        if self._speech_from is not None and self._speech_from < (n + 1) * spf:
            speech, segment = True, self._speech_segment
        self._queue.put_nowait(LiveFrame(n, image, audio, speech, segment_end, segment, t_in))


def mono_int16(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved int16 PCM of `channels` channels -> mono int16 (channels averaged, rounded)."""
    x = np.asarray(pcm, dtype=np.int16)
    if channels == 1:
        return x
    return np.round(x.reshape(-1, channels).astype(np.float32).mean(axis=1)).astype(np.int16)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16 PCM (as serve's audio track: x 32767, rounded, clipped)."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)


__all__ = ["LiveAvatarStream", "LiveFrame", "SAMPLE_RATE", "mono_int16", "to_int16"]
