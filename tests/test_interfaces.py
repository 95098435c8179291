"""docs/interfaces.md against the code: the manifest the exporter writes has exactly the keys the
page documents (its ```json manifest block), compared recursively, the audio block like the rest.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "interfaces.md"
OPAQUE = "..."  # a value defined elsewhere (its inside is not compared)


def documented_manifest() -> dict:
    """The ```json manifest block of docs/interfaces.md, parsed."""
    blocks = re.findall(r"^```json manifest\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, f"{DOC} must hold exactly one ```json manifest block, found {len(blocks)}"
    return json.loads(blocks[0])


def schema_diff(doc: Any, got: Any, where: str = "manifest") -> list[str]:
    """How `got` departs from the documented form `doc` (the notation of docs/interfaces.md:
    "key?" optional, "<name>" any key, a list shows its items' form, "..." not compared)."""
    if doc == OPAQUE:
        return []
    if isinstance(doc, dict):
        if not isinstance(got, dict):
            return [f"{where}: documented as an object, written as {type(got).__name__}"]
        wild = [k for k in doc if k.startswith("<") and k.endswith(">")]
        if wild:
            return [d for k, v in got.items() for d in schema_diff(doc[wild[0]], v, f"{where}.{k}")]
        required = {k for k in doc if not k.endswith("?")}
        known = required | {k[:-1] for k in doc if k.endswith("?")}
        out = [f"{where}.{k}: written, not documented" for k in sorted(set(got) - known)]
        out += [f"{where}.{k}: documented, not written" for k in sorted(required - set(got))]
        for k, v in doc.items():
            if k.rstrip("?") in got:
                out += schema_diff(v, got[k.rstrip("?")], f"{where}.{k.rstrip('?')}")
        return out
    if isinstance(doc, list):
        if not isinstance(got, list):
            return [f"{where}: documented as a list, written as {type(got).__name__}"]
        return [d for i, item in enumerate(got) for d in schema_diff(doc[0], item, f"{where}[{i}]")] if doc else []
    if isinstance(got, (dict, list)):
        return [f"{where}: documented as a value, written as {type(got).__name__}"]
    return []


def test_exported_manifest_has_exactly_the_documented_keys(phonetic_avatar):
    written = json.loads((phonetic_avatar["inside"] / "manifest.json").read_text())
    diff = schema_diff(documented_manifest(), written)
    assert not diff, f"the exporter's manifest and {DOC.relative_to(ROOT)} disagree:\n" + "\n".join(diff)


def test_the_check_catches_undocumented_and_unwritten_keys():
    doc = documented_manifest()
    written = {k.rstrip("?"): v for k, v in copy.deepcopy(doc).items()}
    written["aus"] = {k.rstrip("?"): v for k, v in written["aus"].items()}
    written["files"] = {"deform.onnx": {"sha256": "0" * 64, "bytes": 1}, "means.npy": {"sha256": "1" * 64, "bytes": 2}}
    assert schema_diff(doc, written) == []
    missing_in_doc = copy.deepcopy(doc)
    del missing_in_doc["network"], missing_in_doc["audio"]["rate"]
    assert schema_diff(missing_in_doc, written) == [
        "manifest.network: written, not documented", "manifest.audio.rate: written, not documented"]
    del written["aus"]["blink_period_s"], written["tracks"]["torso_frames"]
    written["files"]["means.npy"]["md5"] = "x"
    written["engines"] = [{}]
    diff = schema_diff(doc, written)
    assert "manifest.tracks.torso_frames: documented, not written" in diff
    assert "manifest.files.means.npy.md5: written, not documented" in diff
    assert "manifest.engines[0].backend: documented, not written" in diff
    assert not any("blink_period_s" in d for d in diff)  # optional
