"""`embedtalk-sdk`: the command line. Each command is a thin shell over a library function."""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

app = typer.Typer(
    help="EmbedTalk SDK: train talking-head avatars, export small bundles, play them back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Emoji codes off: a colon-separated hex fingerprint holds ":CD:", which rich would print as a disc.
console = Console(stderr=True, emoji=False)
# Model files not given by an option are found as embedtalk_sdk/model_files.py says.
MODELS_DEFAULT = "[default: in $EMBEDTALK_MODELS, else in ~/.cache/embedtalk/models]"


def say(message: str) -> None:
    """Print a library's line as written: no markup, emoji or highlighting read into it."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator:
    """A rich progress bar; yields update(done, total, info=None)."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total, info="")
        reported = [0]  # tenths of the work already written as a plain line

        def update(done: int, total_: int, info: Optional[dict] = None) -> None:
            text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (info or {}).items())
            bar.update(task, completed=done, total=total_, info=text)
            # A log file gets no live bar: a line every tenth of the work instead.
            tenth = int(10 * done / max(total_, 1))
            if not console.is_terminal and tenth > reported[0]:
                reported[0] = tenth
                elapsed = bar.tasks[0].elapsed or 0.0
                console.print(f"{description}: {done}/{total_} ({elapsed:.0f} s) {text}", highlight=False)

        yield update


