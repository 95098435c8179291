"""Build the CPU emulation of the CUDA driver and run Python against it (plugins/cuda/design.md,
"Running the kernels on the CPU").

    libdir = build(out_root)                         # fake libcuda.so.1 + one kernel set per source
    proc = run_python(libdir, "child.py", [...])     # a subprocess whose cuda-python talks to it

Kernel sets: every `plugins/cuda/*_kernels.cuh` (today `rasterize_kernels.cuh`; the `cuda`
backend's `deform_kernels.cuh` joins by being there), plus any `extra_sources`. Each is turned
into a host translation unit by gen_kernel_set.py and compiled into
`libetk_emu_kernels_<stem>.so` next to the fake `libcuda.so.1`, which loads them all and maps a
module image to kernels by the names the image contains. Builds are cached by a hash of the
compiler, the flags and every source, under `out_root/<variant>-<hash>/`.

Variants: "default" (-O2) and "asan" (-O1, AddressSanitizer + UndefinedBehaviorSanitizer; the
subprocess gets libasan preloaded, since the Python interpreter itself is not instrumented).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KERNELS_DIR = REPO / "plugins" / "cuda"
SHIM_SOURCES = ("etk_emu_abi.h", "etk_emu_device.h", "fake_libcuda.cpp", "gen_kernel_set.py", "emulator.py")

COMMON = ("-std=c++17", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-U_FORTIFY_SOURCE", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas")
VARIANTS = {
    "default": ("-O2",),
    "asan": ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined,float-cast-overflow",
             "-fno-sanitize-recover=all"),
}  # fmt: skip


class EmulatorBuildError(RuntimeError):
    """The host compiler is missing or rejected a source; the message carries its log."""


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or (shutil.which("/usr/bin/g++"))


def default_kernel_sources() -> list[Path]:
    """Every kernels source of the CUDA plugin: plugins/cuda/*_kernels.cuh."""
    return sorted(KERNELS_DIR.glob("*_kernels.cuh"))


def _build_key(cxx: str, variant: str, sources: Sequence[Path]) -> str:
    h = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h.update(version.encode() + b"\0" + variant.encode() + b"\0" + " ".join(COMMON + VARIANTS[variant]).encode())
    for name in SHIM_SOURCES:
        h.update(b"\0" + name.encode() + b"\0" + (HERE / name).read_bytes())
    for src in sources:
        h.update(b"\0" + str(src).encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:16]


def _run_all(cmds: dict[str, list[str]], jobs: int) -> None:
    """Run compiler commands, `jobs` at a time; raise EmulatorBuildError with the first failure's log."""
    pending, running, failures = list(cmds.items()), {}, []
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd = pending.pop(0)
            running[name] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        name = next(iter(running))
        cmd, proc = running.pop(name)
        out = proc.communicate()[0]
        if proc.returncode != 0:
            failures.append(f"{name}: {' '.join(cmd)}\nexit {proc.returncode}\n{out}")
    if failures:
        raise EmulatorBuildError("\n\n".join(failures))


def build(out_root: Path, extra_sources: Iterable[Path] = (), variant: str = "default",
          kernel_sources: Sequence[Path] | None = None, jobs: int | None = None) -> Path:
    """Build (or find cached) the fake libcuda.so.1 and its kernel sets; returns their folder."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorBuildError("no C++ compiler (g++) found: the CUDA emulation needs one")
    sources = [Path(s).resolve() for s in (default_kernel_sources() if kernel_sources is None else kernel_sources)]
    sources += [Path(s).resolve() for s in extra_sources]
    stems = [s.stem for s in sources]
    if len(set(stems)) != len(stems):
        raise EmulatorBuildError(f"two kernel sources with the same name: {stems}")
    out_root = Path(out_root)
    out = out_root / f"{variant}-{_build_key(cxx, variant, sources)}"
    if (out / "libcuda.so.1").is_file() and (out / "BUILT").is_file():
        return out
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out_root))
    sys.path.insert(0, str(HERE))
    try:
        import gen_kernel_set
    finally:
        sys.path.remove(str(HERE))
    flags = [*COMMON, *VARIANTS[variant], f"-I{HERE}"]
    lib = tmp / "libcuda.so.1"
    cmds = {"libcuda.so.1": [cxx, *flags, "-shared", "-Wno-attribute-alias", "-Wl,-soname,libcuda.so.1",
                             str(HERE / "fake_libcuda.cpp"), "-o", str(lib), "-ldl"]}  # fmt: skip
    for src in sources:
        cpp = tmp / f"etk_emu_kernels_{src.stem}.cpp"
        gen_kernel_set.generate(src, cpp)
        cmds[src.name] = [cxx, *flags, f"-I{src.parent}", "-c", str(cpp), "-o", str(cpp.with_suffix(".o"))]
    _run_all(cmds, jobs or max(1, min(len(cmds), os.cpu_count() or 1)))
    links = {
        src.name: [cxx, *VARIANTS[variant], "-shared", str(tmp / f"etk_emu_kernels_{src.stem}.o"),
                   "-o", str(tmp / f"libetk_emu_kernels_{src.stem}.so"), f"-L{tmp}", "-l:libcuda.so.1",
                   "-Wl,-rpath,$ORIGIN", "-Wl,-Bsymbolic", "-ldl"]
        for src in sources
    }  # fmt: skip
    _run_all(links, jobs or os.cpu_count() or 1)
    (tmp / "BUILT").write_text("\n".join(str(s) for s in sources) + "\n")
    try:
        tmp.rename(out)
    except OSError:  # built concurrently by another session: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def sanitizer_runtime() -> str | None:
    """The compiler's libasan.so, which must be preloaded into an uninstrumented Python."""
    cxx = compiler()
    if cxx is None:
        return None
    path = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if path and Path(path).is_file() else None


def nvidia_library_dirs() -> list[Path]:
    """Folders of NVIDIA's pip wheels holding libnvrtc-builtins (site-packages/nvidia/*/lib)."""
    found = []
    for entry in sys.path:
        for lib in sorted(Path(entry).glob("nvidia/*/lib/libnvrtc-builtins.so*")) if entry else ():
            if lib.parent not in found:
                found.append(lib.parent)
    return found


def environment(libdir: Path, variant: str = "default", cache: Path | None = None, **options: object) -> dict[str, str]:
    """The environment of a process that should see the emulated GPU: LD_LIBRARY_PATH first, an
    NVRTC cache of its own (EMBEDTALK_CACHE), ETK_EMU_<OPTION> for each option."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(libdir) + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    if cache is not None:
        env["EMBEDTALK_CACHE"] = str(cache)
    env.pop("EMBEDTALK_CUDA_FATBIN", None)  # NVRTC's image, not a stray fatbin
    for key, value in options.items():
        env[f"ETK_EMU_{key.upper()}"] = str(value)
    if variant == "asan":
        runtime = sanitizer_runtime()
        if runtime is None:
            raise EmulatorBuildError("libasan.so not found for the sanitizer variant")
        env["LD_PRELOAD"] = runtime
        # ASan's dlopen interceptor hides the caller's RUNPATH: NVRTC then cannot find its
        # builtins library beside itself, so put NVIDIA's wheel library folders on the path.
        extra = [str(d) for d in nvidia_library_dirs()]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([env["LD_LIBRARY_PATH"], *extra])
        env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1"
        env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=87"
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def run_python(libdir: Path, script: Path | str, args: Sequence[str] = (), variant: str = "default",
               cache: Path | None = None, timeout: float = 600, **options: object) -> subprocess.CompletedProcess:
    """Run `python script args...` against the emulated GPU; returns the completed process
    (stdout and stderr captured as text)."""
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env=environment(libdir, variant, cache, **options), cwd=str(REPO),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """python tests/cuda_emulation/emulator.py [--asan] [OUT_ROOT]: build, print the folder (for
    `LD_LIBRARY_PATH=<it> python ...` by hand)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    variant = "asan" if "--asan" in argv else "default"
    argv = [a for a in argv if a != "--asan"]
    root = Path(argv[0]) if argv else Path(tempfile.gettempdir()) / "etk-cuda-emulation"
    print(build(root, variant=variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
