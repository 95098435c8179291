"""Training as the Python API runs it: the same densification schedule as `embedtalk-sdk train`."""
from __future__ import annotations

from pathlib import Path

import torch

from embedtalk_sdk.train.strategy import DensifyConfig
from embedtalk_sdk.train.trainer import TrainConfig, Trainer


def test_python_api_densifies_on_the_cli_schedule(tiny_dataset, tmp_path: Path):
    # `train --iterations 120` densifies from step 24 to 84 every 50 steps: once, at step 50. The API
    # used to keep DensifyConfig's fixed 200..3000 whatever the iteration count, and never densified.
    logs: list[str] = []
    cfg = TrainConfig(iterations=120, init_points=1500, lpips_every=0, mouth_crops=0, val_every=0)
    trainer = Trainer(tiny_dataset, cfg, log=logs.append)
    assert trainer.densify == DensifyConfig.for_run(120, torch.device("cpu"))
    assert (trainer.densify.start, trainer.densify.stop, trainer.densify.every) == (24, 84, 50)
    trainer.run(tmp_path)
    assert [line.split(":")[0] for line in logs if line.startswith("step ")] == ["step 50"]
