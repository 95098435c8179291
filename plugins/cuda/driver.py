"""Thin helpers over the CUDA driver API (cuda-python's `cuda.bindings.driver`); no torch.

Everything the GPU runtime touches goes through here: the primary context, streams, device and
pinned host memory, device arrays that other libraries can take without a copy
(`__cuda_array_interface__`, DLPack), and kernel launches with a hand-built `void**` argument
array. cuda-python is imported on first use, so importing this module never needs a driver.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from embedtalk_sdk.runtime.errors import EmbedTalkError


class CudaError(EmbedTalkError, RuntimeError):
    """A CUDA driver call failed, or there is no usable CUDA driver / device."""


def driver_api():
    """cuda-python's driver module (`cuda.bindings.driver`), or CudaError saying how to install it."""
    try:
        from cuda.bindings import driver
    except ImportError as e:  # pragma: no cover - depends on the install
        raise CudaError("cuda-python is not installed: pip install 'embedtalk-sdk[gpu]'") from e
    return driver


def check(result: Any) -> Any:
    """Unpack a cuda-python result tuple (err, *values); raise CudaError on failure."""
    drv = driver_api()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS:
        _, name = drv.cuGetErrorName(err)
        raise CudaError(f"CUDA driver error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


# ---------------------------------------------------------------- device and context


@dataclass(frozen=True)
class Device:
    """A CUDA device with its primary context made current on this thread."""

    ordinal: int
    name: str
    major: int
    minor: int
    handle: Any
    context: Any

    @property
    def arch(self) -> str:
        """Compute capability as `sm_XY` (sm_89, sm_120)."""
        return f"sm_{self.major}{self.minor}"

    @property
    def compute_capability(self) -> str:
        """Compute capability as the engine entries spell it: `sm89`."""
        return f"sm{self.major}{self.minor}"

    def make_current(self) -> None:
        check(driver_api().cuCtxSetCurrent(self.context))


_DEVICES: dict[int, Device] = {}


def get_device(ordinal: int = 0) -> Device:
    """Initialise the driver, retain device `ordinal`'s primary context and make it current.

    Raises CudaError when there is no driver, no such device, or cuda-python is missing."""
    if ordinal in _DEVICES:
        dev = _DEVICES[ordinal]
        dev.make_current()
        return dev
    drv = driver_api()
    try:
        check(drv.cuInit(0))
    except CudaError:
        raise
    except Exception as e:  # no libcuda.so: cuda-python raises its own loader errors
        raise CudaError(f"no CUDA driver on this machine ({type(e).__name__}: {e})") from None
    count = check(drv.cuDeviceGetCount())
    if ordinal >= count:
        raise CudaError(f"CUDA device {ordinal} requested, {count} present")
    handle = check(drv.cuDeviceGet(ordinal))
    attr = drv.CUdevice_attribute
    major = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle))
    minor = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle))
    raw = check(drv.cuDeviceGetName(64, handle))
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    ctx = check(drv.cuDevicePrimaryCtxRetain(handle))
    check(drv.cuCtxSetCurrent(ctx))
    dev = Device(ordinal, name, int(major), int(minor), handle, ctx)
    _DEVICES[ordinal] = dev
    return dev


def cuda_device_count() -> int:
    """Number of CUDA devices; 0 when cuda-python, the driver or a GPU is missing (never raises)."""
    try:
        drv = driver_api()
        check(drv.cuInit(0))
        return int(check(drv.cuDeviceGetCount()))
    except Exception:  # noqa: BLE001 - any failure means: no usable GPU
        return 0


