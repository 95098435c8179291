"""Time `preprocess` per clip: wall seconds per step and the ratio to the clip's length.

    python benchmarks/bench_preprocess.py [CLIP.mp4 ...] [-o bench_preprocess.json] [--keep DIR]

Default clips: ../shared/data/real/may_5s.mp4 and ted_lieu_hdtf_60s.mp4; the models: $EMBEDTALK_MODELS
(README, "Model files"). Each runs from scratch into
a fresh folder (deleted afterwards unless --keep). The report records the CPU count and the load
average before each run: on a shared machine the ratio is only meaningful next to them.
Target: ratio <= 2 (preprocessing takes at most twice the clip's length) on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from embedtalk_sdk.preprocess.preprocess import PreprocessOptions, preprocess

# The test clips beside the checkout (a benchmark runs from the source tree); the MediaPipe models
# are found as every model file is ($EMBEDTALK_MODELS, then the user cache: embedtalk_sdk/model_files.py).
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
DEFAULT_CLIPS = [REAL / "may_5s.mp4", REAL / "ted_lieu_hdtf_60s.mp4"]


def bench_clip(clip: Path, out: Path) -> dict:
    load = os.getloadavg()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    record = preprocess(clip, out, PreprocessOptions())
    wall = time.perf_counter() - t0
    frames = record["steps"]["decode"]["found"]["frames"]
    seconds = frames / 25.0
    return {
        "clip": str(clip), "frames": frames, "clip_seconds": seconds,
        "size": [record["steps"]["decode"]["found"]["width"], record["steps"]["decode"]["found"]["height"]],
        "wall_seconds": round(wall, 2), "cpu_seconds_main_process": round(time.process_time() - cpu0, 2),
        "ratio_to_clip_length": round(wall / seconds, 3),
        "steps_seconds": {k: v["seconds"] for k, v in record["steps"].items()},
        "load_average_before": [round(x, 2) for x in load],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("-o", "--out", type=Path, default=Path("bench_preprocess.json"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the datasets under this folder")
    args = parser.parse_args()
    runs = []
    for clip in args.clips:
        if not clip.is_file():
            print(f"skipped: {clip} not found")
            continue
        base = args.keep or Path(tempfile.mkdtemp(prefix="bench_pre_"))
        out = base / clip.stem
        shutil.rmtree(out, ignore_errors=True)
        try:
            runs.append(bench_clip(clip, out))
        finally:
            if args.keep is None:
                shutil.rmtree(base, ignore_errors=True)
        print(json.dumps(runs[-1]))
    report = {"cpus": os.cpu_count(), "runs": runs}
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
