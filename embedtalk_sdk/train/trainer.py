"""Training of one avatar (paper section 3.3): canonical Gaussians, embeddings and the deformation
network, jointly, with the loss of eq. 12 and 3DGS density control."""
from __future__ import annotations

import io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from embedtalk_sdk.audio.features import FeatureSource, dataset_features
from embedtalk_sdk.runtime.audio.io import load_audio
from embedtalk_sdk.data.dataset import TalkingDataset
from embedtalk_sdk.runtime.fileio import atomic_write
from embedtalk_sdk.metrics import lpips_distance, psnr
from embedtalk_sdk.model.checkpoint import Checkpoint
from embedtalk_sdk.model.deform import DeformConfig, DeformNet
from embedtalk_sdk.runtime.aus import BLINK_INDEX
from embedtalk_sdk.model.gaussians import GaussianModel
from embedtalk_sdk.runtime.pixels import to_uint8
from embedtalk_sdk.train.losses import (
    box_l1, embedding_rows, embedding_smoothness, knn_indices, l1, lpips_face, lpips_mouth, opacity_mean,
)
from embedtalk_sdk.train.health import HealthInputs, audio_health, audio_ignored, quietest_frame
from embedtalk_sdk.train.lpips import LPIPS, backbone_file
from embedtalk_sdk.train.render import (
    FrameData, crop_intrinsics, gaussians_touching, pick_rasterizer, render, render_frame,
)
from embedtalk_sdk.train.resume import (
    RESUME_FILE, Cadence, ResumeError, dataset_digest, load_state, remove_partials, restore_rng, rng_state,
    save_state,
)
from embedtalk_sdk.train.strategy import DensifyConfig, GradStats, densify_and_prune

