"""Per-client rate limits: token buckets keyed by the peer address (429 with Retry-After).

A bucket holds `burst` tokens and refills at `rate` per second; a request takes one. The table of
clients is bounded (`max_clients`, the least recently seen forgotten first), so a flood of
addresses cannot grow the server's memory.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict


class RateLimiter:
    """`rate` events per second per key, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, max_clients: int = 4096) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate, self.burst, self.max_clients = float(rate), int(burst), int(max_clients)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time)

    def __len__(self) -> int:
        """How many addresses are remembered (at most max_clients)."""
        return len(self._buckets)

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token for `key`: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """The Retry-After header's value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait)))
