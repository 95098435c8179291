"""Model files are found one way everywhere (embedtalk_sdk/model_files.py): an explicit path, then
$EMBEDTALK_MODELS, then the user cache; found nowhere, the error names all three. Training never
drops LPIPS because its backbone is missing: that stops the run unless LPIPS is turned off."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import model_or_skip
from embedtalk_sdk import EmbedTalkError
from embedtalk_sdk.model_files import (
    ENV_VAR, FACE_LANDMARKER, LPIPS_BACKBONE, SELFIE_SEGMENTATION, ModelFileError, cache_dir, model_file,
)


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty $EMBEDTALK_MODELS folder and an empty user cache (XDG_CACHE_HOME) for one test."""
    env, xdg = tmp_path / "env", tmp_path / "xdg"
    env.mkdir()
    monkeypatch.setenv(ENV_VAR, str(env))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    cache = xdg / "embedtalk" / "models"
    cache.mkdir(parents=True)
    return {"env": env, "cache": cache, "option": tmp_path / "given"}


def _put(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(folder.name.encode())
    return folder / name


def test_option_beats_environment_beats_cache(places):
    in_cache = _put(places["cache"], FACE_LANDMARKER)
    assert cache_dir() == places["cache"]
    assert model_file(FACE_LANDMARKER) == in_cache
    in_env = _put(places["env"], FACE_LANDMARKER)
    assert model_file(FACE_LANDMARKER) == in_env
    given = _put(places["option"], FACE_LANDMARKER)
    assert model_file(FACE_LANDMARKER, given, "--face-model") == given
    assert model_file(FACE_LANDMARKER, str(given)) == given


def test_cache_default_is_home_cache_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "embedtalk" / "models"


def test_not_found_names_the_file_and_all_three_places(places, monkeypatch):
    with pytest.raises(ModelFileError) as e:
        model_file(SELFIE_SEGMENTATION, None, "--segmentation-model")
    text = str(e.value)
    assert SELFIE_SEGMENTATION in text and "--segmentation-model" in text
    assert str(places["env"] / SELFIE_SEGMENTATION) in text and str(places["cache"] / SELFIE_SEGMENTATION) in text
    assert f"set {ENV_VAR}" in text  # says how to fix it
    assert isinstance(e.value, EmbedTalkError) and isinstance(e.value, ValueError)
    assert isinstance(e.value, FileNotFoundError)
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(ModelFileError, match=rf"\${ENV_VAR}: not set"):
        model_file(SELFIE_SEGMENTATION)


def test_a_given_path_is_never_replaced(places):
    _put(places["env"], FACE_LANDMARKER)
    with pytest.raises(ModelFileError, match="given by --face-model"):
        model_file(FACE_LANDMARKER, places["option"] / "typo.task", "--face-model")


def test_preprocess_stops_before_any_work_without_its_models(places, tmp_path):
    from embedtalk_sdk.preprocess.preprocess import PreprocessOptions, preprocess, resolve_models

    with pytest.raises(ModelFileError, match=FACE_LANDMARKER):
        preprocess(tmp_path / "talk.mp4", tmp_path / "data")
    assert not (tmp_path / "data").exists()
    face, seg = _put(places["env"], FACE_LANDMARKER), _put(places["cache"], SELFIE_SEGMENTATION)
    opts = resolve_models(PreprocessOptions(points=10))
    assert (opts.face_model, opts.segmentation_model, opts.points) == (str(face), str(seg), 10)


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", str(data), "-o", str(out), "--iterations", "3", "--init-points", "800", "--audio-encoder",
            "mel", "--val-every", "0", "--mouth-crops", "0"]


def test_train_stops_when_the_lpips_backbone_is_missing(places, tiny_dataset, tmp_path):
    from embedtalk_sdk.cli import app
    from embedtalk_sdk.train.trainer import TrainConfig, Trainer

    with pytest.raises(ModelFileError) as e:
        Trainer(tiny_dataset, TrainConfig(iterations=3, init_points=800, audio_encoder="mel"), log=lambda m: None)
    assert str(places["env"] / LPIPS_BACKBONE) in str(e.value) and "--lpips-weights" in str(e.value)
    result = CliRunner().invoke(app, _train_args(tiny_dataset, tmp_path / "run"))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps
    assert f"error: model file {LPIPS_BACKBONE}" in text and str(places["cache"] / LPIPS_BACKBONE) in text
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_train_with_lpips_off_needs_no_backbone(places, tiny_dataset, tmp_path):
    from embedtalk_sdk.cli import app

    result = CliRunner().invoke(app, [*_train_args(tiny_dataset, tmp_path / "run"), "--no-lpips"])
    assert result.exit_code == 0, result.output
    assert "LPIPS off" in result.output
    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert metrics["lpips_val"] is None and (tmp_path / "run" / "ckpt.pt").is_file()
    both = CliRunner().invoke(app, [*_train_args(tiny_dataset, tmp_path / "r2"), "--no-lpips",
                                    "--lpips-weights", "x.pth"])
    assert both.exit_code == 2 and "give one of them" in both.output


def test_train_finds_the_backbone_in_the_environment_folder(tiny_dataset, tmp_path, monkeypatch):
    from embedtalk_sdk.cli import app

    backbone = model_or_skip(LPIPS_BACKBONE)
    monkeypatch.setenv(ENV_VAR, str(backbone.parent))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    result = CliRunner().invoke(app, _train_args(tiny_dataset, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert f"LPIPS on: AlexNet backbone {backbone}" in " ".join(result.output.split())
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["lpips_val"] is not None


def test_eval_reports_lpips_null_saying_where_it_looked(places):
    from embedtalk_sdk.eval import _lpips_metric

    metric, note = _lpips_metric(None)
    assert metric is None and note.startswith("LPIPS off: model file") and str(places["env"] / LPIPS_BACKBONE) in note
    with pytest.raises(ModelFileError, match="given by --lpips-weights"):  # a path given is never ignored
        _lpips_metric(str(places["option"] / LPIPS_BACKBONE))