def _fail(message: str) -> None:
    one_line = " ".join(message.split())  # library messages may carry newlines (torch's do)
    console.print(f"[red]error:[/red] {escape(one_line)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


class LibraryDefault:
    """An option's default read from where the library defines it: a dataclass field, a function's
    parameter or (name None) a module constant, optionally converted to the option's unit. Click
    calls it when the command runs and `--help` prints it, so the value is written once and the
    CLI imports the training side only for the commands that use it."""

    def __init__(self, module: str, owner: str, name: str | None = None,
                 convert: Callable[[Any], Any] | None = None) -> None:
        self.module, self.owner, self.name, self.convert = module, owner, name, convert

    def __call__(self) -> Any:
        obj: Any = importlib.import_module(self.module)
        for part in self.owner.split("."):
            obj = getattr(obj, part)
        if self.name is None:
            value = obj
        elif dataclasses.is_dataclass(obj):
            value = {f.name: f.default for f in dataclasses.fields(obj)}[self.name]
        else:
            value = inspect.signature(obj).parameters[self.name].default
        return value if self.convert is None else self.convert(value)

    def __str__(self) -> str:
        try:
            return str(self())
        except ImportError:  # the command's extra is not installed; its --help still says where to look
            return f"{self.owner}.{self.name}" if self.name else self.owner


TRAIN = "embedtalk_sdk.train.trainer"
SYNTH = "embedtalk_sdk.synthetic.synth"
SERVE = "embedtalk_sdk.serve.app"
SESSION = "embedtalk_sdk.serve.session"
WORKER = "embedtalk_sdk.integrations.livekit_worker"
EXPORT = "embedtalk_sdk.export.exporter"
RUNTIME = "embedtalk_sdk.runtime.avatar"
BENCH = "embedtalk_sdk.runtime.bench"
PREPROCESS = "embedtalk_sdk.preprocess.preprocess"
MB = 1024 * 1024
# The backends `auto` tries, fastest first (runtime/backends/registry.py; tests/test_defaults.py keeps it true).
BACKEND_HELP = "auto | tensorrt | tensorrt-rtx | cuda | onnxruntime | torch"


@app.command()
def synth(
    out: Path = typer.Option(..., "-o", "--out", help="dataset folder to write"),
    seconds: float = typer.Option(LibraryDefault(SYNTH, "synthesize_dataset", "seconds"), help="clip length"),
    size: int = typer.Option(LibraryDefault(SYNTH, "synthesize_dataset", "size"),
                             help="frame width and height in pixels"),
    seed: int = typer.Option(LibraryDefault(SYNTH, "synthesize_dataset", "seed")),
) -> None:
    """Write the built-in synthetic speaker as a dataset (TalkingGaussian layout)."""
    from embedtalk_sdk.synthetic.synth import synthesize_dataset

    with progress_bar("synth", int(seconds * 25)) as update:
        synthesize_dataset(out, seconds=seconds, size=size, seed=seed, progress=lambda d, t: update(d, t))
    say(f"dataset written to {out}")


def _train_config(max_gaussians: Optional[int] = None, no_lpips: bool = False, **options: Any):
    """TrainConfig(**options) (TrainConfig's own defaults for the rest), densifying up to `max_gaussians`;
    no_lpips: LPIPS off (lpips_every=0, TrainConfig's one switch for it)."""
    from embedtalk_sdk.train.strategy import DensifyConfig
    from embedtalk_sdk.train.trainer import TrainConfig, pick_device

    if no_lpips:
        if options.get("lpips_weights"):
            _fail("--no-lpips with --lpips-weights: give one of them")
        options["lpips_every"] = 0
    cfg = TrainConfig(**options)
    if max_gaussians is None:
        return cfg
    # The schedule TrainConfig(iterations=N) gets too (None: the Trainer derives it the same way).
    densify = DensifyConfig.for_run(cfg.iterations, pick_device(cfg.device), max_gaussians)
    return dataclasses.replace(cfg, densify=densify)


def run_training(data: Path, out: Path, cfg, resume: bool = False, checkpoint_seconds: Optional[float] = None) -> dict:
    """Train with a progress bar; returns the metrics. checkpoint_seconds: None, `Cadence`'s."""
    from embedtalk_sdk.train.resume import Cadence
    from embedtalk_sdk.train.trainer import Trainer

    trainer = Trainer(data, cfg, log=say)
    console.print(
        f"training on {trainer.device} ({trainer.rasterizer} rasteriser), "
        f"{len(trainer.gaussians)} Gaussians, {len(trainer.train)} train / {len(trainer.val)} val frames"
    )
    with progress_bar("train", cfg.iterations) as update:
        cadence = Cadence() if checkpoint_seconds is None else Cadence(seconds=checkpoint_seconds)
        result = trainer.run(out, progress=update, resume=resume, cadence=cadence)
    return result.metrics


@app.command()
def train(
    data: Path = typer.Argument(..., help="dataset folder (from `synth` or `preprocess`)"),
    out: Path = typer.Option(..., "-o", "--out", help="run folder: ckpt.pt, loss.png, train_metrics.json"),
    iterations: int = typer.Option(LibraryDefault(TRAIN, "TrainConfig", "iterations")),
    audio_encoder: str = typer.Option(
        LibraryDefault(TRAIN, "TrainConfig", "audio_encoder"),
        help="phonetic (phone posteriors of a US English model + log-mel) | phonetic-posteriors "
             "(the posteriors alone) | mel | hubert | features (aud_hu.npy)"),
    hubert_path: Optional[str] = typer.Option(None, help="local HuBERT checkpoint folder (transformers)"),
    lpips_weights: Optional[str] = typer.Option(None, help=f"AlexNet features state dict for LPIPS {MODELS_DEFAULT}"),
    no_lpips: bool = typer.Option(False, "--no-lpips", help="train without the LPIPS terms (no backbone needed; "
                                  "lpips_val null)"),
    init_points: int = typer.Option(LibraryDefault(TRAIN, "TrainConfig", "init_points"),
                                    help="Gaussians taken from the dense point cloud"),
    device: str = typer.Option(LibraryDefault(TRAIN, "TrainConfig", "device"), help="auto | cpu | cuda"),
    rasterizer: str = typer.Option(LibraryDefault(TRAIN, "TrainConfig", "rasterizer"),
                                   help="auto | gsplat (CUDA) | numba (CPU) | torch (reference, slow)"),
    max_gaussians: Optional[int] = typer.Option(
        None, help="densification stops growing here (default: 15k on a CPU, where a step stays < 0.3 s; 60k on CUDA)"),
    val_every: int = typer.Option(LibraryDefault(TRAIN, "TrainConfig", "val_every"),
                                  help="validate (PSNR, LPIPS, audio health) every N steps; 0: at the end"),
    seed: int = typer.Option(LibraryDefault(TRAIN, "TrainConfig", "seed"),
                             help="seeds the initial cloud, the network and the frame order"),
    mouth_crops: int = typer.Option(LibraryDefault(TRAIN, "TrainConfig", "mouth_crops"),
                                    help="extra frames per step trained on their mouth crop alone (0: off)"),
    resume: bool = typer.Option(False, help="continue the killed run in OUT from OUT/resume.pt (same options)"),
    checkpoint_seconds: float = typer.Option(LibraryDefault("embedtalk_sdk.train.resume", "Cadence", "seconds"),
                                             help="write OUT/resume.pt every this many seconds of training"),
) -> None:
    """Train an avatar on a dataset folder."""
    from embedtalk_sdk.train.resume import RESUME_FILE, require_state

    if not data.is_dir():
        _fail(f"{data}: no such dataset folder")
    if mouth_crops < 0:
        _fail(f"--mouth-crops {mouth_crops}: give 0 or more")
    cfg = _train_config(max_gaussians, no_lpips, iterations=iterations, audio_encoder=audio_encoder,
                        hubert_path=hubert_path, lpips_weights=lpips_weights, init_points=init_points, device=device,
                        seed=seed, rasterizer=rasterizer, val_every=val_every, mouth_crops=mouth_crops)
    if resume:
        require_state(out / RESUME_FILE)  # before the seconds of set-up; a ResumeError ends in one line
    metrics = run_training(data, out, cfg, resume=resume, checkpoint_seconds=checkpoint_seconds)
    console.print_json(json.dumps(metrics))


@app.command("export")
def export_cmd(
    ckpt: Path = typer.Argument(..., help="RUN/ckpt.pt"),
    out: Path = typer.Option(..., "-o", "--out", help="bundle path: a folder x.etk, or x.zip"),
    data: Optional[Path] = typer.Option(None, help="training dataset (default: the one the checkpoint names)"),
    track_frames: int = typer.Option(LibraryDefault(EXPORT, "export_bundle", "track_frames"),
                                     help="frames of camera / torso track to ship"),
    engine: Optional[str] = typer.Option(None, help="also build engines: tensorrt-rtx | tensorrt"),
    target: str = typer.Option(LibraryDefault(EXPORT, "export_bundle", "targets", ",".join),
                               help="compute capabilities for tensorrt-rtx engines"),
    hubert_path: Optional[Path] = typer.Option(None, help="HuBERT avatars: the local HuBERT checkpoint "
                                               "[default: the path recorded at training]"),
    shared_encoder: bool = typer.Option(False, help="HuBERT avatars: write the ONNX audio encoder beside "
                                        "the bundle (one file for many avatars) instead of into it"),
    track_quality: int = typer.Option(LibraryDefault(EXPORT, "export_bundle", "track_quality"), min=0, max=51,
                                      help="torso track H.264 quality factor: 0 lossless, 14 ~50 dB, higher is "
                                           "smaller"),
    raw_track: bool = typer.Option(False, help="store the torso track as raw frames (tens to hundreds of MB)"),
    table_dtype: str = typer.Option(LibraryDefault(EXPORT, "export_bundle", "table_dtype"),
                                    help="per-Gaussian network table: float16 | float32"),
) -> None:
    """Bake a checkpoint into a portable bundle (its size by part is printed at the end)."""
    from embedtalk_sdk.plugins.cuda.engines import EngineBuildError, parse_targets
    from embedtalk_sdk.export.exporter import export_bundle

    try:
        export_bundle(ckpt, out, data, track_frames, log=say,
                      engine=engine, targets=parse_targets(target), hubert_path=hubert_path,
                      shared_encoder=shared_encoder, track_quality=None if raw_track else track_quality,
                      table_dtype=table_dtype)  # fmt: skip
    except EngineBuildError as e:  # a RuntimeError: the other failures end in _one_line_errors
        _fail(str(e))


@app.command()
def speak(
    bundle: Path = typer.Argument(..., help="avatar bundle (.etk folder or .zip)"),
    audio: Path = typer.Argument(..., help="speech: wav/flac/mp3/... (resampled to 16 kHz mono)"),
    out: Path = typer.Option(Path("out.mp4"), "-o", "--out", help="mp4 to write (H.264 + AAC)"),
    backend: str = typer.Option(LibraryDefault(RUNTIME, "Avatar.load", "backend"), help=BACKEND_HELP),
    encoder_file: Optional[Path] = typer.Option(None, help="a shared audio encoder file (export "
                                                "--shared-encoder) [default: the one beside the bundle]"),
) -> None:
    """Render a talking video of an avatar saying AUDIO."""
    from embedtalk_sdk.runtime.avatar import Avatar

    avatar = Avatar.load(bundle, backend=backend, encoder_file=encoder_file)
    say(f"backend: {avatar.backend_name}")
    with progress_bar("speak", 1) as update:
        avatar.speak(audio, out=out, progress=lambda done, total: update(done, total))
    say(f"wrote {out}")


@app.command()
def bench(
    bundle: Path = typer.Argument(..., help="avatar bundle"),
    backend: str = typer.Option(LibraryDefault(BENCH, "run_bench", "backend"),
                                help="all (every installed backend) | tensorrt | tensorrt-rtx | cuda | onnxruntime | "
                                     "torch | gsplat-torch (a GPU baseline, never picked by auto)"),
    frames: int = typer.Option(LibraryDefault(BENCH, "run_bench", "n_frames"), help="frames to time per backend"),
    max_seconds: float = typer.Option(LibraryDefault(BENCH, "run_bench", "max_seconds"),
                                      help="stop timing a backend after this long (slow references, big avatars)"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the report as JSON here"),
    profile: bool = typer.Option(False, "--profile", help="split a CPU frame's time into its stages instead "
                                 "(network, projection, binning, blending, ...; runtime/design.md)"),
) -> None:
    """Frames per second and latency per backend, with ratios to a baseline timed in the same run
    (torch, or onnxruntime where torch is not installed)."""
    from embedtalk_sdk.runtime.bench import format_profile, profile_backend, run_bench, save_chart

    if profile:
        report = profile_backend(bundle, "onnxruntime" if backend == "all" else backend, frames)
        if out:
            out.write_text(json.dumps(report, indent=2))
        print(format_profile(report))
        return
    report = run_bench(bundle, backend, frames, log=say, max_seconds=max_seconds)
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text)
        try:
            save_chart(report, out.with_suffix(".png"))
        except ImportError:
            console.print("no chart: matplotlib is not installed (pip install matplotlib)")
    print(text)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "-o", "--out", help="folder for demo.mp4, avatar.etk, metrics.json"),
    seconds: float = typer.Option(LibraryDefault(SYNTH, "synthesize_dataset", "seconds"),
                                  help="length of the synthetic training clip"),
    size: int = typer.Option(LibraryDefault(SYNTH, "synthesize_dataset", "size"), help="frame size"),
    iterations: int = typer.Option(1500, help="training iterations"),
    init_points: int = typer.Option(6000),
    max_gaussians: int = typer.Option(12_000, help="densification cap: the CPU training budget"),
    lpips_weights: Optional[str] = typer.Option(None, help=f"AlexNet features state dict for LPIPS {MODELS_DEFAULT}"),
    no_lpips: bool = typer.Option(False, "--no-lpips", help="train without the LPIPS terms (no backbone needed; "
                                  "lpips_val null)"),
    seed: int = typer.Option(0, help="training seed (the synthetic speaker and the new sentence stay the same)"),
) -> None:
    """The whole chain on the built-in synthetic speaker: synth -> train -> export -> speak."""
    from embedtalk_sdk.demo import run_demo

    # No mouth crops: the synthetic speaker's mouth is learned without them (5 seeds, README), and
    # they would double the steps' cost in a demo meant to finish within 10 minutes.
    cfg = _train_config(max_gaussians, no_lpips, iterations=iterations, lpips_weights=lpips_weights,
                        init_points=init_points, seed=seed, mouth_crops=0)
    metrics = run_demo(out, seconds=seconds, size=size, train_config=cfg, progress_bar=progress_bar,
                       train_fn=run_training, log=say)  # fmt: skip
    console.print_json(json.dumps(metrics))


