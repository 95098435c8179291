"""The README's layout tree against the source tree: every folder it names exists, and every folder
of the project's packages, examples, benchmarks and docs is named (a new subsystem must say where it
lives)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("embedtalk_sdk", "runtime", "plugins", "export", "examples", "benchmarks", "docs")
NOT_CODE = {"__pycache__", "static", "weights"}  # the page's files, LPIPS's shipped weights


def layout_paths() -> set[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return {m.group(1).rstrip("/") for m in re.finditer(r"^(\S+)\s", block, re.M)}


def source_folders() -> set[str]:
    found = set()
    for top in TOP:
        found.add(top)
        for d in (ROOT / top).rglob("*"):
            if d.is_dir() and not NOT_CODE & set(d.relative_to(ROOT).parts):
                found.add(d.relative_to(ROOT).as_posix())
    return found


def test_every_folder_the_readme_names_exists():
    missing = sorted(p for p in layout_paths() if not (ROOT / p).exists())
    assert not missing, f"README's layout names paths that do not exist: {missing}"


def test_every_source_folder_is_in_the_readme_layout():
    named = layout_paths()
    named |= {str(Path(p).parent) for p in named if (ROOT / p).is_file()}  # docs/interfaces.md names docs
    unnamed = sorted(source_folders() - named)
    assert not unnamed, f"folders missing from README's layout: {unnamed}"
