"""The emulated side of tests/test_cuda_emulated.py: run in a subprocess whose libcuda.so.1 is
the CPU emulation (emulator.environment), through the unchanged launch path
(loader -> NVRTC -> cuda-python -> kernels).

    python child.py JOB.json OUT.npz

JOB: {"scenes": [spec, ...], "backends": [{"id", "bundle", "onnxruntime": bool}, ...],
"selftest": bool, "out_of_bounds": bool}. A backend entry plays one second of speech on the
bundle with the `cuda` backend (its deform kernel + the rasteriser), and with onnxruntime if asked. Each scene spec (see
scenes.make_scene) may add "u8" (uint8 background and frame), "capacity" (a first pair
capacity, to force the retry), "runs": [{"shuffle_seed": s, "poison_byte": b}, ...] (the same
scene again under other emulator settings). OUT gets, per scene id, the frames and a JSON record
(time, kernel statistics, pair count, errors).
"""
from __future__ import annotations

import ctypes
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scenes import make_scene  # noqa: E402

EMU = ctypes.CDLL("libcuda.so.1")  # the one cuda-python loads (LD_LIBRARY_PATH): must be the emulator
EMU.etk_emu_is_emulator.restype = ctypes.c_int
EMU.etk_emu_stats_json.restype = ctypes.c_char_p
EMU.etk_emu_last_error.restype = ctypes.c_char_p
EMU.etk_emu_kernel_sets.restype = ctypes.c_char_p
EMU.etk_emu_configure.argtypes = [ctypes.c_char_p, ctypes.c_longlong]


def configure(**kv) -> None:
    for k, v in kv.items():
        assert EMU.etk_emu_configure(k.encode(), int(v)) == 0, k


def stats() -> dict:
    return json.loads(EMU.etk_emu_stats_json().decode())


