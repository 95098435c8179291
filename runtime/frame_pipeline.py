"""`FramePipeline`: a clip's frames rendered side by side, one core each, handed out in order.

A CPU frame has serial stretches (the depth sort, the network's frame vectors, the audio features,
Python) during which one of two cores waits; with each frame on its own core those stretches overlap
other frames' blending. On 2 cores, may_5s 512²: 53 fps one frame at a time, 70-90 two at a time
(runtime/design.md, "Step 5"). Each frame's pixels are the same either way (the rasteriser's result
does not depend on its thread count). Offline clips only (`speak`, `frames`): a frame takes about
twice as long from start to end, which a live stream (`stream`, `serve`) would feel as latency.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

# render(delta_means, delta_opacity, viewmat, background, out=..., threads=...) -> out
RenderFn = Callable[..., np.ndarray]


class FramePipeline:
    """A clip's frames rendering in `workers` threads, each into its own buffer, handed out in order.

    `put` queues a frame and returns the frames done by then (oldest first), waiting for the oldest
    only while more than `depth` are queued: with `depth` at least a network batch beyond `workers`,
    the threads keep rendering while the caller runs the next batch's network and audio features
    (with `depth` = `workers` they ran dry at every batch). A returned frame is a buffer reused
    `depth + 1` frames later (copy to keep). `close` (always, e.g. in `finally`) waits for the
    frames still rendering."""

    def __init__(self, render: RenderFn, workers: int, shape: tuple[int, int, int], depth: int | None = None) -> None:
        depth = workers if depth is None else depth
        if workers < 1 or depth < workers:
            raise ValueError(f"FramePipeline: need workers >= 1 and depth >= workers, got {workers}, {depth}")
        self._render, self._depth = render, depth
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="embedtalk-frame")
        self._buffers = [np.empty(shape, dtype=np.uint8) for _ in range(depth + 1)]
        self._pending: deque[Future] = deque()
        self._queued = 0

    @property
    def in_flight(self) -> int:
        """Frames queued and not yet handed out."""
        return len(self._pending)

    def put(self, delta_means: np.ndarray, delta_opacity: np.ndarray, viewmat: np.ndarray,
            background: np.ndarray) -> list[np.ndarray]:
        """Queue one frame (its arrays must stay unchanged until it is handed out); -> the frames
        ready to hand out, oldest first (maybe none). Re-raises a frame's error."""
        out = self._buffers[self._queued % len(self._buffers)]
        self._queued += 1
        self._pending.append(self._pool.submit(self._render, delta_means, delta_opacity, viewmat, background,
                                               out=out, threads=1))
        ready = []
        while self._pending and (len(self._pending) > self._depth or self._pending[0].done()):
            ready.append(self._pending.popleft().result())
        return ready

    def drain(self) -> Iterator[np.ndarray]:
        """The queued frames, oldest first."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        """Drop the frames not started, wait for those rendering (they write into our buffers)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
