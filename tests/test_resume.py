"""Training survives being killed (issue 12, defect 6): RUN/resume.pt, `--resume`, and a run folder
whose every file is whole: no 0-byte files, no temporaries left behind."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numba
import pytest
import torch
from typer.testing import CliRunner

from embedtalk_sdk.cli import app
from embedtalk_sdk.train.resume import Cadence, ResumeError
from embedtalk_sdk.train.strategy import DensifyConfig
from embedtalk_sdk.train.trainer import TrainConfig, Trainer, TrainResult

# Densifies at steps 15 and 30, validates at 20, 40 and 60; one mouth crop a step draws from the
# frame-order sampler too.
CFG = TrainConfig(iterations=60, init_points=1500, lpips_every=0, mouth_crops=1, val_every=20,
                  densify=DensifyConfig(start=10, stop=45, every=15))  # fmt: skip
EVERY_10_STEPS = Cadence(seconds=math.inf, steps=10)
STOP_AT = 37  # resume.pt then holds step 30: densified once, gradient statistics since step 15


class Killed(Exception):
    """Stands in for a kill: raised from the progress callback, between two steps."""


def _kill_after(step: int):
    def progress(done: int, total: int, info: dict) -> None:
        if done == step:
            raise Killed

    return progress


def _quiet(message: str) -> None:
    pass


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch and numba on one thread: CPU training is then bit-reproducible (with two threads two
    uninterrupted runs part after ~20 steps), so a resumed run must match bit for bit: nothing of
    the state was left out of resume.pt."""
    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


def _assert_whole(run: Path) -> None:
    """Every file in the run folder non-empty, and no hidden temporaries of an atomic write."""
    names = sorted(p.name for p in run.iterdir())
    assert not [n for n in names if n.endswith(".part")], names
    assert all(p.stat().st_size > 0 for p in run.iterdir()), names


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory) -> TrainResult:
    with _one_thread():
        return Trainer(tiny_dataset, CFG, log=_quiet).run(tmp_path_factory.mktemp("uninterrupted"))


@pytest.fixture(scope="module")
def killed_run(tiny_dataset, tmp_path_factory) -> Path:
    """A run folder stopped after STOP_AT steps, with resume.pt written every 10 steps."""
    run = tmp_path_factory.mktemp("killed")
    with _one_thread(), pytest.raises(Killed):
        Trainer(tiny_dataset, CFG, log=_quiet).run(run, progress=_kill_after(STOP_AT), cadence=EVERY_10_STEPS)
    return run


def test_a_killed_run_resumes_to_where_an_uninterrupted_run_ends(tiny_dataset, killed_run, uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    # What a kill during atomic writes leaves: hidden temporaries of the run's files (0 bytes or half).
    (run / ".ckpt.pt.k3j2x1.part").write_bytes(b"")
    (run / ".train_metrics.json.a8b2.part").write_bytes(b'{"valid')
    (run / ".notes.txt.x.part").write_bytes(b"someone else's")
    state = torch.load(run / "resume.pt", weights_only=True)  # plain tensors and containers only
    assert state["step"] == 30 and len(state["losses"]) == 30
    assert len(state["gaussians"]["means"]) > CFG.init_points  # densified at step 15
    assert state["grad_count"].sum() > 0 and state["neighbours"] is not None
    assert [v["step"] for v in json.loads(state["history"])] == [20]
    assert state["optimizer"]["state"][0]["exp_avg"].shape == state["gaussians"]["means"].shape

    logs: list[str] = []
    with _one_thread():
        resumed = Trainer(tiny_dataset, CFG, log=logs.append).run(run, resume=True)

    assert any("resuming" in line and "step 30 of 60" in line for line in logs)
    assert resumed.losses[:30] == state["losses"].tolist()  # the killed run's steps, kept
    # The uninterrupted run's steps, bit for bit: model, optimisers, densification statistics,
    # neighbours and every random draw came back.
    assert resumed.losses == uninterrupted.losses
    done, want = resumed.checkpoint.gaussians.params, uninterrupted.checkpoint.gaussians.params
    assert all(torch.equal(done[k], want[k]) for k in want)
    assert resumed.checkpoint.deform.state_dict().keys() == uninterrupted.checkpoint.deform.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(resumed.checkpoint.deform.state_dict().values(),
                                                 uninterrupted.checkpoint.deform.state_dict().values()))  # fmt: skip
    assert _untimed(resumed.metrics) == _untimed(uninterrupted.metrics)
    names = sorted(p.name for p in run.iterdir())
    assert names == [".notes.txt.x.part", "ckpt.pt", "loss.png", "train_metrics.json"]  # resume.pt done with
    (run / ".notes.txt.x.part").unlink()
    _assert_whole(run)