# ---------------------------------------------------------------------------------------------
# preprocess / eval (issue 5): real speakers.


@contextmanager
def _step_bars() -> Iterator:
    """One rich progress bar per preprocessing step; yields update(step, done, total)."""
    with Progress(
        TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    ) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield update


@app.command()
def preprocess(
    video: Path = typer.Argument(..., help="a 1-5 minute video of one person talking to a static camera"),
    out: Path = typer.Option(..., "-o", "--out", help="dataset folder to write (re-running resumes)"),
    face_model: Optional[Path] = typer.Option(None, help=f"MediaPipe face_landmarker.task {MODELS_DEFAULT}"),
    segmentation_model: Optional[Path] = typer.Option(
        None, help=f"MediaPipe selfie_segmentation.tflite {MODELS_DEFAULT}"),
    audio: Optional[Path] = typer.Option(None, help="speech track to use instead of the video's own"),
    audio_shift: float = typer.Option(
        LibraryDefault(PREPROCESS, "PreprocessOptions", "audio_shift"),
        help="seconds to move the speech (negative: earlier) for clips out of sync; turns the automatic sync off"),
    keep_audio_sync: bool = typer.Option(
        False, "--keep-audio-sync", help="keep the sound as it is when it looks out of sync (only warn)"),
    hubert_path: Optional[str] = typer.Option(None, help="local HuBERT checkpoint: also write aud_hu.npy"),
    points: int = typer.Option(LibraryDefault(PREPROCESS, "PreprocessOptions", "points"),
                               help="size of the initial point cloud points3d.npy"),
    pose_smoothing: float = typer.Option(LibraryDefault(PREPROCESS, "PreprocessOptions", "pose_smoothing"),
                                         help="temporal smoothing of the head pose (Gaussian sigma, frames)"),
) -> None:
    """Turn a talking-portrait video into a dataset folder (TalkingGaussian layout), offline."""
    from embedtalk_sdk.preprocess.preprocess import PreprocessOptions
    from embedtalk_sdk.preprocess.preprocess import preprocess as run_preprocess

    opts = PreprocessOptions(face_model=str(face_model) if face_model else None,
                             segmentation_model=str(segmentation_model) if segmentation_model else None,
                             audio=str(audio) if audio else None, audio_shift=audio_shift,
                             keep_audio_sync=keep_audio_sync, hubert_path=hubert_path, points=points,
                             pose_smoothing=pose_smoothing)  # fmt: skip
    with _step_bars() as update:
        record = run_preprocess(video, out, opts, progress=update, log=say)
    for warning in record["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    steps = {k: f"{v['status']}, {v['seconds']} s" for k, v in record["steps"].items()}
    console.print_json(json.dumps(steps))
    say(f"dataset written to {out} (log: {out / 'preprocess_log.json'})")


@app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="RUN/ckpt.pt, or an avatar bundle (.etk / .zip) with --data"),
    data: Optional[Path] = typer.Option(None, help="dataset folder [default: the one the checkpoint names]"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="folder for eval.json, side_by_side.mp4, frames"),
    face_model: Optional[Path] = typer.Option(None, help=f"face_landmarker.task for LMD / sync {MODELS_DEFAULT}"),
    lpips_weights: Optional[str] = typer.Option(None, help=f"AlexNet features state dict for LPIPS {MODELS_DEFAULT}"),
    backend: str = typer.Option(LibraryDefault("embedtalk_sdk.eval", "evaluate", "backend"),
                                help=f"bundles: {BACKEND_HELP}"),
    frames: int = typer.Option(LibraryDefault("embedtalk_sdk.eval", "evaluate", "max_frames"),
                               help="evaluate only the first N validation frames (0: all)"),
) -> None:
    """PSNR / SSIM / LPIPS / LMD / audio-visual sync on the validation split, plus a side-by-side video."""
    from embedtalk_sdk.eval import evaluate

    with progress_bar("eval", 1) as update:
        report = evaluate(model, data=data, out=out, face_model=face_model, lpips_weights=lpips_weights,
                          backend=backend, max_frames=frames, progress=lambda d, t: update(d, t))  # fmt: skip
    console.print_json(json.dumps(report["metrics"]))
    if report["metrics"]["lpips"] is None:
        say(f"note: {report['notes']['lpips']}")
    say(f"wrote {report['files']['json']} and {report['files']['video']}")


