"""What a bundle cannot make the runtime do: read files it does not list, or play a damaged manifest."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx import onnx_pb as P

from embedtalk_sdk.runtime.avatar import Avatar
from embedtalk_sdk.runtime.bundle import MANIFEST, BundleError
from embedtalk_sdk.runtime.manifest import seal
from embedtalk_sdk.runtime.onnx_check import CHILDREN, TENSOR_DATA_LOCATION, TENSOR_EXTERNAL_DATA, TENSOR_NAME
from embedtalk_sdk.runtime.onnx_check import ATTRIBUTE, FUNCTION, GRAPH, MODEL, NODE, SPARSE, external_tensors

from test_runtime import make_test_bundle, speech

PROTOS = {MODEL: P.ModelProto, GRAPH: P.GraphProto, NODE: P.NodeProto, ATTRIBUTE: P.AttributeProto,
          FUNCTION: P.FunctionProto, SPARSE: P.SparseTensorProto}


def test_the_wire_table_is_onnx_proto() -> None:
    kinds = {P.GraphProto: GRAPH, P.NodeProto: NODE, P.AttributeProto: ATTRIBUTE, P.FunctionProto: FUNCTION,
             P.SparseTensorProto: SPARSE, P.TensorProto: 6}
    names = {cls.DESCRIPTOR.full_name: k for cls, k in kinds.items()}
    for kind, proto in PROTOS.items():
        want = {f.number: names[f.message_type.full_name] for f in proto.DESCRIPTOR.fields
                if f.message_type is not None and f.message_type.full_name in names}
        assert CHILDREN[kind] == want, proto.__name__
    fields = P.TensorProto.DESCRIPTOR.fields_by_name
    assert (fields["name"].number, fields["external_data"].number, fields["data_location"].number) == (
        TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION)


def _externalise(tensor: onnx.TensorProto, location: str) -> bytes:
    """Move a tensor's bytes out of the model (as onnx's external-data saving does); return them."""
    data = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        tensor.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
    return data


def test_external_tensors_are_found_wherever_they_are() -> None:
    const = helper.make_tensor("k", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    node = helper.make_node("Constant", [], ["y"], value=const)
    init = numpy_helper.from_array(np.ones(3, np.float32), "w")
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])], [init])
    model = helper.make_model(graph)
    assert external_tensors(model.SerializeToString()) == []
    _externalise(model.graph.node[0].attribute[0].t, "a.bin")  # inside a node attribute
    assert external_tensors(model.SerializeToString()) == ["k"]
    _externalise(model.graph.initializer[0], "b.bin")
    assert sorted(external_tensors(model.SerializeToString())) == ["k", "w"]
    with pytest.raises(ValueError, match="not a well-formed ONNX"):
        external_tensors(model.SerializeToString()[:-3])


def test_external_initializer_is_refused_not_read_from_cwd(tmp_path: Path, monkeypatch) -> None:
    # Before: onnxruntime, given the model as bytes, read secret.bin from the working directory —
    # a file no manifest lists or hashes — and the frames changed with it.
    stolen: dict[str, bytes] = {}

    def edit(model: onnx.ModelProto) -> None:
        table = next(t for t in model.graph.initializer if t.name == "table")
        stolen["data"] = _externalise(table, "secret.bin")

    path = make_test_bundle(tmp_path / "evil.etk", edit_model=edit)
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "secret.bin").write_bytes(stolen["data"])
    monkeypatch.chdir(work)
    with pytest.raises(BundleError, match=r"deform\.onnx keeps tensor data in other files \(table\)"):
        Avatar.load(path, backend="onnxruntime")


def _reseal(path: Path, edit) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(seal(manifest)))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(fps=0), r"fps is 0, must be a number in \(0, 240\]"),
        (lambda m: m.update(width=-5), r"width is -5, must be an integer"),
        (lambda m: m.update(K=[[1, 0, 2], [0, 1, 2]]), r"K is .*must be a 3x3 matrix"),
        (lambda m: m["K"][0].__setitem__(2, 900.0), r"principal point 900.0 lies outside the 48-pixel width"),
        (lambda m: m["gaussians"].update(count=10**12), r"gaussians.count is 1000000000000, must be an integer in \[1, 10000000\]"),
        (lambda m: m["gaussians"].update(count="300"), r"gaussians.count is \"300\""),
        (lambda m: m["aus"].update(neutral=[0.1] * 5), r"aus.neutral is .*must be a list of 6 numbers"),
        (lambda m: m["tracks"].pop("torso"), r"tracks.torso.file is missing"),
        (lambda m: m["audio"].update(window=True), r"audio.window is true"),
        (lambda m: m.update(engines={"a": 1}), r"engines must be a list of objects"),
    ],
    ids=["fps0", "width", "K-shape", "K-centre", "count-huge", "count-string", "neutral", "no-torso", "window-bool",
         "engines"],
)
def test_invalid_manifest_fields_are_named(tmp_path: Path, edit, message) -> None:
    path = make_test_bundle(tmp_path / "b.etk")
    _reseal(path, edit)
    with pytest.raises(BundleError, match=message):
        Avatar.load(path, backend="onnxruntime")


def test_a_valid_manifest_still_plays(tmp_path: Path) -> None:
    path = make_test_bundle(tmp_path / "b.etk")
    _reseal(path, lambda m: None)
    assert Avatar.load(path, backend="onnxruntime").speak(speech(0.2), sample_rate=16000).shape[0] == 5
