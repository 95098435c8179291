"""Values written once stay written once: every CLI option that a library dataclass or function
also defaults has the library's default, and the lists of backends in the docs are the registry's."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest
import typer

from embedtalk_sdk.cli import BACKEND_HELP, LibraryDefault, app
from embedtalk_sdk.runtime.backends import registry

ROOT = Path(__file__).resolve().parents[1]

# command -> where its options' defaults live: "module:object", with CLI names the library spells otherwise.
TARGETS = {
    "synth": [("embedtalk_sdk.synthetic.synth:synthesize_dataset", {})],
    "train": [("embedtalk_sdk.train.trainer:TrainConfig", {}),
              ("embedtalk_sdk.train.resume:Cadence", {"checkpoint_seconds": "seconds"})],
    "export": [("embedtalk_sdk.export.exporter:export_bundle", {"target": "targets"})],
    "speak": [("embedtalk_sdk.runtime.avatar:Avatar.load", {})],
    "bench": [("embedtalk_sdk.runtime.bench:run_bench", {"frames": "n_frames"})],
    "demo": [("embedtalk_sdk.synthetic.synth:synthesize_dataset", {"iterations": None, "seed": None})],
    "preprocess": [("embedtalk_sdk.preprocess.preprocess:PreprocessOptions",
                    {"face_model": None, "segmentation_model": None})],  # model paths: resolved elsewhere
    "eval": [("embedtalk_sdk.eval:evaluate", {"frames": "max_frames"})],
    "serve": [("embedtalk_sdk.serve.app:run", {}),
              ("embedtalk_sdk.serve.app:Limits", {"max_upload_seconds": "max_upload_s",
                                                  "requests_per_second": "requests_per_s",
                                                  "sessions_per_minute": "sessions_per_min"}),
              ("embedtalk_sdk.serve.app:Exposure", {})],
    "livekit-worker": [("embedtalk_sdk.integrations.livekit_worker:run_worker", {})],
}
# Converted, not renamed: the CLI takes megabytes, the library bytes.
CONVERTED = {("serve", "max_upload_mb"): ("embedtalk_sdk.serve.app:Limits", "max_upload_bytes", lambda b: b / 2**20),
             ("export", "target"): ("embedtalk_sdk.export.exporter:export_bundle", "targets", ",".join)}


def _load(target: str):
    module, attr = target.split(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _library_defaults(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        return {f.name: f.default for f in dataclasses.fields(obj) if f.default is not dataclasses.MISSING}
    return {n: p.default for n, p in inspect.signature(obj).parameters.items() if p.default is not p.empty}


def _cli_defaults(command: str) -> dict:
    click_command = typer.main.get_command(app).commands[command]
    out = {}
    for p in click_command.params:
        out[p.name] = p.default() if isinstance(p.default, LibraryDefault) else p.default
    return out


def _targets(command: str) -> list[tuple[dict, dict]]:
    found = []
    for target, renamed in TARGETS[command]:
        try:
            found.append((_library_defaults(_load(target)), renamed))
        except ImportError as e:  # an extra that is not installed here (serve, livekit, preprocess)
            pytest.skip(f"{command}: {e}")
    return found


@pytest.mark.parametrize("command", sorted(TARGETS))
def test_cli_defaults_are_the_library_defaults(command: str):
    cli = _cli_defaults(command)
    compared = 0
    for library, renamed in _targets(command):
        for name, value in cli.items():
            lib_name = renamed.get(name, name)
            if lib_name is None or lib_name not in library or (command, name) in CONVERTED:
                continue
            assert value == library[lib_name], f"{command} --{name.replace('_', '-')}: {value!r}, library {library[lib_name]!r}"
            compared += 1
    for (cmd, name), (target, lib_name, convert) in CONVERTED.items():
        if cmd == command:
            assert cli[name] == convert(_library_defaults(_load(target))[lib_name])
            compared += 1
    assert compared  # the map above still names real options


def test_the_check_catches_a_restated_default(monkeypatch):
    # The rule must be able to fail: a literal that drifted from TrainConfig is reported.
    click_command = typer.main.get_command(app).commands["train"]
    option = next(p for p in click_command.params if p.name == "iterations")
    monkeypatch.setattr(option, "default", 2999)
    monkeypatch.setattr(typer.main, "get_command", lambda _app: type("G", (), {"commands": {"train": click_command}})())
    from embedtalk_sdk.train.trainer import TrainConfig

    with pytest.raises(AssertionError, match=f"train --iterations: 2999, library {TrainConfig().iterations}"):
        test_cli_defaults_are_the_library_defaults("train")


def test_lookahead_rows_has_one_default():
    pytest.importorskip("aiohttp")
    from embedtalk_sdk.serve.app import run
    from embedtalk_sdk.serve.session import LOOKAHEAD_ROWS

    assert inspect.signature(run).parameters["lookahead_rows"].default == LOOKAHEAD_ROWS
    assert _cli_defaults("serve")["lookahead_rows"] == _cli_defaults("livekit-worker")["lookahead_rows"] == LOOKAHEAD_ROWS


# ---------------------------------------------------------------- the backends the docs list


def playback_backends() -> list[str]:
    """The registry's playback backends in `auto`'s order, installed here or not."""
    entries = registry._registry()
    plugins = [n for n, e in entries.items() if n not in registry.AUTO_ORDER and e.auto_pick]
    return [*registry.AUTO_ORDER, *plugins]


def _quoted_lists(text: str) -> list[list[str]]:
    """Every `backend="auto" | "x" | ...` list in a text."""
    return [re.findall(r'"([\w-]+)"', m) for m in re.findall(r'backend="auto"(?:\s*\|\s*"[\w-]+")+', text)]


def test_every_backend_list_in_the_docs_is_the_registry():
    want = ["auto", *playback_backends()]
    for path in ("README.md", "runtime/avatar.py"):
        lists = _quoted_lists((ROOT / path).read_text())
        assert lists and all(found == want for found in lists), f"{path}: {lists}, registry {want}"
    assert BACKEND_HELP.split(" | ") == want
    readme = (ROOT / "README.md").read_text()
    assert sorted(re.findall(r"\| playback, `([\w-]+)` backend \|", readme)) == sorted(playback_backends())
    layout = re.search(r"runtime/backends/ .*; backends ([\w, -]+)\n", readme)
    assert layout and sorted(layout.group(1).split(", ")) == sorted(registry.AUTO_ORDER)
    design = (ROOT / "runtime/design.md").read_text()
    order = re.search(r"`auto` tries `AUTO_ORDER` first \(([^—]+) —", " ".join(design.split()))
    assert order and order.group(1).split(", ") == list(registry.AUTO_ORDER)
    plugged = re.search(r"then the plug-ins with `AUTO_PICK` \(([^)]+)\)", " ".join(design.split()))
    assert plugged and plugged.group(1).split(", ") == playback_backends()[len(registry.AUTO_ORDER):]
