"""The CUDA kernels, executed on the CPU: the unchanged launch path (loader -> NVRTC ->
cuda-python -> kernels) in a subprocess whose libcuda.so.1 is the emulation of
tests/cuda_emulation (plugins/cuda/design.md, "Running the kernels on the CPU").

    python -m pytest -m cuda_emulated        # these only; they also run in the default `pytest -q`

One subprocess draws every scene, plays two bundles with the `cuda` backend (deform kernel +
rasteriser) and onnxruntime, and runs the emulator's self-test kernels, while this process
computes the float64 torch references; the tests then compare. The sanitizer variant
(AddressSanitizer + UBSan) draws one scene in a second subprocess and must stay silent, then
writes out of bounds on purpose and must be caught.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cuda_emulation import emulator  # noqa: E402
from cuda_emulation.fixtures import cuda_emulator  # noqa: E402,F401 - the session fixture
from cuda_emulation.gen_kernel_set import parse_kernels  # noqa: E402
from cuda_emulation.scenes import make_scene, reference, to_u8  # noqa: E402

pytestmark = pytest.mark.cuda_emulated

CHILD = emulator.HERE / "child.py"
TOL = 1e-4  # max abs vs the float64 reference (measured: ~5e-7)

SCENES = {
    "3k-72x96": {"seed": 0, "n": 3000, "H": 72, "W": 96,
                 "runs": [{"shuffle_seed": 1}, {"shuffle_seed": 2, "poison_byte": 0}]},
    "3k-72x100-partial-tiles": {"seed": 1, "n": 3000, "H": 72, "W": 100},
    "10k-96x128": {"seed": 2, "n": 10_000, "H": 96, "W": 128},
    "2k-272x280-6-pass-sort": {"seed": 3, "n": 2000, "H": 280, "W": 272},
    "u8-3k-64x80": {"seed": 4, "n": 3000, "H": 64, "W": 80, "u8": True},
    "retry-3k-64x64": {"seed": 5, "n": 3000, "H": 64, "W": 64, "capacity": 1000},
    "culled-2k-48x64": {"seed": 6, "n": 2000, "H": 48, "W": 64, "kind": "culled"},
    "empty-48x64": {"seed": 7, "n": 0, "H": 48, "W": 64, "kind": "empty"},
}  # fmt: skip
NEEDS_REFERENCE = ("3k-72x96", "3k-72x100-partial-tiles", "10k-96x128", "2k-272x280-6-pass-sort", "u8-3k-64x80",
                   "retry-3k-64x64")  # fmt: skip


class Results:
    def __init__(self, npz: Path, proc_out: str, seconds: float) -> None:
        data = np.load(npz)
        self.arrays = {k: data[k] for k in data.files if k != "records"}
        self.records = json.loads(bytes(data["records"]).decode())
        self.log, self.seconds = proc_out, seconds

    def scene(self, sid: str) -> dict:
        rec = self.records[sid]
        assert "error" not in rec, f"{sid} failed in the emulated process:\n{rec['error']}\n{self.log[-3000:]}"
        return rec

    def frame(self, sid: str, run: int = 0, what: str = "image") -> np.ndarray:
        return self.arrays[f"{sid}/{run}/{what}"]


def _run_child(emu, tmp: Path, job: dict, variant: str = "default", timeout: float = 600):
    (tmp / "job.json").write_text(json.dumps(job))
    t = time.perf_counter()
    proc = emu.popen(CHILD, [tmp / "job.json", tmp / "out.npz"], variant=variant)
    return proc, t


BACKEND_HIDDEN = {"cuda-backend-h64": 64, "cuda-backend-h48": 48}  # the specialised kernel and the generic one


@pytest.fixture(scope="session")
def backend_bundles(tmp_path_factory) -> dict[str, Path]:
    """Bundles with the exporter's deform graph (random weights), which the `cuda` backend runs."""
    from test_cuda_backend import exported_graph_bundle

    tmp = tmp_path_factory.mktemp("emulated-bundles")
    return {bid: exported_graph_bundle(tmp / f"{bid}.etk", hidden=h) for bid, h in BACKEND_HIDDEN.items()}


@pytest.fixture(scope="session")
def emulated(cuda_emulator, backend_bundles, tmp_path_factory):
    """(Results of the default-variant subprocess, {scene id: torch reference (image, alpha)})."""
    tmp = tmp_path_factory.mktemp("emulated")
    job = {"scenes": [{"id": sid, **spec} for sid, spec in SCENES.items()], "selftest": True,
           "backends": [{"id": bid, "bundle": str(b), "onnxruntime": True} for bid, b in backend_bundles.items()]}
    proc, t = _run_child(cuda_emulator, tmp, job)
    try:
        refs = {sid: reference(make_scene(SCENES[sid])) for sid in NEEDS_REFERENCE}  # meanwhile, here
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"emulated process exit {proc.returncode}\n{out[-3000:]}\n{err[-6000:]}"
    return Results(tmp / "out.npz", out + err, time.perf_counter() - t), refs


