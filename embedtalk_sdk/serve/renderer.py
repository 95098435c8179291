"""One render thread per loaded avatar, serving all of that avatar's sessions.

Every `tick_s` (or at once when audio is pushed) the thread moves each session's timeline to the
present (`Session.advance`), collects the frames that became complete, and renders them together:
the network runs once on the frames of all sessions (batches of the avatar's `batch`), then each
frame is rasterised at its own session's place in the track. `Avatar` renders one clip at a
time (its lock guards the backend's reused buffers); here only this thread ever renders on the
avatar, so the lock is never contended and sessions are not serialised into separate slow clips:
N sessions cost one network call per batch plus N rasterisations.

A frame whose audio was complete more than `max_lag_s` ago when its turn comes is dropped (its
sound is still sent): an overloaded renderer stays real time instead of drifting behind.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.serve.session import FrameJob, Session

log = logging.getLogger("embedtalk_sdk.serve")

TICK_S = 0.01
MAX_LAG_S = 0.1


class AvatarRenderer:
    """The render thread of one avatar. `add`/`remove` sessions from any thread.

    clock: the time the sessions' timelines follow (`Session.start` must take the same clock);
    time.monotonic, or a faster one in a test that plays minutes of stream in seconds."""

    def __init__(self, avatar: Avatar, name: str, tick_s: float = TICK_S, max_lag_s: float = MAX_LAG_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.avatar, self.name, self.clock = avatar, name, clock
        self.tick_s, self.max_lag_s = float(tick_s), float(max_lag_s)
        self._sessions: list[Session] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.frames_rendered = 0
        self.render_s = 0.0          # time spent rendering (network + rasteriser)
        self.busy_s = 0.0            # time spent in iterations that had work
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"render-{name}", daemon=True)
        self._thread.start()

    def add(self, session: Session) -> None:
        with self._lock:
            self._sessions.append(session)
        self._wake.set()

    def remove(self, session: Session) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)

    @property
    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions)

    def notify(self) -> None:
        """Audio arrived: wake up now instead of at the next tick."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.tick_s)
            self._wake.clear()
            try:
                self._iteration()
            except Exception:  # a bug must not kill every session silently: log it and go on
                log.exception("renderer %s: iteration failed", self.name)
                time.sleep(self.tick_s)

    def _iteration(self) -> None:
        start = time.monotonic()  # render_s / busy_s are wall time whatever the sessions' clock
        now = self.clock()
        jobs: list[FrameJob] = []
        for s in self.sessions:
            if s.closed:
                self.remove(s)
                continue
            jobs.extend(s.advance(now))
        if not jobs:
            return
        t0, w0 = self.clock(), time.monotonic()
        keep: list[FrameJob] = []
        for job in jobs:
            if t0 - job.due > self.max_lag_s:
                job.session.deliver(job.n, None)  # late: dropped, its sound still goes out
            else:
                keep.append(job)
        if keep:
            windows = np.stack([j.window for j in keep])
            aus = np.stack([j.aus for j in keep])
            where = np.array([j.n for j in keep], dtype=np.int64)
            for job, frame in zip(keep, self.avatar.render_network_inputs(windows, aus, where)):
                job.session.deliver(job.n, frame.copy())
        w1 = time.monotonic()
        self.frames_rendered += len(keep)
        self.render_s += w1 - w0
        self.busy_s += w1 - start
