"""What every GPU backend does first: read the bundle's deform I/O, open the CUDA device, import
its TensorRT flavour if it uses one; a missing GPU, driver or library is a `BackendError` naming
the backend, so `auto` moves on. Never imports torch; cuda-python is imported only when called.
"""
from __future__ import annotations

from typing import Any, Callable

from embedtalk_sdk.runtime.backends.base import BackendError, DeformIO, deform_io
from embedtalk_sdk.runtime.bundle import Bundle


def open_gpu(backend: str, bundle: Bundle, device: int,
             library: Callable[[], Any] | None = None) -> tuple[DeformIO, Any, Any]:
    """(deform I/O, `plugins.cuda.driver.Device`, `library()` or None) for GPU backend `backend`.

    The device comes before the library: it is cheap, and no GPU is the usual failure."""
    from embedtalk_sdk.plugins.cuda.driver import CudaError, get_device
    from embedtalk_sdk.plugins.cuda.engines import EngineBuildError

    io = deform_io(bundle)
    try:
        gpu = get_device(device)
        lib = library() if library is not None else None
    except (EngineBuildError, CudaError) as e:
        raise BackendError(f"backend {backend}: {e}") from None
    return io, gpu, lib