@app.command()
def serve(
    avatars: Path = typer.Argument(..., help="one bundle, or a folder of bundles (clients choose by id)"),
    host: str = typer.Option(LibraryDefault(SERVE, "run", "host"),
                             help="address to bind; 0.0.0.0 exposes the server to the network"),
    port: int = typer.Option(LibraryDefault(SERVE, "run", "port"), help="TCP port"),
    max_sessions: Optional[int] = typer.Option(None, help="sessions at once [default: what this machine "
                                               "holds at the avatars' fps, measured at start-up]"),
    backend: str = typer.Option(LibraryDefault(SERVE, "run", "backend"), help=BACKEND_HELP),
    tts: str = typer.Option(LibraryDefault(SERVE, "run", "tts"), help="espeak (offline, espeakng-loader) | none"),
    max_upload_mb: float = typer.Option(LibraryDefault(SERVE, "Limits", "max_upload_bytes", lambda b: b / MB),
                                        help="largest audio upload"),
    max_upload_seconds: float = typer.Option(LibraryDefault(SERVE, "Limits", "max_upload_s"),
                                             help="longest audio upload"),
    lookahead_rows: int = typer.Option(LibraryDefault(SESSION, "LOOKAHEAD_ROWS"),
                                       help="audio rows past a frame's centre to wait for (0-7 for the "
                                       "16-row window; 20 ms each). 4 meets the 120 ms latency goal at 47 dB "
                                       "PSNR on the moving face against speak's frames; 7: exactly speak's"),
    token: Optional[str] = typer.Option(None, envvar="EMBEDTALK_TOKEN", show_default=False,
                                        help="the secret every route but /health needs (>= 16 characters; prefer "
                                        "the environment variable: a command line is visible to other users); "
                                        "required for a non-loopback --host unless --no-auth"),
    no_auth: bool = typer.Option(False, "--no-auth", help="serve a network address without a token: anyone who "
                                 "reaches the port can open sessions"),
    tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate (chain) for HTTPS"),
    tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --tls-cert"),
    self_signed: bool = typer.Option(False, "--self-signed", help="HTTPS with a certificate made at start for "
                                     "this host's names (prints its fingerprint): for trying it on a LAN"),
    http_redirect_port: Optional[int] = typer.Option(None, help="also listen for plain HTTP on this port and "
                                                     "redirect it to HTTPS"),
    ice_server: Optional[list[str]] = typer.Option(None, envvar="EMBEDTALK_ICE_SERVERS", show_default=False,
                                                   help="STUN/TURN server for WebRTC behind NAT, repeatable: "
                                                   "stun:HOST:PORT or turn:USER:SECRET@HOST:PORT[?transport=tcp]"),
    allow_origin: Optional[list[str]] = typer.Option(None, help="another Origin allowed to drive sessions "
                                                     "(a reverse proxy that rewrites Host), repeatable"),
    requests_per_second: float = typer.Option(LibraryDefault(SERVE, "Limits", "requests_per_s"),
                                              help="requests per second per client address (429 beyond)"),
    sessions_per_minute: float = typer.Option(LibraryDefault(SERVE, "Limits", "sessions_per_min"),
                                              help="session creations per minute per client address"),
) -> None:
    """Live avatars in the browser over WebRTC: a web page at /, a session API, GET /metrics."""
    try:
        from embedtalk_sdk.serve.app import Exposure, Limits, run
    except ImportError as e:
        _fail(f"serve needs the serve extra ({e.name} is missing): pip install -e \".[serve]\"")
    if tts not in ("espeak", "none"):
        _fail(f"--tts {tts!r}: choose espeak or none")
    if max_sessions is not None and max_sessions < 1:
        _fail("--max-sessions must be at least 1")
    limits = Limits(max_upload_bytes=int(max_upload_mb * MB), max_upload_s=float(max_upload_seconds),
                    requests_per_s=requests_per_second, request_burst=max(1, int(2 * requests_per_second)),
                    sessions_per_min=sessions_per_minute)
    exposure = Exposure(token=token or None, no_auth=no_auth, tls_cert=tls_cert, tls_key=tls_key,
                        self_signed=self_signed, http_redirect_port=http_redirect_port,
                        ice_servers=tuple(ice_server or ()), allow_origins=tuple(allow_origin or ()))
    run(str(avatars), host=host, port=port, max_sessions=max_sessions, backend=backend, tts=tts, limits=limits,
        lookahead_rows=lookahead_rows, log_fn=say, exposure=exposure)


