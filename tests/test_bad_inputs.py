"""The bad-input suite (benchmarks/bad_inputs.py) end to end: every case handled, none crashed,
silently wrong, a hole or lost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_bad_input_is_handled(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bad_inputs.py"), "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "bad_inputs.json").read_text())
    bad = [c for c in report["cases"] if c["outcome"] != "handled"]
    assert report["counts"]["tried"] >= 120 and not bad, bad
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
