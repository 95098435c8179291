"""Shared fixtures: a tiny synthetic dataset, and a briefly trained + exported avatar made by the
real pipeline (synth -> Trainer -> export_bundle), shared by the end-to-end tests."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# The tests find model files as a user's run does (embedtalk_sdk/model_files.py): through
# EMBEDTALK_MODELS, which names the models beside the checkout unless the environment names a folder.
if (SHARED / "models").is_dir():
    os.environ.setdefault("EMBEDTALK_MODELS", str(SHARED / "models"))


def find_model(name: str) -> Path | None:
    """Model file `name` as the SDK finds it, or None."""
    from embedtalk_sdk.model_files import ModelFileError, model_file

    try:
        return model_file(name)
    except ModelFileError:
        return None


def model_or_skip(name: str) -> Path:
    """Model file `name` as the SDK finds it; skips the test (saying where it looked) when absent."""
    from embedtalk_sdk.model_files import ModelFileError, model_file

    try:
        return model_file(name)
    except ModelFileError as e:
        pytest.skip(str(e))


def has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from embedtalk_sdk.synthetic.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("data") / "tiny", seconds=4.4, size=64, seed=3, n_points=6000)


@pytest.fixture(scope="session")
def trained_avatar(tiny_dataset, tmp_path_factory) -> dict:
    """{"data", "ckpt", "bundle", "metrics"}: 60 iterations of real training on the tiny dataset.

    Log-mel features: zeros give one constant row, which the serve tests' exact idle and interrupt
    frames rely on; `phonetic_avatar` is the default encoder's avatar."""
    from embedtalk_sdk.export.exporter import export_bundle
    from embedtalk_sdk.train.strategy import DensifyConfig
    from embedtalk_sdk.train.trainer import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(iterations=60, init_points=1500, lpips_every=0, audio_encoder="mel",
                      densify=DensifyConfig(start=20, stop=50, every=20))
    result = Trainer(tiny_dataset, cfg, log=lambda m: None).run(run)
    bundle = export_bundle(run / "ckpt.pt", run / "avatar.etk", log=lambda m: None)
    return {"data": tiny_dataset, "ckpt": run / "ckpt.pt", "bundle": bundle, "metrics": result.metrics}


@pytest.fixture(scope="session")
def phonetic_avatar(tiny_dataset, tmp_path_factory) -> dict:
    """{"ckpt", "inside", "shared", "data"}: the default (phonetic) encoder's avatar, 40 steps of real
    training, exported with the scorer inside the bundle and, for "shared", beside it."""
    pytest.importorskip("pocketsphinx")
    from embedtalk_sdk.export.exporter import export_bundle
    from embedtalk_sdk.train.strategy import DensifyConfig
    from embedtalk_sdk.train.trainer import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("phonetic-run")
    cfg = TrainConfig(iterations=40, init_points=1500, lpips_every=0, audio_encoder="phonetic",
                      densify=DensifyConfig(start=20, stop=30, every=10))  # fmt: skip
    Trainer(tiny_dataset, cfg, log=lambda m: None).run(run)
    inside = export_bundle(run / "ckpt.pt", run / "inside" / "avatar.etk", log=lambda m: None)
    shared = export_bundle(run / "ckpt.pt", run / "shared" / "avatar.etk", log=lambda m: None, shared_encoder=True)
    return {"ckpt": run / "ckpt.pt", "inside": inside, "shared": shared, "data": tiny_dataset}
