"""The GPU runtime's host-side fixes, under the CPU emulation of CUDA (tests/cuda_emulation):
the TensorRT plugin's per-frame pair counts without a synchronisation, rendering from another
thread than the one that loaded the avatar, and `auto` on a GPU TensorRT-RTX does not support."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cuda_emulation.fixtures import cuda_emulator  # noqa: E402,F401 - the session fixture

pytestmark = pytest.mark.cuda_emulated


def run(emulation, tmp_path: Path, code: str, *args, **options) -> dict:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    proc = emulation.run_python(script, [str(a) for a in args], timeout=300, **options)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_emulated_plugin_checks_every_frames_pair_count_without_a_sync(cuda_emulator, tmp_path):
    # Before: one count for the whole batch (only the last frame was checked), read back with a
    # stream synchronisation inside enqueue.
    got = run(cuda_emulator, tmp_path, """
        import json
        import numpy as np
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, Stream, get_device, upload
        from embedtalk_sdk.plugins.cuda.trt_plugin import PairCountCheck

        get_device(0)
        stream = Stream()
        counts = DeviceBuffer(16)
        check = PairCountCheck(max_frames=4, max_pairs=1000)
        polls = [check.poll()]
        for batch in ([10, 99999, 5], [1001, 3, 2]):
            upload(counts.ptr, np.array(batch, np.uint32), stream)
            check.after_batch(stream, counts.ptr, len(batch))
            stream.synchronize()
            polls.append(check.poll())
        polls.append(check.poll())
        print(json.dumps({"polls": polls}))
    """)
    assert got["polls"] == [[], [[1, 99999]], [[0, 1001]], []]


def test_emulated_cuda_backend_renders_from_another_thread(cuda_emulator, tmp_path):
    """A context is current per thread: before, render/forward never made it current, so a frame
    drawn on a worker thread failed with CUDA_ERROR_INVALID_CONTEXT."""
    from test_cuda_backend import exported_graph_bundle

    bundle = exported_graph_bundle(tmp_path / "a.etk", n=400, hidden=32)
    got = run(cuda_emulator, tmp_path, """
        import json, sys, threading
        import numpy as np
        from embedtalk_sdk.runtime.avatar import Avatar
        from embedtalk_sdk.runtime.audio.speech import synthesize_speech

        avatar = Avatar.load(sys.argv[1], backend="cuda")
        audio = synthesize_speech(0.4, seed=1).samples
        here = avatar.speak(audio, sample_rate=16000)
        box = {}
        worker = threading.Thread(target=lambda: box.update(frames=avatar.speak(audio, sample_rate=16000)))
        worker.start(); worker.join()
        there = box["frames"]
        print(json.dumps({"backend": avatar.backend_name, "same": bool(np.array_equal(here, there)),
                          "frames": len(there), "std": float(there.std())}))
    """, bundle)
    assert got["backend"] == "cuda" and got["same"] and got["frames"] == 10 and got["std"] > 1


def test_emulated_auto_on_hopper_skips_tensorrt_rtx_and_takes_cuda(cuda_emulator, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    from test_cuda_backend import exported_graph_bundle

    bundle = exported_graph_bundle(tmp_path / "a.etk", n=300, hidden=32)
    got = run(cuda_emulator, tmp_path, """
        import json, logging, sys
        from embedtalk_sdk.runtime.avatar import Avatar

        records = []
        handler = logging.Handler()
        handler.emit = lambda r: records.append(r.getMessage())
        logging.getLogger("embedtalk_sdk.runtime").addHandler(handler)
        logging.getLogger("embedtalk_sdk.runtime").setLevel(logging.INFO)
        avatar = Avatar.load(sys.argv[1])
        print(json.dumps({"backend": avatar.backend_name, "log": records}))
    """, bundle, cc="9.0")
    assert got["backend"] == "cuda"
    why = [m for m in got["log"] if m.startswith("backend tensorrt-rtx unavailable")]
    assert why and "does not support" in why[0] and "sm90" in why[0], got["log"]
