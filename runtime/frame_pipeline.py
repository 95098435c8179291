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
    """Up to `workers` frames rendering at once, each into its own buffer; `put` queues one and
    returns the oldest once more than `workers` are queued, `drain` the rest. A returned frame is a
    buffer reused `workers + 1` frames later (copy to keep). `close` (always, e.g. in `finally`)
    waits for the frames still rendering."""

    def __init__(self, render: RenderFn, workers: int, shape: tuple[int, int, int]) -> None:
        if workers < 1:
            raise ValueError(f"FramePipeline: workers must be >= 1, got {workers}")
        self._render, self._workers = render, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="embedtalk-frame")
        self._buffers = [np.empty(shape, dtype=np.uint8) for _ in range(workers + 1)]
        self._pending: deque[Future] = deque()
        self._queued = 0

    @property
    def in_flight(self) -> int:
        """Frames queued and not yet handed out."""
        return len(self._pending)

    def put(self, delta_means: np.ndarray, delta_opacity: np.ndarray, viewmat: np.ndarray,
            background: np.ndarray) -> np.ndarray | None:
        """Queue one frame (its arrays must stay unchanged until it is handed out); -> the oldest
        frame when `workers` are already rendering, else None. Re-raises a frame's error."""
        out = self._buffers[self._queued % len(self._buffers)]
        self._queued += 1
        self._pending.append(self._pool.submit(self._render, delta_means, delta_opacity, viewmat, background,
                                               out=out, threads=1))
        if len(self._pending) > self._workers:
            return self._pending.popleft().result()
        return None

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
