"""Does a training run that is SIGKILLed and resumed end where an uninterrupted one does?

    python benchmarks/kill_resume.py [--data DATASET | --seconds 40 --size 256] [--iterations 900]
        [--kills 5] [--seed 0] [--checkpoint-seconds 10] [--work DIR] [-o kill_resume.json]
        [-- extra train options]

Runs `embedtalk-sdk train` as a subprocess: once uninterrupted, and once SIGKILLed `--kills` times,
each attempt killed a random (seeded) number of seconds after its launch, in [--min-delay,
--max-delay] (default: 5% to 30% of the uninterrupted run's time, so that the kills spread over
the run: start-up, densification, validation), then started again with `--resume` (or afresh when
no resume.pt was written yet). At
the end it compares the two runs' final validation PSNR (issue 12's bar: within 0.3 dB) and checks
the killed run's folder: no 0-byte files, no temporaries left. Prints a table, writes JSON.

Without --data it synthesises the demo's speaker (`embedtalk-sdk synth`, 40 s at 256² unless --seconds
/ --size say otherwise) and trains
with the demo's options (6000 initial points, 12k cap, no mouth crops). The checkpoint cadence is
10 s here, not train's 30 s: with kills 10-60 s after launch most attempts would otherwise die
before their first write and the benchmark would mostly time restarts; the mechanism is the same.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

DEMO_TRAIN_OPTIONS = ["--init-points", "6000", "--max-gaussians", "12000", "--mouth-crops", "0"]
PSNR_BAR_DB = 0.3


def cli() -> list[str]:
    """The `embedtalk-sdk` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("embedtalk-sdk")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from embedtalk_sdk.cli import app; app()"]


class Attempt:
    """One `train` subprocess; its output is drained by a thread that keeps the last step the
    progress bar showed (the bar is drawn live: the environment says the pipe is a terminal)."""

    def __init__(self, cmd: list[str], log: Path):
        env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "160"}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.step = 0
        self._log = log.open("ab")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pattern = re.compile(rb"(\d+)/(\d+)")
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self._log.write(chunk)
            found = pattern.findall(chunk)
            if found:
                self.step = int(found[-1][0])

    def kill_after(self, delay: float) -> bool:
        """SIGKILL `delay` s after launch; -> False when it ended on its own first."""
        try:
            self.proc.wait(timeout=max(0.0, self.started + delay - time.perf_counter()))
            killed = False
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            killed = True
        self._reader.join()
        self._log.close()
        return killed

    def finish(self) -> int:
        rc = self.proc.wait()
        self._reader.join()
        self._log.close()
        return rc


@dataclass
class Kill:
    attempt: int
    resumed_from: int | None  # the step the attempt started at (None: a fresh start)
    kill_after_s: float  # after the attempt's launch
    step_at_kill: int  # the progress bar's last step
    step_saved: int | None  # resume.pt's step after the kill: where the next attempt starts
    zero_byte_files: list[str]
    temporaries: list[str]  # hidden .part files the kill left (the next start removes them)


def saved_step(run: Path) -> int | None:
    path = run / "resume.pt"
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"]) if path.is_file() else None


def folder_faults(run: Path) -> tuple[list[str], list[str]]:
    """(0-byte files, temporaries) in a run folder."""
    files = [p for p in run.iterdir() if p.is_file()] if run.is_dir() else []
    zero = sorted(p.name for p in files if p.stat().st_size == 0)
    return zero, sorted(p.name for p in files if p.name.endswith(".part"))


def final_psnr(run: Path) -> dict:
    metrics = json.loads((run / "train_metrics.json").read_text())
    return {"psnr_val": metrics["psnr_val"], "train_seconds": metrics["train_seconds"],
            "validations": [(v["step"], v["psnr_val"]) for v in metrics["validations"]]}  # fmt: skip


