"""The initializers of an ONNX model as numpy arrays, read without the `onnx` package.

The runtime installs no `onnx`; the `cuda` backend still needs the baked network's weights by
name (export/onnx_graph.py names them). This follows model -> graph -> initializer in the protobuf
wire format (runtime/protobuf.py) and decodes the tensors the exporter writes: `raw_data` (what
`numpy_helper.from_array` produces) or packed `float_data` / `int64_data`, of float32, float16,
float64, int32 or int64. Anything else is refused by name; tests/test_network.py checks the reader
against `onnx.numpy_helper`.
"""
from __future__ import annotations

import numpy as np

from embedtalk_sdk.runtime.bundle import BundleError
from embedtalk_sdk.runtime.onnx_check import check_self_contained
from embedtalk_sdk.runtime.protobuf import FIXED32, FIXED64, LENGTH, VARINT, fields, read_varint

MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
T_DIMS, T_DATA_TYPE, T_FLOAT_DATA, T_INT32_DATA, T_INT64_DATA, T_NAME, T_RAW_DATA, T_DOUBLE_DATA = 1, 2, 4, 5, 7, 8, 9, 10
T_DATA_LOCATION, EXTERNAL = 14, 1
DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}  # TensorProto.DataType


def _packed_varints(buf: bytes, start: int, end: int) -> list[int]:
    out, i = [], start
    while i < end:
        value, i = read_varint(buf, i, end)
        out.append(value)
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor(buf: bytes, start: int, end: int) -> tuple[str, np.ndarray]:
    name, dims, dtype, raw, floats, ints, doubles = "", [], None, None, [], [], []
    for number, wire, value in fields(buf, start, end):
        if number == T_NAME and wire == LENGTH:
            name = buf[value[0]:value[1]].decode("utf-8", "replace")
        elif number == T_DIMS:
            dims += [value] if wire == VARINT else _packed_varints(buf, *value)
        elif number == T_DATA_TYPE and wire == VARINT:
            dtype = value
        elif number == T_RAW_DATA and wire == LENGTH:
            raw = buf[value[0]:value[1]]
        elif number == T_FLOAT_DATA:
            floats.append(np.frombuffer(buf[value[0]:value[1]], "<f4") if wire in (LENGTH, FIXED32) else None)
        elif number == T_DOUBLE_DATA:
            doubles.append(np.frombuffer(buf[value[0]:value[1]], "<f8") if wire in (LENGTH, FIXED64) else None)
        elif number in (T_INT64_DATA, T_INT32_DATA):
            ints += [value] if wire == VARINT else _packed_varints(buf, *value)
        elif number == T_DATA_LOCATION and wire == VARINT and value == EXTERNAL:
            raise ValueError(f"tensor {name or '<unnamed>'} keeps its data in another file")
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name or '<unnamed>'} has ONNX data type {dtype}, which the runtime does not read")
    np_type = np.dtype(DTYPES[dtype]).newbyteorder("<")
    shape = tuple(_signed(d) for d in dims)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor {name} has negative dims {shape}")
    if raw is not None:
        data = np.frombuffer(raw, np_type)
    elif floats or doubles:
        parts = floats or doubles
        if any(p is None for p in parts):
            raise ValueError(f"tensor {name}: malformed float data")
        data = np.concatenate(parts).astype(np_type)
    elif np_type == np.float16:  # float16 without raw_data lives in int32_data as bit patterns
        data = np.array(ints, np.uint16).view(np.float16)
    else:
        data = np.array([_signed(v) for v in ints], np_type)
    if data.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"tensor {name} holds {data.size} values for shape {shape}")
    return name, data.reshape(shape).astype(np_type.newbyteorder("="), copy=True)


