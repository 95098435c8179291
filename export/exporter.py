"""Checkpoint -> bundle: bake W_z gamma(z) into a per-Gaussian table, build deform.onnx, gather the
camera and torso+background tracks, write everything with `write_bundle` (files and manifest:
docs/interfaces.md, "Bundle").

Size: the torso/background track is H.264 in RGB (runtime/track.py), the baked table fp16 inside
deform.onnx. The table [N, hidden] rather than z [N, embed_dim] (fp16) + W_z: twice those bytes
(+0.9 MB at 15k Gaussians), but nothing is computed at load and the engine builders see one
constant; the measurements behind both choices are in runtime/design.md ("Small bundles").
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.export.audio_encoder import encoder_files
from embedtalk_sdk.export.bundle import write_bundle
from embedtalk_sdk.export.onnx_graph import build_deform_onnx, io_spec
from embedtalk_sdk.model.checkpoint import PLAYBACK_META, Checkpoint
from embedtalk_sdk.model.deform import BakedDeform
from embedtalk_sdk.runtime.aus import AU_NAMES
from embedtalk_sdk.runtime.pixels import to_uint8
from embedtalk_sdk.runtime.bundle import Bundle, bundle_megabytes, bundle_parts, format_parts
from embedtalk_sdk.runtime.track import DEFAULT_CRF, encode_track

DEFAULT_TRACK_FRAMES = 250  # 10 s at 25 fps: enough variety for idle motion, small enough to ship


def bake(ckpt: Checkpoint) -> BakedDeform:
    """The deformation network with W_z gamma(z) precomputed for every Gaussian."""
    net = ckpt.deform.eval()
    with torch.no_grad():
        table = net.embedding_table(ckpt.gaussians.embeddings)
    return BakedDeform(net, table).eval()


def gaussian_arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """Activated canonical Gaussians, float32, as docs/interfaces.md names them."""
    g = ckpt.gaussians
    with torch.no_grad():
        quats = torch.nn.functional.normalize(g.params["quats"], dim=-1)
        arrays = {
            "means": g.means,
            "quats": quats,
            "scales": g.scales(),
            "opacity_logits": g.params["opacity_logits"],
            "colors": g.colors(),
        }
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in arrays.items()}


def tracks(dataset: TalkingDataset, max_frames: int = DEFAULT_TRACK_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """(viewmats [K,4,4] f32, torso_bg [Kb,H,W,3] uint8) from the first K training frames.

    A torso+background that does not change (within 1/255) is stored once (Kb = 1).
    """
    k = min(max_frames, len(dataset))
    viewmats = np.asarray(dataset.viewmats[:k], dtype=np.float32)
    first = to_uint8(dataset.torso_bg(0))
    frames = [first]
    static = True
    for i in range(1, k):
        frame = to_uint8(dataset.torso_bg(i))
        frames.append(frame)
        if static and np.abs(frame.astype(np.int16) - first).max() > 1:
            static = False
    torso = first[None] if static else np.stack(frames)
    return viewmats, torso


def export_bundle(
    ckpt_path: str | Path,
    out_path: str | Path,
    data_dir: str | Path | None = None,
    track_frames: int = DEFAULT_TRACK_FRAMES,
    log: Callable[[str], None] = print,
    engine: str | None = None,
    targets: Sequence[str] = ("sm86", "sm89"),
    hubert_path: str | Path | None = None,
    shared_encoder: bool = False,
    track_quality: int | None = DEFAULT_CRF,
    table_dtype: str = "float16",
) -> Path:
    """Export `ckpt_path` to a bundle at `out_path` (a folder `x.etk`, or `x.zip`).

    data_dir: the training dataset (for the camera and torso+background tracks); defaults to the
    path recorded in the checkpoint.
    engine: None, "tensorrt-rtx" (engines of deform.onnx for each compute capability in
    `targets`, built without a GPU) or "tensorrt" (network + rasteriser plugin, this GPU);
    see plugins/cuda/engines.py. They go under engines/ and into the manifest's `engines` list.
    hubert_path: the local HuBERT checkpoint of a HuBERT-trained avatar (default: the path recorded
    at training); it becomes the bundle's ONNX audio encoder. shared_encoder: write that file beside
    the bundle (one copy for many avatars, checked by its sha256) instead of into it.
    track_quality: the torso track's H.264 constant-quality factor (0 lossless ... 51; default 14,
    see runtime/design.md "Small bundles"), or None to store raw uint8 frames (large).
    table_dtype: "float16" (default) or "float32" for the per-Gaussian table in deform.onnx.
    """
    ckpt = Checkpoint.load(ckpt_path)
    meta = ckpt.require_meta(ckpt_path, (*PLAYBACK_META, "data_dir") if data_dir is None else PLAYBACK_META)
    data_dir = Path(data_dir or meta["data_dir"])
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"{data_dir}: the training dataset is needed for the camera and torso tracks; pass --data DIR"
        )
    dataset = TalkingDataset(data_dir, "train")
    viewmats, torso_bg = tracks(dataset, track_frames)
    baked = bake(ckpt)
    onnx_model = build_deform_onnx(baked, table_dtype)
    arrays = gaussian_arrays(ckpt)
    arrays["viewmats"] = viewmats
    blobs = {"deform.onnx": onnx_model.SerializeToString()}
    torso_entry = _torso_track(torso_bg, track_quality, float(meta["fps"]), arrays, blobs, log)
    model_path = hubert_path or meta.get("train", {}).get("hubert_path")
    audio, encoder_blobs = encoder_files(meta["audio"], model_path, Path(out_path), shared_encoder, log)
    manifest = {
        "fps": meta["fps"],
        "width": meta["width"],
        "height": meta["height"],
        "K": meta["K"],
        "audio": audio,
        "aus": {"names": list(AU_NAMES), **meta["aus"]},
        "network": baked.net.cfg.to_dict(),
        "gaussians": {"count": int(arrays["means"].shape[0])},
        "onnx": {"deform": {"file": "deform.onnx", **io_spec(onnx_model)}},
        "tracks": {"frames": int(len(viewmats)), "torso_frames": int(len(torso_bg)), "torso": torso_entry},
        "engines": [],
        "training": meta.get("metrics", {}),
    }
    blobs.update(encoder_blobs)
    if engine:  # ---- TensorRT engines (plugins/cuda/engines.py, GPU playback) ----
        from embedtalk_sdk.plugins.cuda.engines import build_engines, manifest_entry

        built = build_engines(engine, onnx_model, targets, gaussians=arrays, K=meta["K"],
                              width=meta["width"], height=meta["height"], log=log)  # fmt: skip
        manifest["engines"] = [manifest_entry(e) for e in built]
        blobs.update({e["file"]: e["data"] for e in built})
    path = write_bundle(out_path, manifest, arrays, blobs)
    parts = format_parts(bundle_parts(Bundle.open(path, verify=False).manifest))
    log(f"wrote {path} ({bundle_megabytes(path):.2f} MB, {manifest['gaussians']['count']} Gaussians: {parts})")
    return path


def _torso_track(
    images: np.ndarray, quality: int | None, fps: float, arrays: dict, blobs: dict, log: Callable[[str], None]
) -> dict:
    """Put the track into arrays (raw) or blobs (H.264); return its manifest entry."""
    if quality is None:
        arrays["torso_bg"] = images
        return {"file": "torso_bg.npy", "codec": "raw"}
    log(f"encoding the torso track: {len(images)} images, H.264 RGB crf {quality}")
    blobs["torso_bg.mp4"] = encode_track(images, crf=quality, fps=fps)
    return {"file": "torso_bg.mp4", "codec": "h264", "crf": int(quality)}