def run_killed(train: list[str], run: Path, delays: list[float], log: Path) -> tuple[list[Kill], float]:
    """Launch, kill after each delay, resume; the last attempt runs to the end. -> (kills, wall s)."""
    start = time.perf_counter()
    kills = []
    for n, delay in enumerate(delays):
        resumed_from = saved_step(run)
        attempt = Attempt(train + (["--resume"] if resumed_from is not None else []), log)
        if not attempt.kill_after(delay):
            raise SystemExit(f"attempt {n} finished before its kill at {delay:.1f} s: give more --iterations")
        zero, parts = folder_faults(run)
        kills.append(Kill(n, resumed_from, round(delay, 2), attempt.step, saved_step(run), zero, parts))
        print(f"kill {n}: {delay:.1f} s after launch, at step {attempt.step}, resume.pt at {kills[-1].step_saved}",
              flush=True)  # fmt: skip
    last = Attempt(train + (["--resume"] if saved_step(run) is not None else []), log)
    if last.finish() != 0:
        raise SystemExit(f"the last attempt failed: see {log}")
    return kills, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="dataset folder (default: synthesise the demo's speaker)")
    p.add_argument("--seconds", type=float, default=40.0, help="synthetic clip length (without --data)")
    p.add_argument("--size", type=int, default=256, help="synthetic frame size (without --data)")
    p.add_argument("--iterations", type=int, default=900)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--min-delay", type=float, help="earliest kill, s after an attempt's launch "
                   "(default: 5%% of the uninterrupted run's time)")
    p.add_argument("--max-delay", type=float, help="latest kill (default: 30%% of the uninterrupted run's time)")
    p.add_argument("--checkpoint-seconds", type=float, default=10.0)
    p.add_argument("--work", type=Path, help="folder for the dataset and both runs (default: a temporary one)")
    p.add_argument("-o", "--out", type=Path, default=Path("kill_resume.json"))
    p.add_argument("train_options", nargs="*", help="more `train` options, after --")
    args = p.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="kill_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    data, options = args.data, list(args.train_options)
    if data is None:
        data, options = work / "data", DEMO_TRAIN_OPTIONS + options
        if not (data / "transforms_train.json").is_file():
            subprocess.run(cli() + ["synth", "-o", str(data), "--seconds", str(args.seconds), "--size", str(args.size),
                                    "--seed", "0"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def train(run: Path) -> list[str]:
        return cli() + ["train", str(data), "-o", str(run), "--iterations", str(args.iterations),
                        "--checkpoint-seconds", str(args.checkpoint_seconds), *options]  # fmt: skip

    full_run, killed_run, log = work / "uninterrupted", work / "killed", work / "train.log"
    for folder in (full_run, killed_run):
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    if Attempt(train(full_run), log).finish() != 0:
        raise SystemExit(f"the uninterrupted run failed: see {log}")
    full_wall = time.perf_counter() - t0
    lo = 0.05 * full_wall if args.min_delay is None else args.min_delay
    hi = 0.3 * full_wall if args.max_delay is None else args.max_delay
    delays = np.random.default_rng(args.seed).uniform(lo, hi, args.kills).tolist()
    kills, killed_wall = run_killed(train(killed_run), killed_run, delays, log)

    full, resumed = final_psnr(full_run), final_psnr(killed_run)
    zero, parts = folder_faults(killed_run)
    diff = resumed["psnr_val"] - full["psnr_val"]
    report = {
        "command": " ".join(train(Path("RUN"))),
        "iterations": args.iterations, "seed": args.seed, "checkpoint_seconds": args.checkpoint_seconds,
        "kills": [asdict(k) for k in kills],
        "uninterrupted": {**full, "wall_s": round(full_wall, 1)},
        "killed_and_resumed": {**resumed, "wall_s": round(killed_wall, 1)},
        "psnr_difference_db": round(diff, 3),
        "within_bar": abs(diff) <= PSNR_BAR_DB,
        "final_folder": {"files": sorted(q.name for q in killed_run.iterdir()), "zero_byte": zero,
                         "temporaries": parts},
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2))

    print(f"\n{report['command']}\n")
    print("| kill | started at step | killed after (s) | step at kill | resume.pt step | 0-byte | .part left |")
    print("|---|---|---|---|---|---|---|")
    for k in kills:
        print(f"| {k.attempt} | {k.resumed_from if k.resumed_from is not None else 'fresh'} | {k.kill_after_s:.1f} | "
              f"{k.step_at_kill} | {k.step_saved} | {len(k.zero_byte_files)} | {len(k.temporaries)} |")
    print(f"\nfinal val PSNR: uninterrupted {full['psnr_val']:.3f} dB ({full_wall:.0f} s), killed {len(kills)}x and "
          f"resumed {resumed['psnr_val']:.3f} dB ({killed_wall:.0f} s): difference {diff:+.3f} dB "
          f"({'within' if report['within_bar'] else 'OUTSIDE'} {PSNR_BAR_DB} dB); "
          f"final folder {report['final_folder']['files']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
