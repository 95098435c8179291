"""One rule for bad input on every path, files that keep the umask, nothing left behind, one clip at a time."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from embedtalk_sdk.runtime.audio.io import AudioError
from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.fileio import atomic_write, remove_stale_temporaries

from test_runtime import make_test_bundle, speech


@pytest.fixture(scope="module")
def avatar(tmp_path_factory) -> Avatar:
    return Avatar.load(make_test_bundle(tmp_path_factory.mktemp("inputs") / "a.etk"), backend="onnxruntime")


def chunks_of(x: np.ndarray, size: int = 700) -> list[np.ndarray]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def test_stream_refuses_nan_as_speak_does(avatar: Avatar) -> None:
    # Before: 100 NaN samples went into the mel features and corrupted frames 28-35 silently.
    audio = speech(2.0)
    audio[18000:18100] = np.nan
    with pytest.raises(AudioError, match="100 samples are NaN or Inf"):
        avatar.speak(audio, sample_rate=16000)
    with pytest.raises(AudioError, match=r"stream chunk 25: 100 samples are NaN or Inf"):
        list(avatar.stream(chunks_of(audio)))


def test_stream_and_speak_treat_loud_floats_alike(avatar: Avatar) -> None:
    # Before: speak scaled a float clip peaking above 1, stream passed it on: different frames.
    audio = (speech(1.6) * 2.5).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spoken = avatar.speak(audio, sample_rate=16000)
        streamed = np.stack(list(avatar.stream(chunks_of(audio))))
    assert np.array_equal(spoken, streamed)
    with pytest.warns(UserWarning, match="beyond full scale"):
        list(avatar.stream(chunks_of(audio)))


def test_too_short_audio_is_refused_by_every_form(avatar: Avatar, tmp_path: Path) -> None:
    # Before: speak() to an array returned 0 frames for 10 ms while speak(out=mp4) refused it.
    short = speech(0.01)
    for call in (lambda: avatar.speak(short, sample_rate=16000), lambda: avatar.frames(short, sample_rate=16000),
                 lambda: avatar.speak(short, sample_rate=16000, out=tmp_path / "x.mp4")):
        with pytest.raises(AudioError, match="too short for one video frame"):
            call()
    assert not (tmp_path / "x.mp4").exists()


def test_a_second_clip_while_one_renders_is_refused(avatar: Avatar) -> None:
    # Before: two threads (or two unfinished iterators) shared the backend's buffers: wrong frames, no error.
    audio = speech(1.0)
    expected = avatar.speak(audio, sample_rate=16000)
    first = avatar.frames(audio, sample_rate=16000)
    got = [next(first)]
    with pytest.raises(RuntimeError, match="already rendering a clip"):
        avatar.speak(audio, sample_rate=16000)
    got += list(first)
    assert np.array_equal(np.stack(got), expected)  # the first clip was not disturbed
    errors: list[BaseException] = []
    gate = threading.Event()

    def other() -> None:
        gate.wait()
        try:
            avatar.speak(audio, sample_rate=16000)
        except RuntimeError as e:
            errors.append(e)

    thread = threading.Thread(target=other)
    thread.start()
    frames = avatar.frames(audio, sample_rate=16000)
    next(frames)
    gate.set()
    thread.join()
    frames.close()
    assert len(errors) == 1 and "already rendering" in str(errors[0])
    assert np.array_equal(avatar.speak(audio, sample_rate=16000), expected)  # free again after close()


def test_written_files_and_bundles_follow_the_umask(tmp_path: Path) -> None:
    # Before: mkstemp/mkdtemp's private 0600 / 0700 whatever the umask.
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", b"{}")
        bundle = make_test_bundle(tmp_path / "b.etk")
        zipped = make_test_bundle(tmp_path / "c.zip")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert bundle.stat().st_mode & 0o777 == 0o755
    assert (bundle / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert zipped.stat().st_mode & 0o777 == 0o644


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    # A writer SIGKILLed mid-write leaves its hidden temporary; the next write of that name removes it.
    code = ("import os, signal, sys\n"
            "from embedtalk_sdk.runtime.fileio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.json")], check=False)
    left = list(tmp_path.glob(".out.json.*"))
    assert len(left) == 1 and not (tmp_path / "out.json").exists()
    atomic_write(tmp_path / "out.json", b"whole")
    assert list(tmp_path.glob(".out.json.*")) == [] and (tmp_path / "out.json").read_bytes() == b"whole"
    live = tmp_path / f".out.json.{os.getpid()}.x.part"  # this process's own are never touched
    live.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path / "out.json") == [] and live.exists()


def _cli(*args: str):
    from typer.testing import CliRunner

    from embedtalk_sdk.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_failures_end_in_one_line_naming_the_problem(tmp_path: Path) -> None:
    # Before: `speak -o /nonexistent/dir/x.mp4` ended in a FileNotFoundError traceback.
    bundle = make_test_bundle(tmp_path / "a.etk")
    wav = tmp_path / "hello.wav"
    import soundfile as sf

    sf.write(wav, speech(0.5), 16000)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\0" * 100)
    cases = [
        (("speak", str(bundle), str(wav), "-o", str(tmp_path / "no" / "dir" / "x.mp4")), "does not exist"),
        (("speak", str(bundle), str(wav), "-o", str(tmp_path)), "is a folder"),
        (("speak", str(tmp_path / "none.etk"), str(wav)), "no such bundle"),
        (("speak", str(bundle), str(tmp_path / "none.wav")), "audio file not found"),
        (("export", str(junk), "-o", str(tmp_path / "x.etk")), "not a readable checkpoint"),
        (("bench", str(tmp_path / "none.etk")), "no such bundle"),
    ]
    for args, message in cases:
        result = _cli(*args)
        last = result.output.strip().splitlines()[-1]
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        assert last.startswith("error:") and message in result.output, (args, result.output)
