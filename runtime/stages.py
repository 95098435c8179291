"""Per-stage timers for `embedtalk-sdk bench --profile`: wall and process-CPU seconds, added up by name.

No-ops when the stages dict is None, so the playback path pays one `is None` per stage."""
from __future__ import annotations

import time


def stage_clock(stages: dict | None) -> tuple[float, float] | None:
    """(wall, process CPU) seconds now, if stages are being timed (`stages` not None)."""
    return None if stages is None else (time.perf_counter(), time.process_time())


def add_stage(stages: dict | None, name: str, since: tuple[float, float] | None) -> tuple[float, float] | None:
    """Add the wall and CPU seconds since `since` to stages[name] = [wall, cpu]; the clock now."""
    if stages is None or since is None:
        return None
    now = stage_clock(stages)
    add_seconds(stages, name, now[0] - since[0], now[1] - since[1])
    return now


def add_seconds(stages: dict | None, name: str, wall: float, cpu: float) -> None:
    """Add `wall` and `cpu` seconds, timed elsewhere (e.g. in compiled code), to stages[name]."""
    if stages is not None:
        acc = stages.setdefault(name, [0.0, 0.0])
        acc[0] += wall
        acc[1] += cpu