def render_u8(scene: dict, rasterizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rasterize_cuda's steps with the uint8 background in and the uint8 frame (plus the float
    image and alpha) out: the path the GPU backends take."""
    from embedtalk_sdk.plugins.cuda import rasterizer as R
    from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, Stream, download, upload

    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    o = np.clip(np.asarray(scene["opacities"], np.float64), 1e-12, 1 - 1e-7)
    host = {
        "means": f32(scene["means"]), "quats": f32(scene["quats"]), "scales": f32(scene["scales"]),
        "opacity_logits": f32(np.log(o) - np.log1p(-o)), "colors": f32(scene["colors"]), "viewmat": f32(scene["viewmat"]),
        "background_u8": np.ascontiguousarray(np.round(scene["background"] * 255), dtype=np.uint8),
    }  # fmt: skip
    n = host["means"].shape[0]
    H, W = host["background_u8"].shape[:2]
    stream = Stream()
    bufs = {k: DeviceBuffer(v.nbytes) for k, v in host.items()}
    for k, v in host.items():
        upload(bufs[k].ptr, v, stream)
    image, alpha, frame = np.empty((H, W, 3), np.float32), np.empty((H, W), np.float32), np.empty((H, W, 3), np.uint8)
    d_image, d_alpha, d_frame, d_count = (DeviceBuffer(a.nbytes) for a in (image, alpha, frame, np.zeros(1, np.uint32)))
    max_pairs, count = R.estimate_pairs(n, W, H), np.zeros(1, np.uint32)
    while True:
        ws_bytes = rasterizer.workspace_size(n, W, H, max_pairs)
        ws = DeviceBuffer(ws_bytes)
        rasterizer.forward(stream, n=n, width=W, height=H, K=scene["K"], max_pairs=max_pairs, workspace=ws,
                           workspace_bytes=ws_bytes, pair_count=d_count, image_f32=d_image, alpha=d_alpha,
                           image_u8=d_frame, **bufs)  # fmt: skip
        stream.synchronize()
        download(count, d_count.ptr, stream)
        if int(count[0]) <= max_pairs:
            break
        max_pairs = int(count[0] * 1.25) + 1
    for a, d in ((image, d_image), (alpha, d_alpha), (frame, d_frame)):
        download(a, d.ptr, stream)
    stream.close()
    return image, alpha, frame


def run_scene(spec: dict, out: dict, record: dict) -> None:
    from embedtalk_sdk.plugins.cuda import rasterizer as R

    scene = make_scene(spec)
    rast = R.CudaRasterizer()
    record["origin"] = rast.origin
    record["kernel_sets"] = EMU.etk_emu_kernel_sets().decode()
    runs = [{}] + list(spec.get("runs", []))
    for i, settings in enumerate(runs):
        configure(shuffle_seed=settings.get("shuffle_seed", 0), poison_byte=settings.get("poison_byte", 0xFF))
        EMU.etk_emu_reset_stats()
        small = R.estimate_pairs
        if spec.get("capacity"):
            R.estimate_pairs = lambda n, w, h, c=int(spec["capacity"]): c
        t = time.perf_counter()
        try:
            if spec.get("u8"):
                image, alpha, frame = render_u8(scene, rast)
                out[f"{spec['id']}/{i}/frame"] = frame
            else:
                image, alpha = R.rasterize_cuda(**scene, rasterizer=rast)
        finally:
            R.estimate_pairs = small
        record.setdefault("runs", []).append({"settings": settings, "seconds": time.perf_counter() - t, "stats": stats()})
        out[f"{spec['id']}/{i}/image"] = image
        out[f"{spec['id']}/{i}/alpha"] = alpha


_MODULE = []


def selftest_module():
    """selftest_kernels.cuh through NVRTC (a cubin for the emulated GPU's arch), loaded."""
    if _MODULE:
        return _MODULE[0]
    from cuda.bindings import driver as drv

    from embedtalk_sdk.plugins.cuda import build
    from embedtalk_sdk.plugins.cuda.driver import check, get_device

    dev = get_device(0)
    nvrtc = build._nvrtc()
    src = (HERE / "selftest_kernels.cuh").read_bytes()
    err, prog = nvrtc.nvrtcCreateProgram(src, b"selftest_kernels.cu", 0, [], [])
    opts = [f"--gpu-architecture={dev.arch}".encode(), b"-std=c++17", b"-default-device"]
    (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = bytearray(size)
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert status == nvrtc.nvrtcResult.NVRTC_SUCCESS, bytes(log).decode()
    _, size = nvrtc.nvrtcGetCUBINSize(prog)
    cubin = bytearray(size)
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    nvrtc.nvrtcDestroyProgram(prog)
    _MODULE.append(check(drv.cuModuleLoadData(bytes(cubin))))
    return _MODULE[0]


def selftest(out: dict, record: dict) -> None:
    """The emulator's own checks, on selftest_kernels.cuh compiled by NVRTC like the rasteriser."""
    from cuda.bindings import driver as drv

    from embedtalk_sdk.plugins.cuda import build
    from embedtalk_sdk.plugins.cuda.driver import CudaError, DeviceBuffer, Kernel, Stream, check, download, get_device, ptr, upload

    module = selftest_module()
    k = lambda name: Kernel(module, name)  # noqa: E731
    s = Stream()
    u32 = ctypes.c_uint32

    buf = DeviceBuffer(64 * 16 * 4)
    k("emu_probe")((1, 1, 1), (64, 1, 1), s, ptr(buf))
    probe = np.empty(64 * 16, np.uint32)
    download(probe, buf.ptr, s)
    out["probe"] = probe.reshape(64, 16)

    for seed in (0, 7):  # in order, then shuffled: the poison must be back for every block
        configure(shuffle_seed=seed)
        pb = DeviceBuffer(5 * 2 * 4)
        k("emu_shared_poison")((5, 1, 1), (64, 1, 1), s, ptr(pb))
        seen = np.empty(10, np.uint32)
        download(seen, pb.ptr, s)
        out[f"shared_poison/{seed}"] = seen
    configure(shuffle_seed=0)

    x = np.arange(128, dtype=np.float32)
    din, dout = DeviceBuffer(x.nbytes), DeviceBuffer(x.nbytes)
    upload(din.ptr, x, s)
    k("emu_dynamic")((2, 1, 1), (64, 1, 1), s, ptr(din), ptr(dout), shared=64 * 4)
    y = np.empty_like(x)
    download(y, dout.ptr, s)
    out["dynamic"] = y

    coeff_ptr, coeff_size = check(drv.cuModuleGetGlobal(module, b"emu_coeff"))
    counter_ptr, _ = check(drv.cuModuleGetGlobal(module, b"emu_counter"))
    upload(int(coeff_ptr), np.array([1, 2, 3, 4], np.float32), s)
    upload(int(counter_ptr), np.zeros(1, np.uint32), s)
    g = DeviceBuffer(8 * 4)
    k("emu_globals")((1, 1, 1), (8, 1, 1), s, ptr(g))
    gv, cv = np.empty(8, np.float32), np.zeros(1, np.uint32)
    download(gv, g.ptr, s)
    download(cv, int(counter_ptr), s)
    out["globals"], out["counter"] = gv, cv
    record["coeff_size"] = int(coeff_size)

    for seed in (0, 1, 2, 3):
        configure(shuffle_seed=seed)
        r = DeviceBuffer(32 * 4)
        k("emu_race")((1, 1, 1), (32, 1, 1), s, ptr(r))
        rv = np.empty(32, np.uint32)
        download(rv, r.ptr, s)
        out[f"race/{seed}"] = rv
    configure(shuffle_seed=0)

    record["errors"] = {}
    bad = DeviceBuffer(64 * 4)
    for mode in range(4):
        try:
            k("emu_bad")((1, 1, 1), (64, 1, 1), s, ctypes.c_int32(mode), ptr(bad))
            record["errors"][str(mode)] = None
        except CudaError as e:
            record["errors"][str(mode)] = f"{e} | {EMU.etk_emu_last_error().decode()}"
        configure(clear_error=1)
    try:  # a host pointer handed to a kernel
        k("emu_probe")((1, 1, 1), (64, 1, 1), s, ctypes.c_uint64(probe.ctypes.data))
        record["errors"]["host_pointer"] = None
    except CudaError as e:
        record["errors"]["host_pointer"] = f"{e} | {EMU.etk_emu_last_error().decode()}"
    configure(clear_error=1)


def run_backend(spec: dict, out: dict, record: dict) -> None:
    from embedtalk_sdk.runtime.audio.speech import synthesize_speech
    from embedtalk_sdk.runtime.avatar import Avatar

    audio = synthesize_speech(1.0, seed=3).samples
    EMU.etk_emu_reset_stats()
    t = time.perf_counter()
    avatar = Avatar.load(spec["bundle"], backend="cuda")
    record["backend"] = avatar.backend_name
    out[f"{spec['id']}/cuda"] = avatar.speak(audio, sample_rate=16000)
    record["seconds"] = time.perf_counter() - t
    record["stats"] = stats()
    if spec.get("onnxruntime"):
        out[f"{spec['id']}/onnxruntime"] = Avatar.load(spec["bundle"], backend="onnxruntime").speak(audio, sample_rate=16000)


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text())
    assert EMU.etk_emu_is_emulator() == 1
    out, records = {}, {}
    for spec in job.get("scenes", []):
        records[spec["id"]] = rec = {}
        try:
            run_scene(spec, out, rec)
        except Exception:  # noqa: BLE001 - reported to the test
            rec["error"] = traceback.format_exc() + "\n" + EMU.etk_emu_last_error().decode()
            configure(clear_error=1)
    for spec in job.get("backends", []):
        records[spec["id"]] = rec = {}
        try:
            run_backend(spec, out, rec)
        except Exception:  # noqa: BLE001
            rec["error"] = traceback.format_exc() + "\n" + EMU.etk_emu_last_error().decode()
            configure(clear_error=1)
    if job.get("selftest"):
        records["selftest"] = rec = {}
        try:
            selftest(out, rec)
        except Exception:  # noqa: BLE001
            rec["error"] = traceback.format_exc()
    out["records"] = np.frombuffer(json.dumps(records).encode(), np.uint8)
    np.savez(sys.argv[2], **out)
    if job.get("out_of_bounds"):  # last: AddressSanitizer ends the process here
        from embedtalk_sdk.plugins.cuda.driver import DeviceBuffer, Kernel, Stream, ptr

        a = DeviceBuffer(16 * 4)
        Kernel(selftest_module(), "emu_out_of_bounds")((1, 1, 1), (32, 1, 1), Stream(), ptr(a), ctypes.c_int32(16))
        print("out-of-bounds write not detected", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