def _compare(image, alpha, ref) -> tuple[float, float]:
    ref_img, ref_alpha = ref
    assert image.shape == ref_img.shape and alpha.shape == ref_alpha.shape
    return float(np.abs(image - ref_img).max()), float(np.abs(alpha - ref_alpha).max())


# ---------------------------------------------------------------- the rasteriser's kernels


@pytest.mark.parametrize("sid", ["3k-72x96", "3k-72x100-partial-tiles", "10k-96x128", "2k-272x280-6-pass-sort"])
def test_emulated_kernels_match_the_torch_reference(emulated, sid):
    res, refs = emulated
    rec = res.scene(sid)
    assert rec["origin"].startswith("nvrtc:sm_86:cubin"), rec["origin"]  # the NVRTC image, not a stand-in
    ref_img, ref_alpha = refs[sid]
    assert ref_alpha.max() > 0.5 and (ref_alpha > 0.01).mean() > 0.2  # not an empty picture
    err_img, err_alpha = _compare(res.frame(sid), res.frame(sid, what="alpha"), refs[sid])
    assert err_img <= TOL and err_alpha <= TOL, (err_img, err_alpha)
    s = rec["runs"][0]["stats"]
    scene = SCENES[sid]
    tiles = -(-scene["W"] // 16) * -(-scene["H"] // 16)
    frames = s["etk_blend"]["launches"]  # 2 where the first pair capacity was too small
    assert s["etk_blend"]["blocks"] == tiles * frames and s["etk_blend"]["threads"] == 256 * tiles * frames
    passes = len(range(0, 32 + (tiles - 1).bit_length(), 8))
    assert s["etk_radix_scatter"]["launches"] == s["etk_radix_histogram"]["launches"] == passes * frames
    if sid.startswith("2k-272x280"):
        assert tiles > 256 and passes == 6


def test_emulated_pair_capacity_retry(emulated):
    """A first capacity of 1000 pairs is too small: pair_count says so, the frame is redrawn."""
    res, refs = emulated
    rec = res.scene("retry-3k-64x64")
    s = rec["runs"][0]["stats"]
    assert s["etk_project"]["launches"] == 2 and s["etk_blend"]["launches"] == 2  # drawn twice
    err_img, err_alpha = _compare(res.frame("retry-3k-64x64"), res.frame("retry-3k-64x64", what="alpha"),
                                  refs["retry-3k-64x64"])  # fmt: skip
    assert err_img <= TOL and err_alpha <= TOL


def test_emulated_all_culled_is_the_background(emulated):
    res, _ = emulated
    res.scene("culled-2k-48x64")
    scene = make_scene(SCENES["culled-2k-48x64"])
    assert np.array_equal(res.frame("culled-2k-48x64"), scene["background"].astype(np.float32))
    assert not res.frame("culled-2k-48x64", what="alpha").any()
    s = res.records["culled-2k-48x64"]["runs"][0]["stats"]
    assert "etk_blend" in s and s["etk_emit_pairs"]["launches"] == 1


def test_emulated_no_gaussians_is_the_background(emulated):
    res, _ = emulated
    res.scene("empty-48x64")
    scene = make_scene(SCENES["empty-48x64"])
    assert np.array_equal(res.frame("empty-48x64"), scene["background"].astype(np.float32))
    assert not res.frame("empty-48x64", what="alpha").any()
    s = res.records["empty-48x64"]["runs"][0]["stats"]
    assert set(s) == {"etk_blend"}  # N = 0: nothing but the blend over an empty tile list


def test_emulated_uint8_background_in_and_frame_out(emulated):
    res, refs = emulated
    sid = "u8-3k-64x80"
    res.scene(sid)
    image, frame = res.frame(sid), res.frame(sid, what="frame")
    err_img, err_alpha = _compare(image, res.frame(sid, what="alpha"), refs[sid])
    assert err_img <= TOL and err_alpha <= TOL
    assert frame.dtype == np.uint8 and np.array_equal(frame, to_u8(image))  # the kernel's own rounding of its float
    ref_frame = to_u8(refs[sid][0])
    diff = np.abs(frame.astype(int) - ref_frame)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # off by one only where the reference sits on a .5


def test_emulated_shuffled_fibers_and_shared_poison_change_nothing(emulated):
    """The same frame with the threads of every block (and the blocks) run in two seeded random
    orders, and with shared / new device memory poisoned with 0x00 instead of 0xFF: bit for bit
    the in-order frame. An intra-warp or intra-block race, or a read of shared memory nobody
    wrote, would change it (test_emulator_shuffle_exposes_an_intra_warp_race shows one does)."""
    res, _ = emulated
    sid = "3k-72x96"
    rec = res.scene(sid)
    assert len(rec["runs"]) == 3
    for run in (1, 2):
        assert np.array_equal(res.frame(sid, run), res.frame(sid, 0)), rec["runs"][run]["settings"]
        assert np.array_equal(res.frame(sid, run, "alpha"), res.frame(sid, 0, "alpha"))


@pytest.mark.parametrize("bid", list(BACKEND_HIDDEN))
def test_emulated_cuda_backend_frames_equal_onnxruntime_frames(emulated, bid):
    """The `cuda` backend (runtime/backends/cuda.py): the deform kernel of deform_kernels.cuh
    feeding the rasteriser on one stream, against onnxruntime's frames: mean abs <= 1/255."""
    res, _ = emulated
    rec = res.records[bid]
    assert "error" not in rec, rec["error"]
    assert rec["backend"] == "cuda"
    kernel = "etk_deform_h64" if BACKEND_HIDDEN[bid] == 64 else "etk_deform_any"
    assert rec["stats"][kernel]["launches"] >= 1 and rec["stats"]["etk_blend"]["launches"] >= 1
    cuda, cpu = res.arrays[f"{bid}/cuda"], res.arrays[f"{bid}/onnxruntime"]
    assert cuda.shape == cpu.shape and cuda.dtype == np.uint8
    assert np.abs(cuda.astype(np.float32) - cpu).mean() <= 1.0, "mean abs above 1/255"


def test_emulated_under_address_and_undefined_behaviour_sanitizers(emulated, cuda_emulator, backend_bundles, tmp_path):
    """The kernels and the fake driver built with -fsanitize=address,undefined,float-cast-overflow:
    five scenes (random, uint8, capacity retry, culled, empty), the `cuda` backend's deform kernel
    and the self-test kernels run clean (and equal the default build's frames bit for bit), then a deliberate one-past-the-end write is reported by ASan (so "clean" means something)."""
    res, _ = emulated
    sids = ("3k-72x96", "u8-3k-64x80", "retry-3k-64x64", "culled-2k-48x64", "empty-48x64")
    scenes = [{"id": sid, **{k: v for k, v in SCENES[sid].items() if k != "runs"}} for sid in sids]
    bid = "cuda-backend-h48"  # the generic deform kernel (the specialised ones share its code)
    job = {"scenes": scenes, "selftest": True, "out_of_bounds": True,
           "backends": [{"id": bid, "bundle": str(backend_bundles[bid])}]}
    proc, _ = _run_child(cuda_emulator, tmp_path, job, variant="asan")
    out, err = proc.communicate(timeout=600)
    report = err[: err.find("ERROR: AddressSanitizer")] if "ERROR: AddressSanitizer" in err else err
    assert (tmp_path / "out.npz").is_file(), f"exit {proc.returncode} before the results were written:\n{err[-6000:]}"
    for marker in ("runtime error:", "ERROR: AddressSanitizer", "UndefinedBehaviorSanitizer"):
        assert marker not in report, f"sanitizer report before the deliberate fault:\n{report[-6000:]}"
    asan = Results(tmp_path / "out.npz", out + err, 0.0)
    assert "error" not in asan.records["selftest"], asan.records["selftest"]["error"]
    for sid in sids:
        asan.scene(sid)
        for what in ("image", "alpha") + (("frame",) if SCENES[sid].get("u8") else ()):
            assert np.array_equal(asan.frame(sid, what=what), res.frame(sid, what=what)), (sid, what)
    assert "error" not in asan.records[bid], asan.records[bid]["error"]
    assert np.array_equal(asan.arrays[f"{bid}/cuda"], res.arrays[f"{bid}/cuda"])
    # the deliberate fault: caught, named, in the kernel
    assert proc.returncode == 86, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert "heap-buffer-overflow" in err and "emu_out_of_bounds" in err, err[-4000:]


# ---------------------------------------------------------------- the emulator itself


def _selftest(emulated) -> tuple[dict, dict]:
    res, _ = emulated
    rec = res.records["selftest"]
    assert "error" not in rec, rec["error"]
    return res.arrays, rec


def test_emulator_warp_collectives_and_barriers(emulated):
    arrays, _ = _selftest(emulated)
    p = arrays["probe"].astype(np.int64)
    t = np.arange(64)
    lane, warp0 = t % 32, t - t % 32
    assert (p[:, 0] == (warp0 + 5) * 10).all()                                   # __shfl_sync
    assert (p[:, 1] == np.where(lane >= 3, t - 3, t)).all()                      # __shfl_up_sync
    assert (p[:, 2] == np.where(lane + 3 < 32, t + 3, t)).all()                  # __shfl_down_sync
    assert (p[:, 3] == t ^ 1).all()                                              # __shfl_xor_sync
    assert (p[:, 4] == warp0 + (lane & ~7) + ((lane + 1) & 7)).all()             # width 8
    ballot = [sum(1 << l for l in range(32) if (w * 32 + l) % 3 == 0) for w in (0, 1)]
    assert (p[:, 5] == np.array(ballot)[t // 32]).all()                          # __ballot_sync
    match = [sum(1 << l for l in range(32) if l % 4 == k) for k in range(4)]
    assert (p[:, 6] == np.array(match)[t % 4]).all()                             # __match_any_sync
    assert (p[:, 7] == 32).all() and (p[:, 8] == 1).all() and (p[:, 9] == 1).all()  # __syncthreads_count/and/or
    assert (p[:, 10] == (t >= 32)).all() and (p[:, 11] == 1).all()               # __any_sync / __all_sync
    assert (p[:, 12] == np.array([sum(range(0, 32)), sum(range(32, 64))])[t // 32]).all()  # __reduce_add_sync
    assert (p[:, 13] == np.where(lane < 8, 0b10101010, 0)).all()                 # masked __ballot_sync
    m14 = np.where(lane < 16, 0xF << (4 * (lane // 4)), 0)
    assert (p[:, 14] == m14).all()                                               # masked __match_any_sync


def test_emulator_poisons_shared_memory_before_every_block(emulated):
    arrays, _ = _selftest(emulated)
    for seed in (0, 7):
        assert (arrays[f"shared_poison/{seed}"] == 0xFFFFFFFF).all(), arrays[f"shared_poison/{seed}"]


def test_emulator_dynamic_shared_memory_and_module_globals(emulated):
    arrays, rec = _selftest(emulated)
    x = np.arange(128, dtype=np.float32)
    assert np.array_equal(arrays["dynamic"], np.concatenate([x[:64][::-1], x[64:][::-1]]))
    assert np.array_equal(arrays["globals"], np.array([2, 4, 6, 8] * 2, np.float32))
    assert arrays["counter"][0] == 8 and rec["coeff_size"] == 16


def test_emulator_reports_deadlock_divergence_trap_and_host_pointers(emulated):
    _, rec = _selftest(emulated)
    e = rec["errors"]
    assert "CUDA_ERROR_LAUNCH_FAILED" in e["0"] and "divergent barrier" in e["0"] and "selftest_kernels.cuh:" in e["0"]
    assert "divergent warp collective" in e["1"] and "__shfl_sync" in e["1"] and "__syncthreads" in e["1"]
    assert "deadlock" in e["2"] and "__ballot_sync(mask 0x00000003)" in e["2"] and "__shfl_sync(mask 0x00000003)" in e["2"]
    assert "__trap()" in e["3"] and "thread (3,0,0)" in e["3"]
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in e["host_pointer"] and "not memory of this driver" in e["host_pointer"]


def test_emulator_shuffle_exposes_an_intra_warp_race(emulated):
    """emu_race reads a neighbour's shared slot without __syncwarp: in order, lane i runs before
    lane i+1 writes (it reads the poison); shuffled, some lanes see the value. The shuffle is
    what makes such a race visible, and the rasteriser's frames do not move under it."""
    arrays, _ = _selftest(emulated)
    in_order = arrays["race/0"]
    assert (in_order[:31] == 0xFFFFFFFF).all() and in_order[31] == 0  # lane 31 reads lane 0's write
    assert any(not np.array_equal(arrays[f"race/{s}"], in_order) for s in (1, 2, 3))


def test_kernel_signatures_are_parsed_from_the_sources():
    """gen_kernel_set.py finds every kernel the loader asks for, with the compiler-checked
    parameter counts (a static_assert in the generated file repeats this at build time)."""
    from embedtalk_sdk.plugins.cuda.build import kernel_source
    from embedtalk_sdk.plugins.cuda import loader

    kernels = {k.name: k for k in parse_kernels(kernel_source())}
    assert set(getattr(loader, "RASTER_KERNELS", None) or loader.KERNEL_NAMES) <= set(kernels)
    assert len(kernels["etk_project"].params) == 14 and kernels["etk_project"].params[8] == "EtkCamera cam"
    assert len(kernels["etk_blend"].params) == 11
    text = 'extern "C" __global__ __launch_bounds__(128, 2) void k1(int a, /* b */ float* __restrict__ b)\n{}\n' \
           '// extern "C" __global__ void commented(int);\nextern "C" __global__ void k2(void) {}\n'
    assert [(k.name, k.params) for k in parse_kernels(text)] == [("k1", ("int a", "float* __restrict__ b")), ("k2", ())]