class Stream:
    """A non-blocking CUDA stream. `int(stream)` is the raw handle (for TensorRT, C ABIs)."""

    def __init__(self) -> None:
        drv = driver_api()
        self.handle = check(drv.cuStreamCreate(drv.CUstream_flags.CU_STREAM_NON_BLOCKING))

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(driver_api().cuStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle is not None:
            driver_api().cuStreamDestroy(self.handle)
            self.handle = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------- memory


class DeviceBuffer:
    """`nbytes` of device memory (cuMemAlloc); `int(buf)` / `buf.ptr` is the address."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(max(nbytes, 1))
        self._ptr = check(driver_api().cuMemAlloc(self.nbytes))
        self.ptr = int(self._ptr)

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        if self._ptr is not None:
            driver_api().cuMemFree(self._ptr)
            self._ptr, self.ptr = None, 0

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.free()
        except Exception:  # noqa: BLE001
            pass


class PinnedBuffer:
    """Page-locked host memory (cuMemHostAlloc) viewed as a numpy array: async copies need it."""

    def __init__(self, shape: Sequence[int], dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        nbytes = max(int(np.prod(self.shape)) * self.dtype.itemsize, 1)
        self.ptr = int(check(driver_api().cuMemHostAlloc(nbytes, 0)))
        self.nbytes = nbytes
        raw = (ctypes.c_byte * nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=np.uint8, count=nbytes)[: int(np.prod(self.shape)) * self.dtype.itemsize]
        self.array = self.array.view(self.dtype).reshape(self.shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            driver_api().cuMemFreeHost(self.ptr)
            self.ptr = 0

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.free()
        except Exception:  # noqa: BLE001
            pass


def upload(dst_ptr: int, host: np.ndarray, stream: Stream) -> None:
    """Copy a host array to device memory, ordered on `stream` (the stream the kernels that read
    it run on: a plain cuMemcpyHtoD runs on the legacy stream, which does not order against our
    non-blocking streams). From pageable memory the driver stages the bytes before returning, so
    `host` may be reused at once; from pinned memory the copy is truly async (keep it alive)."""
    host = np.ascontiguousarray(host)
    check(driver_api().cuMemcpyHtoDAsync(dst_ptr, host.ctypes.data, host.nbytes, stream.handle))


def download(host: np.ndarray, src_ptr: int, stream: Stream, wait: bool = True) -> None:
    """Copy device memory into a contiguous host array after the work queued on `stream`;
    `wait=False` leaves the copy in flight (pinned `host` only; synchronise before reading)."""
    if not host.flags.c_contiguous:
        raise ValueError("download needs a C-contiguous host array")
    check(driver_api().cuMemcpyDtoHAsync(host.ctypes.data, src_ptr, host.nbytes, stream.handle))
    if wait:
        stream.synchronize()


def memset_async(ptr: int, value: int, nbytes: int, stream: Stream) -> None:
    check(driver_api().cuMemsetD8Async(ptr, value, nbytes, stream.handle))


# ---------------------------------------------------------------- device arrays


class DeviceArray:
    """A typed view of device memory: shape, dtype, pointer; owns nothing (keeps `owner` alive).

    Exposes `__cuda_array_interface__` (CuPy, Numba, PyTorch's `torch.as_tensor(x, device="cuda")`)
    and `__dlpack__` (`torch.from_dlpack`, `cupy.from_dlpack`), both zero-copy. The data is
    ready once `stream` has reached it; the interface reports the stream so consumers can wait.
    """

    def __init__(self, ptr: int, shape: Sequence[int], dtype: Any, owner: Any = None, stream: Stream | None = None,
                 device_id: int = 0) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.owner, self.stream, self.device_id = owner, stream, device_id

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> "DeviceArray":
        """Row `index` of the leading axis (a view), as numpy's a[i]."""
        if not isinstance(index, (int, np.integer)):
            raise TypeError("DeviceArray supports integer indexing of the first axis only")
        n = self.shape[0]
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for axis 0 of size {n}")
        row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        return DeviceArray(self.ptr + i * row, self.shape[1:], self.dtype, self.owner, self.stream, self.device_id)

    def copy_to_host(self, out: np.ndarray | None = None) -> np.ndarray:
        """Synchronous copy to a new (or the given) host array, after the work on its stream."""
        out = np.empty(self.shape, self.dtype) if out is None else out
        if self.stream is not None:
            download(out, self.ptr, self.stream)
        else:  # memory no stream writes: nothing to order against
            check(driver_api().cuMemcpyDtoH(out.ctypes.data, self.ptr, out.nbytes))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self.copy_to_host()
        return a if dtype is None else a.astype(dtype)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "version": 3,
            "strides": None,
            "stream": int(self.stream) if self.stream is not None else None,
        }

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self.device_id)  # kDLCUDA

    def __dlpack__(self, stream: Any = None, max_version: Any = None, dl_device: Any = None, copy: Any = None):
        """A DLPack capsule of this array (legacy DLManagedTensor, no copy).

        The consumer's `stream` is honoured by synchronising our stream first (simple, correct)."""
        if self.stream is not None and stream != -1:
            self.stream.synchronize()
        return _dlpack_capsule(self)

    def __repr__(self) -> str:
        return f"DeviceArray(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype})"


