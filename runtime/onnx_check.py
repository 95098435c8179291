"""Refuse ONNX files that would make a loader read other files (external tensor data).

An ONNX tensor may keep its bytes outside the model (`data_location = EXTERNAL`, `external_data`
naming a file). onnxruntime resolves such a name against the model's folder, or the process's
working directory when the model is given as bytes — a file that no bundle manifest lists or
hashes. Bundles never need that (the exporter writes every tensor inline), so any tensor with
external data is refused before a session is made.

The runtime has no `onnx` package, so this reads the protobuf wire format (runtime/protobuf.py), following only
the fields that can hold tensors (field numbers from onnx.proto; tests/test_trust.py checks the
table against the onnx package): model -> graph, functions; graph -> node, initializer,
sparse_initializer; node -> attribute; attribute -> t, tensors, g, graphs, sparse_tensor(s);
function -> node, attribute_proto; sparse tensor -> values, indices. Iterative, so a deeply nested
file cannot exhaust the stack.
"""
from __future__ import annotations

from embedtalk_sdk.runtime.bundle import BundleError
from embedtalk_sdk.runtime.protobuf import fields

MODEL, GRAPH, NODE, ATTRIBUTE, FUNCTION, SPARSE, TENSOR = range(7)
# message kind -> {field number: kind of the message in that field}
CHILDREN: dict[int, dict[int, int]] = {
    MODEL: {7: GRAPH, 25: FUNCTION},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 10: TENSOR, 6: GRAPH, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    FUNCTION: {7: NODE, 11: ATTRIBUTE},
    SPARSE: {1: TENSOR, 2: TENSOR},
    TENSOR: {},
}
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def external_tensors(data: bytes) -> list[str]:
    """Names of the tensors in an ONNX model whose data lives outside it (empty: self-contained).

    Raises ValueError if the bytes are not a well-formed protobuf message.
    """
    found: list[str] = []
    stack = [(MODEL, 0, len(data))]
    try:
        while stack:
            kind, start, end = stack.pop()
            name, external = "", False
            for number, wire, value in fields(data, start, end):
                if kind == TENSOR:
                    if number == TENSOR_DATA_LOCATION and wire == 0 and value == EXTERNAL:
                        external = True
                    elif number == TENSOR_EXTERNAL_DATA and wire == 2:
                        external = True
                    elif number == TENSOR_NAME and wire == 2:
                        name = data[value[0]:value[1]].decode("utf-8", "replace")
                elif wire == 2 and number in CHILDREN[kind]:
                    stack.append((CHILDREN[kind][number], *value))
            if external:
                found.append(name or "<unnamed>")
    except ValueError as e:
        raise ValueError(f"not a well-formed ONNX (protobuf) file: {e}") from None
    return found


def check_self_contained(data: bytes, where: str) -> bytes:
    """`data` if the ONNX model at `where` keeps every tensor inline; BundleError otherwise."""
    try:
        external = external_tensors(data)
    except ValueError as e:
        raise BundleError(f"{where}: {e}") from None
    if external:
        shown = ", ".join(external[:3]) + (" ..." if len(external) > 3 else "")
        raise BundleError(f"{where} keeps tensor data in other files ({shown}): bundles must be self-contained; "
                          "refusing to load it (re-export the avatar)")
    return data
