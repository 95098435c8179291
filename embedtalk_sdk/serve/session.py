"""One live session: its audio in, its place in the stream, what it sends, its events.

A session's audio timeline runs in real time from `start()` on. Every few milliseconds the
avatar's renderer (renderer.py) calls `advance(now)`: the session moves its timeline up to `now`
with pushed audio (a clip first: upload / TTS; else live chunks: microphone, WebSocket PCM) or,
when nothing came for `gap_s`, with silence. That keeps the avatar alive when nobody speaks: the
silent stream closes the mouth, the session's own blink schedule blinks, and the frame index walks
the bundle's camera/torso track as `speak` does; speech starts and ends inside one continuous
stream, so there is no jump. The timeline samples feed this session's own feature streamer (the
`Avatar.stream` logic, `StreamState`), and each frame whose window is complete becomes a
`FrameJob` for the renderer; the frame's 40 ms of audio is sent with the frame, so the two stay in
step by construction.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from embedtalk_sdk.runtime.audio.encoders import SAMPLE_RATE
from embedtalk_sdk.runtime.audio.io import AudioError, pcm_chunk
from embedtalk_sdk.runtime.audio.mel import RowBuffer, frame_windows, frames_ready, n_video_frames, window_bounds
from embedtalk_sdk.runtime.avatar import Avatar

from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.serve.metrics import SessionMetrics

LIVE_QUEUE_S = 2.0      # live audio kept at most (older samples are dropped: a client pushing too fast)
GAP_S = 0.1             # live input silent this long -> the timeline goes on with silence
VOICED_RMS = 10 ** (-50 / 20)   # a frame's pushed audio above -50 dBFS counts as speech
HANGOVER_FRAMES = 10    # unvoiced frames (0.4 s at 25 fps) before "speaking_stopped"
# Live playback's default lookahead (`embedtalk-sdk serve`, `serve.app.run`, livekit-worker and the
# integrations): 4 of the window's 7 future rows (design.md: p50 99 ms, 47 dB against the exact
# frames). None waits for the whole window: frames equal `speak`'s.
LOOKAHEAD_ROWS = 4


class SessionError(EmbedTalkError, ValueError):
    """A request a session refuses (closed session, bad audio); the message says why."""


@dataclass
class FrameJob:
    """A frame whose inputs are complete: the renderer renders it (or drops it when it is late)."""

    session: "Session"
    n: int                  # frame index in the session (also its place in the bundle's track)
    window: np.ndarray      # float32 [window, F]
    aus: np.ndarray         # float32 [6], network scale
    due: float              # monotonic time its audio was complete in an ideal real-time stream


class StreamState:
    """A session's own stream over the shared model: feature streamer, rows kept, blinks, next frame.

    The same steps as `Avatar.stream` (a frame is emitted once rows_needed(n) rows exist and the
    audio so far implies frame n), so the same audio gives the same frames; plus `silence()`, which
    replaces everything not yet rendered by silence (interrupt).

    lookahead_rows (None: the whole window, exact): wait only for this many rows past the window's
    centre; the window's later rows repeat the last one that exists (as at the end of a clip). Each
    row less is 20 ms less latency and frames that differ from `speak`'s (design.md measures how much).
    """

    def __init__(self, avatar: Avatar, lookahead_rows: int | None = None) -> None:
        self.avatar = avatar
        self.fps, self.rate, self.window = avatar.fps, avatar.audio_encoder.rate, avatar.window
        full = self.future_rows(avatar)
        if lookahead_rows is not None and not 0 <= int(lookahead_rows) <= full:
            raise ValueError(f"lookahead_rows must be 0..{full} (the rows of a window past its centre), "
                             f"got {lookahead_rows}")
        # rows of a frame's window past its centre that are waited for; the rest repeat the last one
        self.cut = 0 if lookahead_rows is None else full - int(lookahead_rows)
        spr = SAMPLE_RATE / self.rate
        if spr != int(spr) or SAMPLE_RATE / self.fps != int(SAMPLE_RATE / self.fps):
            raise ValueError(f"the server needs whole samples per feature row and per frame (16 kHz, "
                             f"{self.rate:g} rows/s, {self.fps:g} fps)")
        self.samples_per_row, self.samples_per_frame = int(spr), int(SAMPLE_RATE / self.fps)
        self.streamer = avatar.audio_encoder.streamer()  # a "features" bundle raises ValueError here
        self.buf = RowBuffer(avatar.audio_encoder.dim)   # feature rows of the windows still to come
        self.aus = avatar.generated_aus()                # this session's own blink schedule
        self.n = 0                                       # next frame to emit
        self.samples = 0                                 # timeline samples fed
        quiet = avatar.audio_encoder.features(np.zeros(8 * self.samples_per_frame, dtype=np.float32))
        self.silence_row = quiet[quiet.shape[0] // 2].astype(np.float32)

    @staticmethod
    def future_rows(avatar: Avatar) -> int:
        """Rows of a frame's window after its centre row (7 for the 16-row window: 140 ms at 50 Hz)."""
        return avatar.window - avatar.window // 2 - 1

    def feed(self, x: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Add timeline samples; -> (n0, n1, windows [n1-n0, W, F], aus [n1-n0, 6]) of the frames now final."""
        buf = self.buf
        buf.append(self.streamer.feed(x))
        self.samples += x.shape[0]
        n0 = self.n
        n = frames_ready(n0, buf.end, n_video_frames(self.samples, fps=self.fps), self.fps, self.rate, self.window,
                         short_by=self.cut)  # fmt: skip
        if n == n0:
            return n0, n0, np.zeros((0, self.window, buf.rows.shape[1]), np.float32), np.zeros((0, 6), np.float32)
        windows = frame_windows(buf.rows, n - n0, self.fps, self.rate, self.window, first_frame=n0,
                                row_offset=buf.start)
        aus = self.aus(n0, n)
        self.n = n
        buf.drop_before(window_bounds(n, self.fps, self.rate, self.window)[0])
        return n0, n, windows, aus

    def silence(self) -> int:
        """From the next frame on, the stream is silence: the rows kept become the silence row and a
        fresh streamer takes over at the next row boundary. Returns the zero samples to add to the
        timeline (< one row) so the fresh streamer's rows line up."""
        buf = self.buf
        buf.rows[:] = self.silence_row
        pad = (-self.samples) % self.samples_per_row
        self.samples += pad
        missing = self.samples // self.samples_per_row - buf.end
        if missing > 0:
            buf.append(np.repeat(self.silence_row[None], missing, axis=0))
        elif missing < 0:  # rows the old streamer emitted past the boundary (none for mel)
            buf.rows = buf.rows[:missing].copy()
        self.streamer = self.avatar.audio_encoder.streamer()
        return pad


@dataclass
class _Segment:
    start: int          # timeline sample
    stop: int
    t_in: float         # monotonic time the samples arrived (a live chunk's arrival, a clip's push)
    pushed: bool        # False: silence filled in by the session
    turn: float | None  # clips: the real-time turn of sample `start` (a clip waits for its turn)

    def entered(self, s: int) -> float:
        """When timeline sample s entered: a live sample on arrival; a clip's at max(push, its turn)."""
        if self.turn is None:
            return self.t_in
        return max(self.t_in, self.turn + (s - self.start) / SAMPLE_RATE)


SESSION_ID_BYTES = 18  # 144 random bits: a session id cannot be guessed (it is also bound to its owner)


class Session:
    """A live session on one avatar; its outputs go to `sink` (media.py's tracks, or a test's).

    sink: an object with `video(n, frame uint8 [H, W, 3] | None, latency_in: float | None)` and
    `audio(n, samples float32 [samples_per_frame])`, called from the renderer's thread for frame n
    in order (frame None: dropped because the renderer fell behind). events: called with
    {"type": "speaking_started" | "speaking_stopped" | "interrupted" | "closed", ...}.
    """

    def __init__(self, avatar_id: str, avatar: Avatar, sink: Any, *, gap_s: float = GAP_S,
                 on_event: Callable[[dict], None] | None = None, lookahead_rows: int | None = None) -> None:
        self.id = secrets.token_urlsafe(SESSION_ID_BYTES)
        self.avatar_id, self.avatar, self.sink = avatar_id, avatar, sink
        self.metrics = SessionMetrics()
        self.on_event = on_event or (lambda event: None)
        self.events: deque[dict] = deque(maxlen=100)
        self.stream = StreamState(avatar, lookahead_rows)
        self.gap_s = float(gap_s)
        self._lock = threading.Lock()
        self._clips: deque[tuple[np.ndarray, float]] = deque()  # (samples, push time)
        self._clip_in = self._clip_out = 0               # clip samples ever queued / ever taken
        self._clip_marks: deque[tuple[int, str]] = deque()  # (clip samples before the mark, name)
        self._marks: deque[tuple[int, str]] = deque()       # (timeline sample of the mark, name)
        self._live: deque[tuple[np.ndarray, float]] = deque()
        self._live_samples = 0
        self._last_live = -1e9
        self._t0: float | None = None
        self._pending = np.zeros(0, dtype=np.float32)   # timeline samples whose frame is not out yet
        self._pending_start = 0                          # timeline index of _pending[0]
        self._segments: deque[_Segment] = deque()
        self._speaking = False
        self._quiet_frames = 0
        self._interrupt = False
        self.closed = False
        self.live_dropped_samples = 0
        self.created = time.monotonic()

    # ------------------------------------------------------------ control (any thread)

    def start(self, now: float | None = None) -> None:
        """Start the real-time timeline (when the peer connection is up)."""
        with self._lock:
            if self._t0 is None:
                self._t0 = time.monotonic() if now is None else now
                self.metrics.started = self._t0

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def push(self, chunk: np.ndarray, name: str = "audio chunk") -> None:
        """Live audio (16 kHz mono, int16 or float): played as it arrives, after any clip."""
        x = pcm_chunk(chunk, name, allow_empty=False)
        now = time.monotonic()
        with self._lock:
            self._check_open()
            self._live.append((x, now))
            self._live_samples += x.shape[0]
            self._last_live = now
            limit = int(LIVE_QUEUE_S * SAMPLE_RATE)
            while self._live_samples > limit and len(self._live) > 1:
                old, _ = self._live.popleft()
                self._live_samples -= old.shape[0]
                self.live_dropped_samples += old.shape[0]

    def say(self, samples: np.ndarray) -> float:
        """Queue a clip (16 kHz mono float32, already validated: `prepare_audio`); while a clip
        plays, live input is discarded. Returns the seconds of speech now queued."""
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if x.ndim != 1 or x.size == 0:
            raise AudioError(f"a clip must be non-empty mono samples, got shape {x.shape}")
        with self._lock:
            self._check_open()
            self._clips.append((x, time.monotonic()))
            self._clip_in += x.shape[0]
            return sum(c.shape[0] for c, _ in self._clips) / SAMPLE_RATE

    def mark(self, name: str) -> None:
        """Mark the boundary after the clips queued so far. Once the frame whose audio reaches the
        boundary has been delivered, the session emits {"type": "mark", "name": name, "sample": p,
        "frame": n} (between the sink's video and audio calls for that frame), p the boundary's
        timeline sample: an agent framework learns where a speech segment starts and when it has
        been played. A mark set after its clips were all taken lands at the present end of the
        timeline; interrupt drops the marks not reached."""
        with self._lock:
            self._check_open()
            self._clip_marks.append((self._clip_in, str(name)))

    def interrupt(self) -> None:
        """Drop queued speech and silence what is not rendered yet: the next frame rendered has a
        closed mouth (its whole audio window is silence), and its sound is silence too."""
        with self._lock:
            self._check_open()
            self._clips.clear()
            self._clip_marks.clear()
            self._clip_in = self._clip_out
            self._live.clear()
            self._live_samples = 0
            self._last_live = -1e9
            self._interrupt = True
        self._event({"type": "interrupted"})

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True  # the renderer skips it from now on and the server forgets it
            self._clips.clear()
            self._live.clear()
            self._live_samples = 0
        self._event({"type": "closed"})

    def _check_open(self) -> None:
        if self.closed:
            raise SessionError(f"session {self.id} is closed")

    @property
    def queued_s(self) -> float:
        with self._lock:
            return (sum(c.shape[0] for c, _ in self._clips) + self._live_samples) / SAMPLE_RATE

    @property
    def speaking(self) -> bool:
        return self._speaking

    def _event(self, event: dict) -> None:
        event = dict(event, session=self.id, t=round(time.monotonic() - self.created, 3))
        self.events.append(event)
        self.on_event(event)

    # ------------------------------------------------------------ the renderer's side (its thread)

    def advance(self, now: float) -> list[FrameJob]:
        """Move the timeline up to `now` (real time) and return the frames now complete."""
        if self._t0 is None or self.closed:
            return []
        spf = self.stream.samples_per_frame
        with self._lock:
            if self._interrupt:
                self._interrupt = False
                self._silence_rest()
            target = int((now - self._t0) * SAMPLE_RATE)
            room = target - self.stream.samples
            taken = self._take(room, now) if room > 0 else []
        jobs: list[FrameJob] = []
        for x, t_in, kind in taken:
            # pieces of one frame, so each frame knows when its audio was complete
            for a in range(0, x.shape[0], spf):
                piece = x[a:a + spf]
                start = self.stream.samples
                live = kind == "live"
                turn = None if live else self._t0 + start / SAMPLE_RATE  # this piece's real-time turn
                self._segments.append(_Segment(start, start + piece.shape[0], t_in, kind != "silence", turn))
                self._pending = np.concatenate([self._pending, piece])
                n0, n1, windows, aus = self.stream.feed(piece)
                due = max(self._t0 + self.stream.samples / SAMPLE_RATE, t_in if live else 0.0)
                jobs.extend(FrameJob(self, n, windows[i], aus[i], due) for i, n in enumerate(range(n0, n1)))
        return jobs

    def _take(self, room: int, now: float) -> list[tuple[np.ndarray, float, str]]:
        """Up to `room` samples: (samples, time they entered, "clip" | "live" | "silence")."""
        out: list[tuple[np.ndarray, float, str]] = []
        pos = self.stream.samples  # the timeline sample the next taken sample becomes
        self._place_marks(pos, 0)
        while room > 0 and self._clips:
            if self._live:  # a clip plays: live input meanwhile is discarded
                self.live_dropped_samples += self._live_samples
                self._live.clear()
                self._live_samples = 0
            c, t_push = self._clips[0]
            k = min(room, c.shape[0])
            out.append((c[:k], t_push, "clip"))
            self._place_marks(pos, k)
            pos += k
            room -= k
            if k == c.shape[0]:
                self._clips.popleft()
            else:
                self._clips[0] = (c[k:], t_push)
        while room > 0 and self._live:
            c, t_in = self._live[0]
            k = min(room, c.shape[0])
            out.append((c[:k], t_in, "live"))
            room -= k
            self._live_samples -= k
            if k == c.shape[0]:
                self._live.popleft()
            else:
                self._live[0] = (c[k:], t_in)
        if room > 0 and not self._clips and not self._live and now - self._last_live > self.gap_s:
            out.append((np.zeros(room, dtype=np.float32), now, "silence"))
        return out

    def _place_marks(self, pos: int, k: int) -> None:
        # Clip samples [clip_out, clip_out + k) land at timeline [pos, pos + k): a mark after clip
        # sample m lands at pos + m - clip_out (marks whose clips were taken before: at pos).
        end = self._clip_out + k
        while self._clip_marks and self._clip_marks[0][0] <= end:
            m, name = self._clip_marks.popleft()
            self._marks.append((pos + max(m - self._clip_out, 0), name))
        self._clip_out = end

    def _silence_rest(self) -> None:
        # Everything not yet rendered becomes silence: the samples waiting for their frame, and
        # the feature rows of every window from the next frame on.
        n = self.stream.n
        keep = n * self.stream.samples_per_frame - self._pending_start
        self._pending[max(keep, 0):] = 0.0
        for seg in self._segments:
            if seg.stop > n * self.stream.samples_per_frame:
                seg.pushed = False
        while self._marks and self._marks[-1][0] > n * self.stream.samples_per_frame:
            self._marks.pop()  # their speech became silence
        pad = self.stream.silence()
        if pad:
            start = self.stream.samples - pad
            self._pending = np.concatenate([self._pending, np.zeros(pad, dtype=np.float32)])
            self._segments.append(_Segment(start, start + pad, time.monotonic(), False, None))

    def deliver(self, n: int, frame: np.ndarray | None) -> None:
        """Frame n rendered (or None: dropped): hand it and its audio to the sink, update events."""
        spf = self.stream.samples_per_frame
        a = n * spf - self._pending_start
        audio = self._pending[a:a + spf]
        if audio.shape[0] < spf:
            audio = np.concatenate([audio, np.zeros(spf - audio.shape[0], dtype=np.float32)])
        self._pending = self._pending[a + spf:]
        self._pending_start = (n + 1) * spf
        mid = n * spf + spf // 2
        t_in, voiced_push = None, False
        while self._segments and self._segments[0].stop <= n * spf:
            self._segments.popleft()
        for seg in self._segments:
            if seg.start >= (n + 1) * spf:
                break
            if seg.pushed:
                voiced_push = True
                if seg.start <= mid < seg.stop:
                    t_in = seg.entered(mid)
        if self.closed:
            return
        if frame is None:
            self.metrics.dropped()
        self.sink.video(n, frame, t_in)
        while self._marks and self._marks[0][0] <= (n + 1) * spf:  # before its audio: the sink
            p, name = self._marks.popleft()                         # then knows all of frame n
            self._event({"type": "mark", "name": name, "sample": p, "frame": n})
        self.sink.audio(n, audio)
        self._track_speech(voiced_push and float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) > VOICED_RMS, n)

    def _track_speech(self, voiced: bool, n: int) -> None:
        if voiced:
            self._quiet_frames = 0
            if not self._speaking:
                self._speaking = True
                self._event({"type": "speaking_started", "frame": n})
        elif self._speaking:
            self._quiet_frames += 1
            if self._quiet_frames >= HANGOVER_FRAMES:
                self._speaking = False
                self._event({"type": "speaking_stopped", "frame": n})

    def info(self) -> dict:
        """This session's line in `/metrics`."""
        out = {"avatar": self.avatar_id, "started": self.started, "speaking": self._speaking,
               "queued_s": round(self.queued_s, 3), "frame": self.stream.n}
        out.update(self.metrics.snapshot())
        return out