def _refusal(run: Path, data: Path, cfg: TrainConfig) -> str:
    with pytest.raises(ResumeError) as err:
        Trainer(data, cfg, log=_quiet).run(run, resume=True)
    message = str(err.value)
    assert "\n" not in message and str(run / "resume.pt") in message
    return message


def test_resume_refuses_a_missing_corrupt_or_foreign_state(tiny_dataset, killed_run, tmp_path):
    assert "no such file" in _refusal(tmp_path / "empty", tiny_dataset, CFG)

    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    longer = TrainConfig(**{**CFG.__dict__, "iterations": 80})
    assert "iterations 60 there, 80 here" in _refusal(run, tiny_dataset, longer)

    other = tmp_path / "other_data"
    shutil.copytree(tiny_dataset, other)
    au = other / "au.csv"
    lines = au.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:-1] + [" 4.00"])  # the first frame's blink, changed
    au.write_text("\n".join(lines) + "\n")
    assert "different dataset" in _refusal(run, other, CFG)

    state = (run / "resume.pt").read_bytes()
    (run / "resume.pt").write_bytes(state[: len(state) // 2])  # what a non-atomic write could leave
    assert "not a readable resume state" in _refusal(run, tiny_dataset, CFG)


def test_train_resumes_after_sigkill(tiny_dataset, tmp_path):
    # The real thing: `embedtalk-sdk train` SIGKILLed mid-run, then `--resume`d to the end.
    run = tmp_path / "run"
    args = [str(tiny_dataset), "-o", str(run), "--iterations", "120", "--init-points", "1500", "--mouth-crops", "0",
            "--val-every", "0"]  # fmt: skip
    cmd = [sys.executable, "-c", "from embedtalk_sdk.cli import app; app()", "train", *args]
    proc = subprocess.Popen([*cmd, "--checkpoint-seconds", "0.5"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not (run / "resume.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.7)  # into a later write, maybe
        assert proc.poll() is None, "training ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / "resume.pt").is_file() and not (run / "ckpt.pt").exists()
    assert all(p.stat().st_size > 0 for p in run.iterdir() if not p.name.endswith(".part"))

    result = CliRunner().invoke(app, ["train", *args, "--resume"])
    assert result.exit_code == 0, result.output
    assert '"finished": true' in result.output and '"iterations": 120' in result.output
    _assert_whole(run)
    assert not (run / "resume.pt").exists()
    # Finished: nothing left to resume, said in one line.
    again = CliRunner().invoke(app, ["train", *args, "--resume"])
    assert again.exit_code == 2 and "the run finished" in again.output
    assert len([line for line in again.output.splitlines() if line.strip()]) == 1


def test_fresh_run_notes_an_old_resume_state(tiny_dataset, killed_run, tmp_path):
    # Without --resume a run starts over (and says so), replacing the old state as it goes.
    run = tmp_path / "run"
    shutil.copytree(killed_run, run)
    logs: list[str] = []
    cfg = TrainConfig(**{**CFG.__dict__, "iterations": 10, "val_every": 0, "densify": None})
    Trainer(tiny_dataset, cfg, log=logs.append).run(run)
    assert any("replaced by this one (--resume continues it)" in line for line in logs)
    assert not (run / "resume.pt").exists() and os.path.getsize(run / "train_metrics.json") > 0