# DLPack (v0.x legacy struct layout, which every consumer accepts as "dltensor" capsules).
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]

_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}
_ALIVE: dict[int, tuple] = {}  # managed-tensor address -> (struct, shape array, owner): freed by the deleter
_DLTENSOR = ctypes.c_char_p(b"dltensor")  # the capsule keeps a pointer to its name: it must live on
_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.restype, _capsule_is_valid.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]


@_DELETER
def _dl_deleter(managed) -> None:
    _ALIVE.pop(ctypes.addressof(managed.contents), None)


@_CAPSULE_DESTRUCTOR
def _dl_capsule_destructor(capsule: int) -> None:
    # A consumer renames the capsule "used_dltensor" and calls the deleter when it is done; a capsule
    # still named "dltensor" when it dies was never consumed, so nobody else will free the tensor.
    if _capsule_is_valid(capsule, _DLTENSOR):
        _ALIVE.pop(_capsule_pointer(capsule, _DLTENSOR), None)


def _dlpack_capsule(arr: DeviceArray):
    managed = _DLManagedTensor()
    shape = (ctypes.c_int64 * max(arr.ndim, 1))(*arr.shape)
    managed.dl_tensor.data = arr.ptr
    managed.dl_tensor.device = _DLDevice(2, arr.device_id)
    managed.dl_tensor.ndim = arr.ndim
    managed.dl_tensor.dtype = _DLDataType(_DL_CODES[arr.dtype.kind], arr.dtype.itemsize * 8, 1)
    managed.dl_tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    managed.dl_tensor.strides = None  # compact row-major
    managed.dl_tensor.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = _dl_deleter
    _ALIVE[ctypes.addressof(managed)] = (managed, shape, arr.owner)
    new = ctypes.pythonapi.PyCapsule_New
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, _CAPSULE_DESTRUCTOR]
    return new(ctypes.addressof(managed), _DLTENSOR, _dl_capsule_destructor)


# ---------------------------------------------------------------- kernel launches


class Kernel:
    """A `CUfunction` launched with `cuLaunchKernel` and a ctypes-built argument array.

    Args are given as ctypes values (c_uint64 for pointers, c_int32, c_uint32, c_float, or a
    ctypes.Structure passed by value)."""

    def __init__(self, module: Any, name: str) -> None:
        self.name = name
        self.function = check(driver_api().cuModuleGetFunction(module, name.encode()))

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], stream: Stream, *args: Any,
                 shared: int = 0) -> None:
        if grid[0] * grid[1] * grid[2] == 0:
            return
        pointers = (ctypes.c_void_p * max(len(args), 1))(*[ctypes.addressof(a) for a in args])
        check(driver_api().cuLaunchKernel(self.function, *grid, *block, shared, stream.handle, ctypes.addressof(pointers), 0))


def ptr(value: Any) -> ctypes.c_uint64:
    """A device pointer kernel argument (0 = null) from an int, a DeviceBuffer or a DeviceArray."""
    if value is None:
        return ctypes.c_uint64(0)
    return ctypes.c_uint64(int(value.ptr) if hasattr(value, "ptr") else int(value))