@app.command("livekit-worker")
def livekit_worker(
    avatars: Path = typer.Argument(..., help="one bundle, or a folder of bundles (agents choose by id)"),
    url: Optional[str] = typer.Option(None, envvar="LIVEKIT_URL", help="the LiveKit server (ws:// or wss://)"),
    api_key: Optional[str] = typer.Option(None, envvar="LIVEKIT_API_KEY", show_default=False),
    api_secret: Optional[str] = typer.Option(None, envvar="LIVEKIT_API_SECRET", show_default=False,
                                             help="prefer the environment variable: a command line is visible"),
    agent_name: str = typer.Option(LibraryDefault(WORKER, "run_worker", "agent_name"),
                                   help="the name agents dispatch (AvatarSession(agent_name=))"),
    max_sessions: Optional[int] = typer.Option(None, help="sessions at once [default: what this machine holds at "
                                               "the avatars' fps, from their measured frame time]"),
    utilisation: float = typer.Option(LibraryDefault(WORKER, "run_worker", "utilisation"),
                                      help="the load (share of this machine) at which the worker is full"),
    backend: str = typer.Option(LibraryDefault(WORKER, "run_worker", "backend"), help=BACKEND_HELP),
    lookahead_rows: int = typer.Option(LibraryDefault(WORKER, "run_worker", "lookahead_rows"),
                                       help="audio rows past a frame's centre to wait for, as serve's"),
    port: int = typer.Option(LibraryDefault(WORKER, "run_worker", "port"), help="the worker's health-check HTTP port"),
) -> None:
    """An avatar worker for LiveKit Agents: registers with the LiveKit server, is dispatched into rooms by
    agents' AvatarSession(avatar_id=..., worker=True), reports its load so LiveKit scales out."""
    try:
        from embedtalk_sdk.integrations.livekit_worker import run_worker
    except ImportError as e:
        _fail(f"livekit-worker needs the livekit extra ({e.name} is missing): pip install -e \".[livekit]\"")
    if max_sessions is not None and max_sessions < 1:
        _fail("--max-sessions must be at least 1")
    if not 0 < utilisation <= 1:
        _fail("--utilisation must be in (0, 1]")
    run_worker(str(avatars), url=url, api_key=api_key, api_secret=api_secret, agent_name=agent_name,
               backend=backend, max_sessions=max_sessions, utilisation=utilisation,
               lookahead_rows=lookahead_rows, port=port)


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every command ends a failure it can name with one line: what, which file, what to do.

    The SDK's errors (BundleError, AudioError, CheckpointError, ... all ValueErrors) and the
    operating system's (a missing folder, no permission, a full disk) become `error: ...` and exit
    code 2; anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValueError as e:
            _fail(str(e))
        except OSError as e:
            where = e.filename if e.filename is not None else ""
            _fail(f"{where}: {e.strerror or e}" if where else str(e))
        except MemoryError:
            _fail("out of memory: the input is larger than this machine can hold")

    return run


for _info in app.registered_commands:
    _info.callback = _one_line_errors(_info.callback)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