def read_initializers(data: bytes) -> dict[str, np.ndarray]:
    """{name: array} of the main graph's initializers. Raises ValueError for a malformed model,
    external data, or a data type the runtime does not read."""
    out: dict[str, np.ndarray] = {}
    try:
        for number, wire, value in fields(data):
            if number != MODEL_GRAPH or wire != LENGTH:
                continue
            for g_number, g_wire, g_value in fields(data, *value):
                if g_number == GRAPH_INITIALIZER and g_wire == LENGTH:
                    name, array = _tensor(data, *g_value)
                    out[name] = array
    except ValueError as e:
        raise ValueError(f"not a readable ONNX model: {e}") from None
    return out


def bundle_initializers(data: bytes, where: str) -> dict[str, np.ndarray]:
    """`read_initializers` of a bundle's ONNX file, BundleError naming `where` if it keeps tensor
    data in other files or does not read (the `cuda` and `torch` backends' weights)."""
    check_self_contained(data, where)
    try:
        return read_initializers(data)
    except ValueError as e:
        raise BundleError(f"{where}: {e}") from None


GRAPH_INPUT, GRAPH_OUTPUT = 11, 12
VALUE_NAME, VALUE_TYPE, TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE, SHAPE_DIM = 1, 2, 1, 1, 2, 1
DIM_VALUE, DIM_PARAM = 1, 2
FLOAT = 1  # TensorProto.FLOAT


def _value_info(data: bytes, start: int, end: int) -> tuple[str, int, list]:
    """(name, element type, dims) of a ValueInfoProto; a dim is an int, a symbol (str) or None."""
    name, elem, dims = "", 0, []
    for number, wire, value in fields(data, start, end):
        if number == VALUE_NAME and wire == LENGTH:
            name = data[value[0]:value[1]].decode("utf-8", "replace")
        elif number == VALUE_TYPE and wire == LENGTH:
            for t_number, t_wire, t_value in fields(data, *value):
                if t_number != TYPE_TENSOR or t_wire != LENGTH:
                    continue
                for k_number, k_wire, k_value in fields(data, *t_value):
                    if k_number == TENSOR_ELEM_TYPE and k_wire == VARINT:
                        elem = k_value
                    elif k_number == TENSOR_SHAPE and k_wire == LENGTH:
                        for d_number, d_wire, d_value in fields(data, *k_value):
                            if d_number != SHAPE_DIM or d_wire != LENGTH:
                                continue
                            dim = None
                            for x_number, x_wire, x_value in fields(data, *d_value):
                                if x_number == DIM_VALUE and x_wire == VARINT:
                                    dim = _signed(x_value)
                                elif x_number == DIM_PARAM and x_wire == LENGTH:
                                    dim = data[x_value[0]:x_value[1]].decode("utf-8", "replace")
                            dims.append(dim)
    return name, elem, dims


def graph_io(data: bytes) -> tuple[dict[str, tuple[int, list]], dict[str, tuple[int, list]]]:
    """The main graph's declared inputs (less initializers) and outputs: ({name: (element type,
    dims)}, {...}), what onnxruntime's session reports, read without it. ValueError for a
    malformed model."""
    inputs: dict[str, tuple[int, list]] = {}
    outputs: dict[str, tuple[int, list]] = {}
    initializers: set[str] = set()
    try:
        for number, wire, value in fields(data):
            if number != MODEL_GRAPH or wire != LENGTH:
                continue
            for g_number, g_wire, g_value in fields(data, *value):
                if g_number in (GRAPH_INPUT, GRAPH_OUTPUT) and g_wire == LENGTH:
                    name, elem, dims = _value_info(data, *g_value)
                    (inputs if g_number == GRAPH_INPUT else outputs)[name] = (elem, dims)
                elif g_number == GRAPH_INITIALIZER and g_wire == LENGTH:
                    initializers.update(data[v[0]:v[1]].decode("utf-8", "replace")
                                        for n, w, v in fields(data, *g_value) if n == T_NAME and w == LENGTH)
    except ValueError as e:
        raise ValueError(f"not a readable ONNX model: {e}") from None
    # older models list their initializers among the inputs too; onnxruntime does not count them
    return {k: v for k, v in inputs.items() if k not in initializers}, outputs
