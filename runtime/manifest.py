"""The bundle manifest's integrity digest and its field-by-field validation (numpy-free).

A flipped digit in manifest.json (K 330 -> 230, fps 25 -> 35) parses and renders wrong frames, and
the per-file sha256 table cannot see it: the manifest carries `manifest_sha256`, the sha256 of its
own canonical JSON without that key (sorted keys, no spaces, UTF-8), checked at open. Like the file
hashes, this detects damage and hand edits, not a malicious author (who can recompute it).

Then every field the runtime reads is checked for type and range here, once, so that later code
can trust the values: a bad one gives one BundleError naming the key, what it is and what it must
be. The fields are docs/interfaces.md's; `training` is informational and not checked.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable

DIGEST_KEY = "manifest_sha256"
MAX_GAUSSIANS = 10_000_000  # ~2 GB of per-Gaussian network output per frame batch: far past any avatar
MAX_SIZE = 8192
MAX_TRACK = 100_000


def canonical_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, `manifest_sha256` left out."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its `manifest_sha256` set (the writer's last step)."""
    return {**{k: v for k, v in manifest.items() if k != DIGEST_KEY}, DIGEST_KEY: canonical_digest(manifest)}


Check = Callable[[Any], str | None]  # None if fine, else what the value must be


def _number(lo: float, hi: float, low_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if low_open else v >= lo) and v <= hi
        return None if ok else f"a number in {'(' if low_open else '['}{lo}, {hi}]"

    return check


def _integer(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else f"an integer in [{lo}, {hi}]"

    return check


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def _numbers(n: int, lo: float, hi: float) -> Check:
    item = _number(lo, hi)

    def check(v: Any) -> str | None:
        ok = isinstance(v, list) and len(v) == n and all(item(x) is None for x in v)
        return None if ok else f"a list of {n} numbers in [{lo}, {hi}]"

    return check


def _intrinsics(v: Any) -> str | None:
    want = "a 3x3 matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0"
    if not (isinstance(v, list) and len(v) == 3 and all(_numbers(3, -1e7, 1e7)(r) is None for r in v)):
        return want
    return None if v[0][0] > 0 and v[1][1] > 0 and v[2] == [0, 0, 1] else want


# (dotted key, check, required). Keys the runtime reads; the rest (training, sdk_version) are free.
FIELDS: list[tuple[str, Check, bool]] = [
    ("fps", _number(0, 240, low_open=True), True),
    ("width", _integer(1, MAX_SIZE), True),
    ("height", _integer(1, MAX_SIZE), True),
    ("K", _intrinsics, True),
    ("audio.encoder", _string, True),
    ("audio.rate", _number(0, 1000, low_open=True), False),
    ("audio.feature_dim", _integer(1, 8192), True),
    ("audio.window", _integer(1, 1024), True),
    ("aus.neutral", _numbers(6, 0, 5), True),
    ("aus.blink_peak", _number(0, 5), True),
    ("aus.blink_rate_hz", _number(0, 10), False),
    ("aus.blink_period_s", _number(0, 3600), False),
    ("aus.blink_duration_s", _number(0, 10, low_open=True), False),
    ("gaussians.count", _integer(1, MAX_GAUSSIANS), True),
    ("onnx.deform.file", _string, True),
    ("tracks.frames", _integer(1, MAX_TRACK), True),
    ("tracks.torso_frames", _integer(1, MAX_TRACK), True),
    ("tracks.torso.file", _string, True),
    ("tracks.torso.codec", _string, True),
]


def _lookup(manifest: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = manifest
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with the manifest's fields, one line each (empty: all fine)."""
    found = []
    for dotted, check, required in FIELDS:
        present, value = _lookup(manifest, dotted)
        if not present:
            if required:
                found.append(f"{dotted} is missing")
            continue
        want = check(value)
        if want is not None:
            found.append(f"{dotted} is {json.dumps(value)[:60]}, must be {want}")
    if not _lookup(manifest, "aus.blink_rate_hz")[0] and not _lookup(manifest, "aus.blink_period_s")[0]:
        found.append("aus needs blink_rate_hz or blink_period_s")
    ok_k, k = _lookup(manifest, "K")
    if ok_k and _intrinsics(k) is None:
        for axis, size_key in ((0, "width"), (1, "height")):
            ok, size = _lookup(manifest, size_key)
            if ok and isinstance(size, int) and not 0 < k[axis][2] < size:
                found.append(f"K's principal point {k[axis][2]} lies outside the {size}-pixel {size_key}")
    ok_e, engines = _lookup(manifest, "engines")
    if ok_e and not (isinstance(engines, list) and all(isinstance(e, dict) for e in engines)):
        found.append("engines must be a list of objects")
    return found


def check_avatar_manifest(manifest: dict[str, Any], where: str) -> None:
    """Raise BundleError listing every problem of an avatar bundle's manifest (see `problems`)."""
    from embedtalk_sdk.runtime.bundle import BundleError

    bad = problems(manifest)
    if bad:
        raise BundleError(f"bundle {where}: invalid manifest: " + "; ".join(bad))
