"""Benchmark every backend present on one bundle, in one run; JSON + PNG chart.

    python benchmarks/bench_backends.py AVATAR.etk [-o bench_out] [--frames 50]

The baseline is the torch backend (training-side model + reference rasteriser) timed in the same
run; the report gives each backend's fps, p50/p99 latency and speed-up over that baseline.
"""
from __future__ import annotations

import argparse
import json

from embedtalk_sdk.runtime.bench import run_bench, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("-o", "--out", default="bench_out")
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args()
    report = run_bench(args.bundle, "all", args.frames)
    path = write_report(report, args.out)
    print(json.dumps(report, indent=2))
    print(f"written: {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
