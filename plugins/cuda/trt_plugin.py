"""`EmbedTalkRasterizer`: the CUDA rasteriser as a TensorRT IPluginV3, written in Python.

Full TensorRT only (TensorRT-RTX engines hold the network alone). TensorRT's ONNX parser maps the
node that `plugins/cuda/engines.py:rasterizer_graph` adds to this plugin by its op type, version "1",
namespace "". `enqueue` runs `CudaRasterizer.forward` (the same kernels as everywhere) on
TensorRT's stream, frame by frame of the batch, in TensorRT's workspace.

Inputs: 0 delta_means [B,N,3] f32, 1 delta_opacity [B,N] f32, 2 viewmat [B,4,4] f32,
3 background [B,H,W,3] u8, 4..8 means [N,3], quats [N,4], scales [N,3], opacity_logits [N],
colors [N,3] (f32 constants). Output: frames [B,H,W,3] u8. Fields: fx, fy, cx, cy.
The pair capacity is fixed at build time (workspace size): EMBEDTALK_TRT_MAX_PAIRS, default
16 per Gaussian; a frame that needs more is drawn incompletely and logged (warning). Each frame
of a batch writes its pair count to its own slot; `enqueue` never synchronises (it must not, for
CUDA graphs): the counts travel to pinned host memory behind the frames, and are read at the next
`enqueue` once their event has completed (`PairCountCheck`).

TensorRT's Python plugin classes must subclass the `tensorrt` module's types, so they are made
by `plugin_classes(trt)` once `tensorrt` is importable; nothing here imports it at module load.
Untested on the development machines (full TensorRT does not install there); see design.md.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger("embedtalk_sdk.plugins.cuda")

PLUGIN_NAME = "EmbedTalkRasterizer"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
FIELDS = ("fx", "fy", "cx", "cy")
_REGISTERED: set[int] = set()


def max_pairs_for(n: int) -> int:
    per = int(os.environ.get("EMBEDTALK_TRT_MAX_PAIRS_PER_GAUSSIAN", "16"))
    return int(os.environ.get("EMBEDTALK_TRT_MAX_PAIRS", max(65536, per * n)))


class PairCountCheck:
    """Per-frame pair counts brought back without a synchronisation.

    `after_batch(stream, counts_ptr, frames)` queues a copy of `frames` u32 counts into pinned
    memory and records an event behind it, in a ring of RING slots (the host may enqueue several
    batches ahead of the GPU); `poll()` (called at the next enqueue) returns the overflowing frames
    of every slot whose event has completed. While the stream is being captured into a CUDA graph
    nothing is recorded or queried (the copy becomes part of the graph and goes unchecked).
    """

    RING = 4

    def __init__(self, max_frames: int, max_pairs: int) -> None:
        from embedtalk_sdk.plugins.cuda.driver import PinnedBuffer, check, driver_api

        drv = driver_api()
        self.max_pairs = int(max_pairs)
        self.max_frames = max(int(max_frames), 1)
        self.hosts = [PinnedBuffer((self.max_frames,), np.uint32) for _ in range(self.RING)]
        self.events = [check(drv.cuEventCreate(drv.CUevent_flags.CU_EVENT_DISABLE_TIMING)) for _ in range(self.RING)]
        self.pending = [0] * self.RING  # frames whose counts are in flight, per slot
        self.next = 0

    def after_batch(self, stream: Any, counts_ptr: int, frames: int) -> None:
        from embedtalk_sdk.plugins.cuda.driver import check, driver_api

        drv = driver_api()
        status = check(drv.cuStreamIsCapturing(stream.handle))
        if status != drv.CUstreamCaptureStatus.CU_STREAM_CAPTURE_STATUS_NONE:
            return
        slot, frames = self.next, min(int(frames), self.max_frames)
        self.next = (slot + 1) % self.RING
        check(drv.cuMemcpyDtoHAsync(self.hosts[slot].ptr, counts_ptr, 4 * frames, stream.handle))
        check(drv.cuEventRecord(self.events[slot], stream.handle))
        self.pending[slot] = frames

    def poll(self) -> list[tuple[int, int]]:
        """[(frame index in its batch, pairs needed)] for the overflowing frames of the batches
        whose counts have landed since the last poll."""
        from embedtalk_sdk.plugins.cuda.driver import driver_api

        drv, found = driver_api(), []
        for slot in range(self.RING):
            if not self.pending[slot]:
                continue
            (err,) = drv.cuEventQuery(self.events[slot])
            if err == drv.CUresult.CUDA_ERROR_NOT_READY:
                continue
            counts, self.pending[slot] = self.hosts[slot].array[: self.pending[slot]].copy(), 0
            found += [(i, int(c)) for i, c in enumerate(counts) if int(c) > self.max_pairs]
        return found


class _RawStream:
    """TensorRT hands enqueue a raw cudaStream_t; CudaRasterizer wants an object with `.handle`."""

    def __init__(self, handle: int) -> None:
        from cuda.bindings import driver

        self.handle = driver.CUstream(int(handle))


def plugin_classes(trt) -> tuple[type, type]:
    """(plugin class, creator class) subclassing `trt`'s IPluginV3 interfaces."""

    class EmbedTalkRasterizerPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, fields: dict[str, float] | None = None, phase: Any = None) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.num_outputs = 1
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_name = PLUGIN_NAME
            self.plugin_version = PLUGIN_VERSION
            self.fields = dict(fields or {})
            self.phase = phase
            self._rasterizer = None
            self._counts: PairCountCheck | None = None

        # ---- core / build
        def get_capability_interface(self, kind):
            return self

        def get_output_data_types(self, input_types):
            return [trt.DataType.UINT8]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[3])]  # frames: the background's shape

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            want = trt.DataType.UINT8 if pos in (3, num_inputs) else trt.DataType.FLOAT
            return desc.type == want

        def configure_plugin(self, inputs, outputs):
            pass

        def on_shape_change(self, inputs, outputs):
            pass

        def get_fields_to_serialize(self):
            # PluginField keeps a pointer, not the array: the buffers must outlive this call (TensorRT
            # reads them later), or the engine serialises whatever reused that memory.
            self._serialized = [np.array([self.fields[k]], np.float32) for k in FIELDS]
            return trt.PluginFieldCollection(
                [trt.PluginField(k, buf, trt.PluginFieldType.FLOAT32) for k, buf in zip(FIELDS, self._serialized)]
            )

        def get_workspace_size(self, inputs, outputs):
            from embedtalk_sdk.plugins.cuda.rasterizer import plan

            b, n = int(inputs[3].max[0]), int(inputs[4].max[0])
            h, w = int(inputs[3].max[1]), int(inputs[3].max[2])
            # plan's total is 256-byte aligned: one u32 pair count per frame follows it
            return plan(n, w, h, max_pairs_for(n)).total + 4 * b

        # ---- runtime
        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            from embedtalk_sdk.plugins.cuda.rasterizer import CudaRasterizer, plan

            if self._rasterizer is None:
                self._rasterizer = CudaRasterizer()
            dims = input_desc[3].dims
            b, h, w = int(dims[0]), int(dims[1]), int(dims[2])
            n = int(input_desc[4].dims[0])
            max_pairs = max_pairs_for(n)
            ws_bytes = plan(n, w, h, max_pairs).total
            counts = int(workspace) + ws_bytes
            if self._counts is None or self._counts.max_frames < b:
                self._counts = PairCountCheck(b, max_pairs)
            for frame, needed in self._counts.poll():
                log.warning("%s: frame %d of a batch needed %d tile pairs, room for %d and drawn incompletely "
                            "(set EMBEDTALK_TRT_MAX_PAIRS and rebuild the engine)", PLUGIN_NAME, frame, needed,
                            max_pairs)  # fmt: skip
            K = [[self.fields["fx"], 0, self.fields["cx"]], [0, self.fields["fy"], self.fields["cy"]], [0, 0, 1]]
            s = _RawStream(stream)
            for i in range(b):
                self._rasterizer.forward(
                    s, n=n, width=w, height=h, K=K,
                    means=inputs[4], quats=inputs[5], scales=inputs[6], opacity_logits=inputs[7], colors=inputs[8],
                    delta_means=int(inputs[0]) + i * n * 12, delta_opacity=int(inputs[1]) + i * n * 4,
                    viewmat=int(inputs[2]) + i * 64, background_u8=int(inputs[3]) + i * h * w * 3,
                    image_u8=int(outputs[0]) + i * h * w * 3, max_pairs=max_pairs,
                    workspace=int(workspace), workspace_bytes=ws_bytes, pair_count=counts + 4 * i,
                )  # fmt: skip
            self._counts.after_batch(s, counts, b)
            return 0

        def attach_to_context(self, context):
            return self.clone()

        def set_tactic(self, tactic):
            pass

        def clone(self):
            other = EmbedTalkRasterizerPlugin(self.fields, self.phase)
            return other

    class EmbedTalkRasterizerCreator(trt.IPluginCreatorV3One):
        def __init__(self) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name = PLUGIN_NAME
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(k, np.array([]), trt.PluginFieldType.FLOAT32) for k in FIELDS]
            )

        def create_plugin(self, name, fc, phase):
            fields = {f.name: float(np.asarray(f.data).reshape(-1)[0]) for f in fc}
            missing = [k for k in FIELDS if k not in fields]
            if missing:
                raise ValueError(f"{PLUGIN_NAME}: missing fields {missing}")
            return EmbedTalkRasterizerPlugin(fields, phase)

    return EmbedTalkRasterizerPlugin, EmbedTalkRasterizerCreator


def register_plugin(trt) -> None:
    """Register the creator with `trt`'s plugin registry (once per process); needed before
    parsing a graph with the node and before deserialising an engine that holds it."""
    if id(trt) in _REGISTERED:
        return
    _, creator = plugin_classes(trt)
    trt.get_plugin_registry().register_creator(creator(), PLUGIN_NAMESPACE)
    _REGISTERED.add(id(trt))