ProgressFn = Callable[[int, int, dict], None]
NO_LPIPS = "train without LPIPS: --no-lpips (TrainConfig.lpips_every=0)"


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved into the checkpoint."""

    # 4500 was tried on ted_lieu_hdtf_60s (issue 21, train/design.md): PSNR +0.02..0.16 dB, but LMD
    # and the audio-only lip correlation got worse in the seeds measured; 3000 stays.
    iterations: int = 3000
    # Phone posteriors of the CMU US-English model (runtime/audio/phonetic.py): on ted_lieu_hdtf_60s
    # they predict the mouth opening at 0.68 (5-fold ridge) where log-mel reaches 0.57 (README).
    audio_encoder: str = "phonetic"
    hubert_path: str | None = None
    lpips_weights: str | None = None  # None: found like every model file (embedtalk_sdk/model_files.py)
    lambda_face: float = 0.01
    lambda_mouth: float = 0.002
    lambda_opacity: float = 1e-4
    # Not in eq. 12: L1 on the mouth box alone. The mouth is ~0.5% of the pixels; in a 1500-iteration
    # CPU run this term doubled the learned mouth motion (darkness std 0.0009 -> 0.0019). 0: eq. 12.
    lambda_mouth_l1: float = 0.5
    # Eq. 12 weighs L_emb_reg by 1. Under Adam the term's gradient on z is ~140x the image's (measured
    # at metre scale, neighbours 1-2 mm apart so w_ij ~ 1) and points the same way every step, so z
    # collapsed (std 0.1 -> 0.005) and the network never learned the mouth in a CPU-sized run
    # (held-out sync: 1 and 0.01 -> collapse, 1e-3 -> 0.05 std of z, 1e-4 -> 0.63, 0 -> 0.89).
    lambda_emb: float = 1e-4
    knn_k: int = 20
    emb_reg_rows: int = 2048  # Gaussians i sampled per step for L_emb_reg (0: all)
    max_init_points: int = 100_000
    init_points: int = 8000  # CPU-friendly default; the paper's dense init is <= 100k
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacity: float = 2.5e-2
    lr_colors: float = 5e-3
    lr_embeddings: float = 2.5e-3
    lr_network: float = 1e-3
    # Decayed exponentially like the means. At a constant 1e-3 one demo seed of five lost 5 dB of
    # validation PSNR between steps 1000 and 1500 as the mouth offsets overshot (3.9 mm, smudges).
    lr_network_final: float = 1e-4
    # The LPIPS terms every this many steps. 0: LPIPS off (`train --no-lpips`): L1 terms only,
    # lpips_val null, no backbone needed. Otherwise a missing backbone stops the run (never a quiet fallback).
    lpips_every: int = 1
    # Extra training frames per step of which only the mouth crop (mouth_box with this margin) is
    # rendered, from the Gaussians that touch it: the full frame gives the audio path one sample per
    # step, these give it mouth_crops more at ~1/4 of a frame's cost each. Weighted like the box L1.
    # ted_lieu_hdtf_60s, as `speak` drives it: lip_corr 0.27 -> 0.47, amplitude 0.48 -> 0.79 (design.md).
    mouth_crops: int = 4
    mouth_crop_margin: float = 0.5
    # The crops are rendered with the AUs of another random frame: the mouth must follow the audio,
    # not the AUs. Measured on ted_lieu_hdtf_60s, the mouth box moved more when the AUs were set to
    # their median (2.2 levels) than when the audio was silenced (1.6): MediaPipe's eye and cheek
    # blendshapes carry some of the mouth's motion, which `speak` (neutral AUs) never has.
    mouth_crop_shuffle_aus: bool = True
    # Direct supervision of the audio path: a linear head on the audio code predicts the frame's
    # mouth opening (inner-lip gap over eye span, from the dataset's landmarks, standardised) for
    # `mouth_aux_batch` random training frames per step; dropped at export. The pixels reach the
    # audio path only through the rendered mouth; this gives it the opening itself. 0: off.
    lambda_mouth_aux: float = 0.1
    mouth_aux_batch: int = 32
    # Validation (PSNR, LPIPS and the audio health check of train/health.py) every this many steps
    # and at the end; each one rewrites train_metrics.json. 0: at the end only.
    val_every: int = 500
    health_frames: int = 32  # validation frames the health check renders (twice: audio, silence)
    seed: int = 0
    device: str = "auto"
    rasterizer: str = "auto"  # auto | gsplat | numba | torch (train/render.py)
    deform: DeformConfig = field(default_factory=DeformConfig)
    # None: DensifyConfig.for_run(iterations, device), the schedule `train --iterations N` runs.
    densify: DensifyConfig | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoopState:
    """What the loop carries from one step to the next besides the model and its optimisers; with
    them, what resume.pt holds. `step`: the steps done."""

    step: int
    sampler: np.random.Generator  # the frame order (and the mouth crops' frames)
    stats: GradStats  # densification's gradient statistics since the last densification
    neighbours: torch.Tensor | None = None  # L_emb_reg's k nearest neighbours, from the last densification
    losses: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # the validations so far
    train_seconds: float = 0.0  # of the steps done, summed over the runs that did them


@dataclass
class TrainResult:
    checkpoint: Checkpoint
    metrics: dict
    losses: list[float]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_8bit(image: torch.Tensor) -> np.ndarray:
    """[H,W,3] float -> float64 numpy of its 8-bit frame (what a user sees and `eval` measures)."""
    return to_uint8(image.detach().cpu().numpy().astype(np.float32)) / 255.0


class Trainer:
    """Owns the model, the optimiser and the loop. `run()` returns a TrainResult."""

    def __init__(self, data_dir: str | Path, cfg: TrainConfig, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        self.rasterizer = pick_rasterizer(cfg.rasterizer, self.device)
        # Found first, so that a missing file stops the run before the set-up (loaded below, where its
        # layers' random initialisation has always drawn from torch's generator).
        self.lpips_path = backbone_file(cfg.lpips_weights, NO_LPIPS) if cfg.lpips_every else None
        self.densify = cfg.densify or DensifyConfig.for_run(cfg.iterations, self.device)
        self.data_dir = Path(data_dir)
        train_set, val_set = TalkingDataset(data_dir, "train"), TalkingDataset(data_dir, "val")
        encoder, features = dataset_features(
            cfg.audio_encoder, FeatureSource(train_set.audio_path, cfg.hubert_path, self.data_dir / "aud_hu.npy")
        )
        self.audio_block = encoder.block()  # the block, not the encoder: HuBERT's weights need not stay loaded
        self.features = features
        dcfg = DeformConfig.from_dict({**cfg.deform.to_dict(), "feature_dim": features.shape[1]})
        self.train = FrameData(train_set, features, dcfg.window, self.device)
        self.val = FrameData(val_set, features, dcfg.window, self.device)
        self.gaussians = self._init_gaussians(train_set, dcfg.embed_dim).to(self.device)
        self.deform = DeformNet(dcfg).to(self.device)
        self.deform.audio_net.set_feature_stats(torch.as_tensor(features, device=self.device))
        self.lpips = self._load_lpips()
        self.health_inputs = self._health_inputs(train_set)
        self.optimizer = self._make_optimizer()
        self.mouth_targets = self._mouth_targets(train_set) if cfg.lambda_mouth_aux else None
        # Not part of DeformNet: the checkpoint and the bundle never see it.
        self.mouth_head = torch.nn.Linear(dcfg.audio_code, 1).to(self.device)
        torch.nn.init.zeros_(self.mouth_head.weight)
        torch.nn.init.zeros_(self.mouth_head.bias)
        self.network_opt = torch.optim.Adam([*self.deform.parameters(), *self.mouth_head.parameters()],
                                            lr=cfg.lr_network)

    def _init_gaussians(self, ds: TalkingDataset, embed_dim: int) -> GaussianModel:
        points = ds.points3d
        if points is None:
            points = _random_head_points(self.cfg.init_points, self.cfg.seed)
            self.log("no points3d.npy in the dataset: initialising from a random point cloud around the head")
        rng = np.random.default_rng(self.cfg.seed)
        n = min(self.cfg.init_points, self.cfg.max_init_points)
        if len(points) > n:
            points = points[rng.choice(len(points), n, replace=False)]
        return GaussianModel.from_points(points, embed_dim=embed_dim, seed=self.cfg.seed)

    def _mouth_targets(self, train_set: TalkingDataset) -> torch.Tensor | None:
        """Standardised mouth opening of every training frame (iBUG inner lips 62/66 over the outer
        eye corners 36/45, eval's measure), or None (with a note) when it does not vary."""
        opening = np.array([mouth_opening_68(train_set.landmarks(i)) for i in range(len(train_set))])
        if opening.std() < 1e-4:
            self.log("the training frames' mouth opening does not vary: no auxiliary mouth supervision")
            return None
        return torch.as_tensor((opening - opening.mean()) / opening.std(), dtype=torch.float32, device=self.device)

    def mouth_aux_loss(self, ids: np.ndarray) -> torch.Tensor:
        """MSE of the mouth head's prediction from the audio code of training frames `ids`."""
        code = self.deform.audio_net(self.train.windows[ids])
        return (self.mouth_head(code)[:, 0] - self.mouth_targets[ids]).square().mean()

    def _health_inputs(self, train_set: TalkingDataset) -> HealthInputs:
        """Up to cfg.health_frames validation frames, evenly spaced, and the silent window."""
        val = self.val
        ids = np.unique(np.linspace(0, len(val) - 1, min(self.cfg.health_frames, len(val))).round().astype(int))
        audio = load_audio(train_set.audio_path, 16000)
        quiet = quietest_frame(audio, train_set.aud_ids, train_set.fps)
        boxes = [val.dataset.mouth_box(int(i)) for i in ids]
        truth = [to_uint8(val.dataset.image(int(i)))[y0:y1, x0:x1]
                 for i, (x0, y0, x1, y1) in zip(ids, boxes)]
        return HealthInputs(
            windows=val.windows[ids], aus=val.aus[ids], viewmats=val.viewmats[ids], K=val.K,
            backgrounds=[val.torso_bg(int(i)) for i in ids], boxes=boxes, truth=truth,
            silent=self.train.windows[quiet : quiet + 1],
        )  # fmt: skip

    def check_health(self) -> dict:
        """The audio health figures (train/health.py) of the current model; warns when the mouth
        has stopped depending on the audio."""
        g = self.gaussians

        def render_fn(means, opacities, viewmat, K, background):
            return render(means, g.params["quats"], g.scales(), opacities, g.colors(), viewmat, K, background,
                          self.rasterizer)[0]  # fmt: skip

        health = audio_health(g, self.deform, self.health_inputs, render_fn)
        if audio_ignored(health):
            message = (
                f"TRAINING HEALTH: the mouth ignores the audio (it moves {health['mouth_audio_response']:.2f} "
                f"8-bit levels between speech and silence; audio code std {health['audio_code_std']}, "
                f"{health['dead_first_layer_units']} dead units): the avatar will not talk"
            )
            warnings.warn(message, stacklevel=2)
            self.log(message)
        return health

    def _load_lpips(self) -> LPIPS | None:
        """The LPIPS network, or None when the run turns LPIPS off (lpips_every=0); says which."""
        if self.lpips_path is None:
            self.log("LPIPS off (lpips_every=0, train --no-lpips): L1 terms only, lpips_val null")
            return None
        self.log(f"LPIPS on: AlexNet backbone {self.lpips_path}")
        return LPIPS(self.lpips_path).to(self.device)

    def _make_optimizer(self) -> torch.optim.Adam:
        c = self.cfg
        lrs = {
            "means": c.lr_means,
            "quats": c.lr_quats,
            "log_scales": c.lr_scales,
            "sh0": c.lr_colors,
            "opacity_logits": c.lr_opacity,
            "embeddings": c.lr_embeddings,
        }
        groups = [{"params": [self.gaussians.params[k]], "lr": lr, "name": k} for k, lr in lrs.items()]
        return torch.optim.Adam(groups, eps=1e-15)

    def _set_learning_rates(self, step: int) -> None:
        """Exponential decay of the means' and the network's learning rates over the run."""
        c = self.cfg
        t = step / max(c.iterations, 1)
        for group in self.optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = _log_lerp(c.lr_means, c.lr_means_final, t)
        for group in self.network_opt.param_groups:
            group["lr"] = _log_lerp(c.lr_network, c.lr_network_final, t)

    def render_frame(self, frames: FrameData, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (image [H,W,3], alpha [H,W], deformed means [N,3])."""
        return render_frame(self.gaussians, self.deform, frames, i, self.rasterizer)

    def mouth_crop_l1(self, i: int, au_frame: int | None = None) -> torch.Tensor:
        """L1 of training frame i's mouth crop, rendered from only the Gaussians that touch it (exact),
        with the AUs of training frame `au_frame` (default: i's own)."""
        c, g, frames = self.cfg, self.gaussians, self.train
        x0, y0, x1, y1 = frames.dataset.mouth_box(i, margin=c.mouth_crop_margin)
        K = crop_intrinsics(frames.K, x0, y0)
        j = i if au_frame is None else au_frame
        window, aus, viewmat = frames.windows[i : i + 1], frames.aus[j : j + 1], frames.viewmats[i]
        quats, scales = g.params["quats"], g.scales()
        with torch.no_grad():
            dmu, dalpha = self.deform(g.embeddings, window, aus)
            ids = gaussians_touching(g.means + dmu[0], quats, scales, g.opacities(dalpha[0]), viewmat, K,
                                     x1 - x0, y1 - y0)  # fmt: skip
        dmu, dalpha = self.deform(g.embeddings[ids], window, aus)
        image, _ = render(
            g.means[ids] + dmu[0], quats[ids], scales[ids], g.opacities(dalpha[0], ids), g.colors()[ids],
            viewmat, K, frames.torso_bg(i)[y0:y1, x0:x1], self.rasterizer,
        )  # fmt: skip
        return l1(image, frames.image(i)[y0:y1, x0:x1])

    def loss(self, step: int, i: int, neighbours: torch.Tensor | None,
             crops: list[tuple[int, int]] = (), aux_ids: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 12 on training frame i at `step` (LPIPS every cfg.lpips_every steps), plus the mouth-crop
        L1 of `crops` ((frame, AU frame) pairs) and the mouth head's loss on frames `aux_ids`
        -> (loss, deformed means with retained grad)."""
        c, g = self.cfg, self.gaussians
        image, _, means = self.render_frame(self.train, i)
        means.retain_grad()
        gt = self.train.image(i)
        box = self.train.dataset.mouth_box(i)
        loss = l1(image, gt)
        if c.lambda_mouth_l1:
            loss = loss + c.lambda_mouth_l1 * box_l1(image, gt, box)
        if self.lpips is not None and c.lpips_every and step % c.lpips_every == 0:
            loss = loss + c.lambda_face * lpips_face(self.lpips, image, gt)
            loss = loss + c.lambda_mouth * lpips_mouth(self.lpips, image, gt, box)
        if neighbours is not None and c.lambda_emb:
            rows = embedding_rows(len(g), c.emb_reg_rows, g.means.device)
            loss = loss + c.lambda_emb * embedding_smoothness(g.embeddings, g.means, neighbours, rows=rows)
        loss = loss + c.lambda_opacity * opacity_mean(g.opacities())
        if crops:
            loss = loss + c.lambda_mouth_l1 * sum(self.mouth_crop_l1(j, k) for j, k in crops) / len(crops)
        if aux_ids is not None and self.mouth_targets is not None:
            loss = loss + c.lambda_mouth_aux * self.mouth_aux_loss(aux_ids)
        return loss, means

    def run(self, out_dir: str | Path, progress: ProgressFn | None = None, resume: bool = False,
            cadence: Cadence = Cadence()) -> TrainResult:
        """Train cfg.iterations steps; write ckpt.pt, train_metrics.json and loss.png into out_dir, and
        meanwhile out_dir/resume.pt on `cadence` (removed once the run is done). resume: continue from
        out_dir/resume.pt; ResumeError when it is missing, unreadable or from another config or
        dataset. Every file is written atomically; a killed run's temporaries are removed first."""
        out_dir = Path(out_dir)
        state = self._start(out_dir, resume)
        start = last_save = time.perf_counter()
        seconds_before = state.train_seconds
        for step in range(state.step, self.cfg.iterations):
            counts = self.train_step(step, state)
            if counts and progress is None:
                self.log(f"step {step}: {counts}")
            state.train_seconds = seconds_before + time.perf_counter() - start
            if progress is not None:
                progress(state.step, self.cfg.iterations, {"loss": state.losses[-1], "gaussians": len(self.gaussians)})
            if state.step == self.cfg.iterations:
                break
            validated = bool(self.cfg.val_every) and state.step % self.cfg.val_every == 0
            if validated:
                state.history.append(self.validate(state.step))
                self._write_metrics(out_dir, {"validations": state.history, "finished": False})
            # After a validation too, so that a kill does not cost its renders.
            if validated or cadence.due(state.step, time.perf_counter() - last_save):
                self.save_resume(out_dir / RESUME_FILE, state)
                last_save = time.perf_counter()
        return self._finish(out_dir, state)

    def _start(self, out_dir: Path, resume: bool) -> LoopState:
        """Ready out_dir (a killed run's temporaries removed); -> the loop's state, fresh or resumed."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_partials(out_dir):
            self.log(f"removed {stale.name}, left by a killed run")
        path = out_dir / RESUME_FILE
        if resume:
            state = self._restore(path)
            self.log(f"resuming {path} at step {state.step} of {self.cfg.iterations}")
            return state
        if path.exists():
            self.log(f"{path}: from an earlier run, replaced by this one (--resume continues it)")
        return LoopState(step=0, sampler=np.random.default_rng(self.cfg.seed), stats=GradStats(len(self.gaussians)))

    def train_step(self, step: int, state: LoopState) -> dict[str, int] | None:
        """One optimisation step (and the densification due at it) from `state`, which it advances;
        -> densify_and_prune's counts when it densified."""
        c, d, rng = self.cfg, self.densify, state.sampler
        self._set_learning_rates(step)
        i = int(rng.integers(len(self.train)))
        crops = []
        if c.mouth_crops:
            ids = rng.integers(len(self.train), size=(c.mouth_crops, 2))
            crops = [(int(j), int(k) if c.mouth_crop_shuffle_aus else int(j)) for j, k in ids]
        aux_ids = rng.integers(len(self.train), size=c.mouth_aux_batch) if self.mouth_targets is not None else None
        loss, means = self.loss(step, i, state.neighbours, crops, aux_ids)
        self.optimizer.zero_grad(set_to_none=True)
        self.network_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._accumulate_grad_stats(state.stats, means, i)
        self.optimizer.step()
        self.network_opt.step()
        state.losses.append(loss.detach().item())
        state.step = step + 1
        if not (d.start <= step < d.stop and step % d.every == 0 and step > 0):
            return None
        counts = densify_and_prune(self.gaussians, self.optimizer, state.stats, d)
        # The paper computes the k nearest neighbours "only post densification": L_emb_reg starts at
        # the first densification (state.neighbours None until then). From step 0 it collapsed every z
        # (std 0.1 -> 0.005) before the network had learned anything: Adam moves z a full step along
        # the regulariser's gradient while the image gradient on z is still ~0 (zero-initialised
        # heads), and the dead network then never learned the mouth (held-out sync 0.05 vs 0.89).
        state.neighbours = knn_indices(self.gaussians.means, c.knn_k)
        return counts

    def _finish(self, out_dir: Path, state: LoopState) -> TrainResult:
        """Final validation, then ckpt.pt, train_metrics.json, loss.png; resume.pt removed last (a kill
        before that leaves a run that --resume finishes)."""
        c = self.cfg
        final = self.validate(c.iterations)
        metrics = {k: v for k, v in final.items() if k != "step"}
        metrics.update(train_seconds=round(state.train_seconds, 1), iterations=c.iterations,
                       gaussians=len(self.gaussians), validations=state.history + [final], finished=True)
        ckpt = Checkpoint(self.gaussians.cpu(), self.deform.cpu(), self._meta(metrics))
        ckpt.save(out_dir / "ckpt.pt")
        self._write_metrics(out_dir, metrics)
        save_loss_plot(state.losses, out_dir / "loss.png")
        (out_dir / RESUME_FILE).unlink(missing_ok=True)
        return TrainResult(ckpt, metrics, state.losses)

    def run_config(self) -> dict:
        """TrainConfig.to_dict with the densification schedule this run follows (resolved when None):
        what a resumed run must share with the one that wrote resume.pt."""
        return {**self.cfg.to_dict(), "densify": asdict(self.densify)}

    @cached_property
    def dataset_digest(self) -> str:
        """resume.dataset_digest of this run's dataset."""
        return dataset_digest(self.train.dataset, self.val.dataset, self.features)

    def save_resume(self, path: Path, state: LoopState) -> None:
        """Write the run's whole state after `state.step` steps to `path` (resume.py), atomically."""
        save_state(path, {
            "config": json.dumps(self.run_config()),
            "dataset_digest": self.dataset_digest,
            "data_dir": str(self.data_dir.resolve()),
            "step": state.step,
            "gaussians": {k: v.detach() for k, v in self.gaussians.params.items()},
            "deform": self.deform.state_dict(),
            "mouth_head": self.mouth_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "network_opt": self.network_opt.state_dict(),
            "grad_sum": state.stats.grad_sum,
            "grad_count": state.stats.count,
            "neighbours": state.neighbours,
            "losses": torch.tensor(state.losses, dtype=torch.float64),
            "history": json.dumps(state.history),
            "train_seconds": state.train_seconds,
            "rng": rng_state(state.sampler, self.device),
        })  # fmt: skip

    def _restore(self, path: Path) -> LoopState:
        """Load `path` (checked against this run) into the model and optimisers; -> the loop's state."""
        saved = load_state(path, self.run_config(), self.dataset_digest)
        try:
            self.gaussians = GaussianModel(saved["gaussians"]).to(self.device)
            self.deform.load_state_dict(saved["deform"])
            self.mouth_head.load_state_dict(saved["mouth_head"])
            # Densification changed the Gaussians' count: a fresh optimiser on the loaded rows.
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(saved["optimizer"])
            self.network_opt.load_state_dict(saved["network_opt"])
            stats = GradStats(len(self.gaussians))
            stats.grad_sum, stats.count = saved["grad_sum"], saved["grad_count"]
            state = LoopState(
                step=int(saved["step"]), sampler=restore_rng(saved["rng"], self.device), stats=stats,
                neighbours=saved["neighbours"],
                losses=saved["losses"].tolist(), history=json.loads(saved["history"]),
                train_seconds=float(saved["train_seconds"]),
            )  # fmt: skip
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ResumeError(f"{path}: does not fit this model ({reason})") from None
        return state

    def _accumulate_grad_stats(self, stats: GradStats, means: torch.Tensor, i: int) -> None:
        """View-space positional gradient per Gaussian, in the units 3DGS thresholds (NDC)."""
        if means.grad is None:
            return
        vm = self.train.viewmats[i]
        z = (means.detach() @ vm[:3, :3].T + vm[:3, 3])[:, 2].clamp_min(1e-3)
        fx = self.train.K[0, 0]
        grad_px = means.grad.norm(dim=-1) * z / fx  # |dL/dmean2d| in 1/pixels
        ndc = grad_px * 0.5 * self.train.dataset.width
        stats.add(ndc.cpu(), (means.grad.abs().sum(-1) > 0).cpu())

    def validate(self, step: int) -> dict:
        """evaluate() and check_health() at `step`, logged in one line."""
        record = {"step": step, **self.evaluate(), "audio_health": self.check_health()}
        h = record["audio_health"]
        self.log(f"val @ {step}: PSNR {record['psnr_val']:.2f} dB, mouth moves {h['mouth_audio_response']:.2f} levels "
                 f"with the audio, mouth PSNR {h['mouth_psnr']:.2f} vs {h['mouth_psnr_silent']:.2f} dB silent")
        return record

    @staticmethod
    def _write_metrics(out_dir: Path, metrics: dict) -> None:
        atomic_write(out_dir / "train_metrics.json", json.dumps(metrics, indent=2).encode())

    @torch.no_grad()
    def evaluate(self) -> dict:
        """PSNR and LPIPS on the validation split (the last 1/11 of frames), on 8-bit frames as `eval`."""
        psnrs, lp = [], []
        for i in range(len(self.val)):
            image, _, _ = self.render_frame(self.val, i)
            pred, gt = to_8bit(image), to_8bit(self.val.image(i))
            psnrs.append(psnr(pred, gt))
            if self.lpips is not None:
                lp.append(lpips_distance(self.lpips, pred.astype(np.float32), gt.astype(np.float32)))
        return {
            "psnr_val": round(float(np.mean(psnrs)), 3),
            "lpips_val": round(float(np.mean(lp)), 4) if lp else None,
            "val_frames": len(self.val),
        }

    def _meta(self, metrics: dict) -> dict:
        meta = dataset_meta(self.train.dataset, self.audio_block, self.deform.cfg)
        meta["train"] = {k: v for k, v in self.cfg.to_dict().items() if k not in ("deform", "densify")}
        meta["metrics"] = metrics
        return meta


def mouth_opening_68(landmarks: np.ndarray) -> float:
    """Inner-lip gap (iBUG 62/66) over the outer-eye-corner distance (36/45) of 68 landmarks [68, 2]."""
    gap = np.linalg.norm(landmarks[62] - landmarks[66])
    return float(gap / max(np.linalg.norm(landmarks[36] - landmarks[45]), 1e-6))


def dataset_meta(ds: TalkingDataset, audio: dict, deform_cfg: DeformConfig) -> dict:
    """What export needs to know about the training data: image size, fps, intrinsics, audio
    features (audio: the encoder's `AudioEncoder.block()`), AU statistics (neutral pose, blink
    peak and rate for generated blinks)."""
    blink = ds.aus[:, BLINK_INDEX]
    return {
        "data_dir": str(Path(ds.root).resolve()),
        "width": ds.width,
        "height": ds.height,
        "fps": ds.fps,
        "K": ds.K.tolist(),
        "audio": {**audio, "window": deform_cfg.window},
        "aus": {
            "neutral": np.median(ds.aus, axis=0).round(4).tolist(),
            "blink_peak": float(np.percentile(blink, 99)),
            "blink_rate_hz": _blink_rate(blink, ds.fps),
        },
    }


def _log_lerp(start: float, end: float, t: float) -> float:
    """exp((1 - t) log start + t log end): start at t = 0, end at t = 1."""
    return math.exp((1 - t) * math.log(start) + t * math.log(end))


def _blink_rate(au45: np.ndarray, fps: float) -> float:
    """Blinks per second: rising crossings of half the 99th percentile."""
    peak = np.percentile(au45, 99)
    if peak <= 0.5:
        return 0.0
    above = au45 > peak / 2
    rises = int(np.count_nonzero(above[1:] & ~above[:-1]))
    return round(rises / (len(au45) / fps), 4)


def _random_head_points(n: int, seed: int) -> np.ndarray:
    """[n, 6]: points in a head-sized ellipsoid at the origin with grey colour (no dense cloud given)."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    xyz = dirs * np.array([0.09, 0.12, 0.1]) * rng.uniform(0.8, 1.0, size=(n, 1))
    return np.concatenate([xyz, np.full((n, 3), 0.5)], axis=1).astype(np.float32)


def save_loss_plot(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 50:
        k = 50
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k - 1, len(losses)), smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (eq. 12)")
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write(path, png.getvalue())
