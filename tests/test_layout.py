"""The package's shape: `runtime/` is the torch-free core everything builds on, never the reverse.

Static checks over every import statement (also the lazy ones inside functions), so a training
import hidden in a rarely taken branch fails here, not on a user's laptop; and a dynamic one that
imports every runtime module with torch and the training side made unimportable.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import model_or_skip

ROOT = Path(__file__).resolve().parents[1]
# Folder on disk -> import name (pyproject.toml maps the card's folders into one package).
PACKAGES = {"embedtalk_sdk": "embedtalk_sdk", "runtime": "embedtalk_sdk.runtime", "plugins": "embedtalk_sdk.plugins",
            "export": "embedtalk_sdk.export"}
# What the core may import besides the standard library: its own dependencies (pyproject's
# `dependencies`), the optional GPU stack, matplotlib for bench's chart, onnx for the plugin graph.
CORE_THIRD_PARTY = {"numpy", "scipy", "soundfile", "av", "numba", "PIL", "onnxruntime", "cuda", "tensorrt",
                    "tensorrt_rtx", "tensorrt_rtx_bindings", "matplotlib", "onnx"}
CORE_PREFIXES = ("embedtalk_sdk.runtime", "embedtalk_sdk.plugins")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def is_core_import(module: str) -> bool:
    top = module.split(".")[0]
    if top == "embedtalk_sdk":
        return module.startswith(CORE_PREFIXES)
    return top in CORE_THIRD_PARTY or top in sys.stdlib_module_names


def core_violations(paths: list[Path]) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line}: imports {module}"
            for p in paths for line, module, _ in imports(p) if not is_core_import(module)]


def test_runtime_and_plugins_import_only_the_core():
    bad = core_violations(source_files("runtime", "plugins"))
    assert not bad, "the torch-free core imports the training side or a package outside it:\n" + "\n".join(bad)


def test_the_check_catches_a_training_import(tmp_path: Path):
    # The rule must be able to fail: a runtime module with a lazy training import is flagged.
    bad = tmp_path / "runtime" / "sneaky.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from embedtalk_sdk.model.deform import DeformNet\n    import torch\n")
    found = [m for _, m, _ in imports(bad) if not is_core_import(m)]
    assert found == ["embedtalk_sdk.model.deform", "torch"]


def test_no_private_name_is_imported_across_modules():
    bad = []
    for p in source_files("embedtalk_sdk", "runtime", "plugins", "export", "benchmarks", "examples"):
        for line, module, names in imports(p):
            if module.startswith("embedtalk_sdk"):
                bad += [f"{p.relative_to(ROOT)}:{line}: {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def lines_matching(pattern: str, *folders: str, skip: tuple[str, ...] = ()) -> list[str]:
    """'file:line: text' of every line of the folders' Python sources that matches `pattern`."""
    found = []
    for p in source_files(*folders):
        if str(p.relative_to(ROOT)) in skip:
            continue
        found += [f"{p.relative_to(ROOT)}:{k}: {line.strip()}" for k, line in enumerate(p.read_text().splitlines(), 1)
                  if re.search(pattern, line)]
    return found


def test_installed_code_finds_no_file_beside_the_source_tree():
    """Model files come from embedtalk_sdk/model_files.py; a path built from the checkout's place
    (`Path(__file__).parents[2].parent / "shared"`) points inside the venv of a normal install."""
    bad = lines_matching(r'/\s*"shared"', "embedtalk_sdk", "runtime", "plugins", "export")
    assert not bad, "paths beside the source tree:\n" + "\n".join(bad)


def test_dataset_image_settings_live_in_data_layout():
    """Dataset images (JPEG quality and chroma, PNG level) are encoded by data/layout.py's write_image only."""
    bad = lines_matching(r"subsampling|compress_level", "embedtalk_sdk", "runtime", "plugins", "export",
                         skip=("embedtalk_sdk/data/layout.py",))
    assert not bad, "image settings outside data/layout.py:\n" + "\n".join(bad)


# The training side: what an app that only plays avatars does not install.
TORCH_SIDE = ("torch", "transformers", "embedtalk_sdk.model", "embedtalk_sdk.train", "embedtalk_sdk.export",
              "embedtalk_sdk.functional")


def blocker(blocked: tuple[str, ...]) -> str:
    """Python source that makes the modules `blocked` (and their submodules) unimportable."""
    return f"""
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked: the runtime must not need it")
sys.meta_path.insert(0, Block())
"""


BLOCK_TRAINING = blocker(TORCH_SIDE + ("embedtalk_sdk.data", "embedtalk_sdk.preprocess", "embedtalk_sdk.synthetic",
                                       "embedtalk_sdk.eval"))


def test_every_runtime_module_imports_with_the_training_side_blocked():
    modules = [module_name(p) for p in source_files("runtime", "plugins")]
    code = BLOCK_TRAINING + "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_bench_runs_with_the_training_side_blocked(trained_avatar, tmp_path: Path):
    """`embedtalk-sdk bench` on a bundle where only the runtime is installed: onnxruntime is the baseline."""
    code = BLOCK_TRAINING + (
        "from embedtalk_sdk.cli import app\n"
        f"app(['bench', {str(trained_avatar['bundle'])!r}, '--frames', '5', '-o', {str(tmp_path / 'b.json')!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["baseline"] == "onnxruntime"
    assert [r["backend"] for r in report["results"] if "fps" in r] == ["onnxruntime"]


def test_eval_on_a_bundle_runs_with_torch_blocked(trained_avatar, tmp_path: Path):
    """`embedtalk-sdk eval BUNDLE --data DATA` without PyTorch: runtime frames, LPIPS null with its reason."""
    pytest.importorskip("mediapipe")
    model_or_skip("face_landmarker.task")
    out = tmp_path / "eval"
    code = blocker(TORCH_SIDE) + (
        "from embedtalk_sdk.cli import app\n"
        f"app(['eval', {str(trained_avatar['bundle'])!r}, '--data', {str(trained_avatar['data'])!r}, "
        f"'-o', {str(out)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    m = report["metrics"]
    assert report["kind"] == "bundle" and report["backend"] == "onnxruntime" and report["frames"] == 10
    assert m["lpips"] is None and "needs PyTorch" in report["notes"]["lpips"]
    assert "note: LPIPS off: it needs PyTorch" in " ".join((result.stdout + result.stderr).split())  # rich wraps
    assert m["psnr"] == pytest.approx(trained_avatar["metrics"]["psnr_val"], abs=0.2) and 0 < m["ssim"] <= 1
    assert m["lmd_frames"] > 0 and m["lip_corr"] is not None and (out / "side_by_side.mp4").stat().st_size > 0
