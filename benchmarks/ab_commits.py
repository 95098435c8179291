"""This checkout against another commit's runtime, in alternating fresh processes on the same bundles:
frames per second, latency, CPU per frame, cold start (Avatar.load + first frame) and how far the
frames differ.

    git worktree add /tmp/old 753d796
    python benchmarks/ab_commits.py --old-src /tmp/old A.etk B.etk [--frames 200] [--rounds 3] [--cold 5]

Each measurement is its own process, old and new alternating (old, new, old, new, ...), so a
machine that gets busier or quieter during the run shifts both alike; the report gives every
run and the medians. The old runtime is imported from --old-src (the package layout of
pyproject.toml: embedtalk_sdk/, runtime/, plugins/, export/), the new one from this checkout.
Frames: the same sentence, AUs and track through both; mean and max absolute difference in
uint8 levels, and the share of pixels that differ.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"runtime": "runtime", "plugins": "plugins", "export": "export"}  # embedtalk_sdk/<name> -> folder

CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
import numpy as np
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.audio.speech import synthesize_speech
bundle, mode, n_frames, frames_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
audio = synthesize_speech(0.5 + (n_frames + 3) / 25, seed=7).samples
t0 = time.perf_counter()
avatar = Avatar.load(bundle, backend="onnxruntime")
t1 = time.perf_counter()
gen = avatar.frames(audio, sample_rate=16000)
first = next(gen)
t2 = time.perf_counter()
out = {"runtime": __import__("embedtalk_sdk.runtime.avatar").runtime.avatar.__file__,
       "load_ms": (t1 - t0) * 1e3, "first_frame_after_load_ms": (t2 - t1) * 1e3, "cold_ms": (t2 - t0) * 1e3}
if mode == "speed":
    kept, lat = [first], []
    for _ in range(2):  # warm-up
        kept.append(next(gen))
    c0, prev = time.process_time(), time.perf_counter()
    w0 = prev
    for frame in gen:
        now = time.perf_counter()
        lat.append(now - prev)
        prev = now
        if len(kept) < 50:
            kept.append(frame)
        if len(lat) == n_frames:
            break
    lat = np.asarray(lat)
    out.update(frames=len(lat), fps=len(lat) / (prev - w0), p50_ms=float(np.percentile(lat, 50) * 1e3),
               p99_ms=float(np.percentile(lat, 99) * 1e3), cpu_ms_per_frame=(time.process_time() - c0) * 1e3 / len(lat))
    np.save(frames_out, np.stack(kept))
print("RESULT " + json.dumps(out))
"""

SHIM = r"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                    and "editable" not in repr(f).lower()]
sys.path.insert(0, {pkg!r})
"""


def old_package(old_src: Path, where: Path) -> Path:
    """A folder that imports as `embedtalk_sdk` from old_src's layout (symlinks) -> its parent."""
    pkg = where / "pkg" / "embedtalk_sdk"
    pkg.mkdir(parents=True)
    for entry in (old_src / "embedtalk_sdk").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for name, folder in LAYOUT.items():
        (pkg / name).symlink_to(old_src / folder)
    return pkg.parent


def run_child(bundle: str, mode: str, n_frames: int, frames_out: Path, shim_dir: Path | None, cwd: Path) -> dict:
    env = dict(os.environ)
    if shim_dir is not None:  # sitecustomize: the old tree instead of this checkout's editable install
        env["PYTHONPATH"] = str(shim_dir) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(Path(bundle).resolve()), mode, str(n_frames),
                           str(frames_out)], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"child failed ({mode}, {bundle}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def frame_diff(old: np.ndarray, new: np.ndarray) -> dict:
    d = np.abs(old.astype(np.int16) - new.astype(np.int16))
    return {"frames": int(len(d)), "mean_abs_levels": float(d.mean()), "max_abs_levels": int(d.max()),
            "share_of_values_differing": float((d > 0).mean())}


def med(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--old-src", type=Path, required=True, help="a checkout of the old commit")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="speed runs per side and bundle")
    parser.add_argument("--cold", type=int, default=5, help="cold-start processes per side and bundle")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shim = tmp / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SHIM.format(pkg=str(old_package(args.old_src.resolve(), tmp))))
        cwd = tmp / "cwd"  # not the repository: its embedtalk_sdk/ folder would shadow both
        cwd.mkdir()
        sides = {"old": shim, "new": None}
        report = []
        for bundle in args.bundles:
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            cold: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.rounds):
                for side, shim_dir in sides.items():
                    runs[side].append(run_child(bundle, "speed", args.frames, tmp / f"{side}.npy", shim_dir, cwd))
                    print(bundle, side, json.dumps(runs[side][-1]), flush=True)
            diff = frame_diff(np.load(tmp / "old.npy"), np.load(tmp / "new.npy"))
            for r in range(args.cold):
                for side, shim_dir in sides.items():
                    cold[side].append(run_child(bundle, "cold", 0, tmp / "unused.npy", shim_dir, cwd))
            assert "/runtime/" in runs["new"][0]["runtime"] and runs["old"][0]["runtime"] != runs["new"][0]["runtime"]
            row = {"bundle": bundle, "frame_diff": diff, "runs": runs, "cold": cold}
            for side in sides:
                row[side] = {"fps": med(runs[side], "fps"), "p50_ms": med(runs[side], "p50_ms"),
                             "p99_ms": med(runs[side], "p99_ms"), "cpu_ms_per_frame": med(runs[side], "cpu_ms_per_frame"),
                             "cold_ms": med(cold[side], "cold_ms"), "load_ms": med(cold[side], "load_ms"),
                             "first_frame_after_load_ms": med(cold[side], "first_frame_after_load_ms")}
            row["fps_ratio_new_over_old"] = row["new"]["fps"] / row["old"]["fps"]
            report.append(row)
            print(json.dumps({k: row[k] for k in ("bundle", "old", "new", "fps_ratio_new_over_old", "frame_diff")},
                             indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
