"""Counters and latency percentiles of the server, per session and in total (`GET /metrics`).

Latency is "audio sample in -> its frame sent": for each sent frame whose middle sample came from
pushed audio (microphone, WebSocket PCM, upload, TTS), the time from that sample entering the
session (a live chunk's arrival; a clip's sample at its push or its real-time turn, the later) to the frame being handed to
the WebRTC sender. It includes the audio-window lookahead (frame n needs ~150 ms of audio past its
time stamp with the mel encoder) and the rendering.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

LATENCY_KEEP = 3000      # latencies kept per session for the percentiles (2 minutes at 25 fps)
FPS_WINDOW_S = 2.0       # fps is measured over the frames sent in the last 2 s


def percentile(values, q: float) -> float | None:
    """The q-th percentile of `values` (None for none), rounded to 0.1 ms."""
    if len(values) == 0:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 1)


class SessionMetrics:
    """What one session sent: frames, drops, latencies, a recent fps. Thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames_sent = 0
        self.dropped_frames = 0
        self.audio_frames_sent = 0
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_KEEP)
        self._sent_times: deque[float] = deque()
        self.started = time.monotonic()

    def sent(self, latency_ms: float | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_sent += 1
            self._sent_times.append(now)
            while self._sent_times and self._sent_times[0] < now - FPS_WINDOW_S:
                self._sent_times.popleft()
            if latency_ms is not None:
                self.latencies_ms.append(float(latency_ms))

    def dropped(self, n: int = 1) -> None:
        with self._lock:
            self.dropped_frames += n

    def audio_sent(self) -> None:
        with self._lock:
            self.audio_frames_sent += 1

    def fps(self, now: float | None = None) -> float:
        """Frames sent per second over the last FPS_WINDOW_S (less while the session is younger)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._sent_times if t >= now - FPS_WINDOW_S]
        span = min(FPS_WINDOW_S, max(now - self.started, 1e-3))
        return round(len(recent) / span, 2)

    def counts(self) -> tuple[int, int, list[float]]:
        """(frames_sent, dropped_frames, latencies) of one moment, read under the lock the render
        thread writes them under."""
        with self._lock:
            return self.frames_sent, self.dropped_frames, list(self.latencies_ms)

    def snapshot(self) -> dict:
        with self._lock:
            lat = list(self.latencies_ms)
            out = {"frames_sent": self.frames_sent, "dropped_frames": self.dropped_frames,
                   "audio_frames_sent": self.audio_frames_sent}
        out.update(fps=self.fps(), latency_ms_p50=percentile(lat, 50), latency_ms_p99=percentile(lat, 99))
        return out


class ServerMetrics:
    """Totals over the server's life: closed sessions' counts stay in frames_sent / dropped_frames."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed_sent = 0
        self._closed_dropped = 0
        self._closed_latencies: deque[float] = deque(maxlen=LATENCY_KEEP)
        self.refused = 0

    def closed(self, m: SessionMetrics) -> None:
        sent, dropped, latencies = m.counts()
        with self._lock:
            self._closed_sent += sent
            self._closed_dropped += dropped
            self._closed_latencies.extend(latencies)

    def report(self, sessions: dict[str, dict], live: list[SessionMetrics]) -> dict:
        """The `/metrics` document: totals, then `per_session` {id: {...}}."""
        with self._lock:
            lat = list(self._closed_latencies)
            sent, dropped, refused = self._closed_sent, self._closed_dropped, self.refused
        for m in live:
            m_sent, m_dropped, m_lat = m.counts()
            lat.extend(m_lat)
            sent += m_sent
            dropped += m_dropped
        return {"sessions": len(sessions), "frames_sent": sent, "dropped_frames": dropped,
                "latency_ms_p50": percentile(lat, 50), "latency_ms_p99": percentile(lat, 99),
                "sessions_refused": refused, "per_session": sessions}
