"""The bundle format: round trip, atomic replace, and every way a bundle is refused."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from embedtalk_sdk.export.bundle import write_bundle
from embedtalk_sdk.runtime.bundle import FORMAT_VERSION, Bundle, BundleError
from embedtalk_sdk.runtime.manifest import seal

ARRAYS = {
    "means": np.arange(12, dtype=np.float32).reshape(4, 3),
    "torso_bg": np.full((2, 3, 5, 3), 7, dtype=np.uint8),
}
BLOBS = {"deform.onnx": b"\x08\x07not-really-onnx", "extra/notes.txt": b"hello"}


@pytest.fixture(params=["folder", "zip"])
def bundle_path(request, tmp_path: Path) -> Path:
    name = "a.etk" if request.param == "folder" else "a.zip"
    return write_bundle(tmp_path / name, {"fps": 25, "K": np.eye(3, dtype=np.float32)}, ARRAYS, BLOBS)


def _rewrite(path: Path, rel: str, edit) -> None:
    """Apply edit(bytes) -> bytes | None (None deletes) to one member of a folder or zip bundle."""
    if path.is_dir():
        data = edit((path / rel).read_bytes())
        (path / rel).unlink()
        if data is not None:
            (path / rel).write_bytes(data)
        return
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    data = edit(members.pop(rel))
    if data is not None:
        members[rel] = data
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def test_round_trip(bundle_path: Path):
    b = Bundle.open(bundle_path)
    m = b.manifest
    assert m["format"] == "embedtalk-bundle" and m["format_version"] == FORMAT_VERSION
    assert m["fps"] == 25 and m["K"] == np.eye(3).tolist() and "sdk_version" in m
    assert set(m["files"]) == {"means.npy", "torso_bg.npy", "deform.onnx", "extra/notes.txt"}
    assert m["files"]["deform.onnx"]["bytes"] == len(BLOBS["deform.onnx"])
    for name, arr in ARRAYS.items():
        got = b.array(name)
        assert got.dtype == arr.dtype and np.array_equal(got, arr)
    assert np.array_equal(b.array("means.npy"), ARRAYS["means"])
    assert b.bytes_of("deform.onnx") == BLOBS["deform.onnx"]
    assert b.path_of("extra/notes.txt").read_bytes() == b"hello"
    assert b.has("means") and not b.has("quats")


def test_flipped_byte_is_refused_naming_the_file(bundle_path: Path):
    _rewrite(bundle_path, "means.npy", _flip)
    with pytest.raises(BundleError, match=r"means\.npy is corrupt \(sha256 mismatch\)"):
        Bundle.open(bundle_path)


def test_truncated_file_is_refused_naming_the_file(bundle_path: Path):
    _rewrite(bundle_path, "deform.onnx", lambda d: d[:-1])
    with pytest.raises(BundleError, match=r"deform\.onnx is corrupt"):
        Bundle.open(bundle_path)


def test_missing_file_is_refused_naming_it(bundle_path: Path):
    _rewrite(bundle_path, "torso_bg.npy", lambda d: None)
    with pytest.raises(BundleError, match=r"torso_bg\.npy is missing"):
        Bundle.open(bundle_path)


def _edit_manifest(path: Path, **changes) -> None:
    """Change top-level manifest keys, keeping the manifest's digest valid (to test what lies behind it)."""
    def edit(data: bytes) -> bytes:
        m = json.loads(data)
        m.update(changes)
        return json.dumps(seal(m)).encode()

    _rewrite(path, "manifest.json", edit)


def test_newer_format_version_says_upgrade(bundle_path: Path):
    _edit_manifest(bundle_path, format_version=99)
    with pytest.raises(BundleError, match=r"format version 99 but this SDK reads version 2: upgrade embedtalk-sdk"):
        Bundle.open(bundle_path)


def test_wrong_format_name_is_refused(bundle_path: Path):
    _edit_manifest(bundle_path, format="something-else")
    with pytest.raises(BundleError, match="not an EmbedTalk bundle"):
        Bundle.open(bundle_path)


def test_unlisted_files_are_ignored(bundle_path: Path):
    if bundle_path.is_dir():
        (bundle_path / "stray.bin").write_bytes(b"junk")
    else:
        with zipfile.ZipFile(bundle_path, "a") as zf:
            zf.writestr("stray.bin", b"junk")
    b = Bundle.open(bundle_path)
    assert "stray.bin" not in b.files
    with pytest.raises(BundleError, match="has no file 'stray.bin'"):
        b.bytes_of("stray.bin")


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "text_file", "zip_without_manifest", "bad_json"])
def test_non_bundle_paths_give_a_clear_error(tmp_path: Path, kind: str):
    p = tmp_path / "thing"
    if kind == "empty_dir":
        p.mkdir()
    elif kind == "text_file":
        p.write_text("hello")
    elif kind == "zip_without_manifest":
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("a.txt", "x")
    elif kind == "bad_json":
        p.mkdir()
        (p / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"no such bundle|not an EmbedTalk bundle|not valid JSON"):
        Bundle.open(p)


def test_zip_of_the_folder_is_accepted(tmp_path: Path):
    folder = write_bundle(tmp_path / "b.etk", {}, ARRAYS, BLOBS)
    z = tmp_path / "b.etk.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file():
                zf.write(f, f"b.etk/{f.relative_to(folder).as_posix()}")
    assert np.array_equal(Bundle.open(z).array("means"), ARRAYS["means"])


def test_rewrite_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path):
    for suffix in (".etk", ".zip"):
        out = tmp_path / f"c{suffix}"
        write_bundle(out, {"v": 1}, ARRAYS, BLOBS)
        write_bundle(out, {"v": 2}, {"means": np.zeros((1, 3), np.float32)}, {})
        b = Bundle.open(out)
        assert b.manifest["v"] == 2 and b.files == ["means.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.etk", "c.zip"]


def test_refuses_to_overwrite_a_non_bundle(tmp_path: Path):
    victim = tmp_path / "photos"
    victim.mkdir()
    (victim / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError):
        write_bundle(victim, {}, ARRAYS, {})
    assert (victim / "cat.jpg").read_bytes() == b"meow"


def test_writer_refuses_pickles_and_unsafe_names(tmp_path: Path):
    with pytest.raises(BundleError, match="pickles"):
        write_bundle(tmp_path / "d.etk", {}, {"bad": np.array([object()])}, {})
    with pytest.raises(BundleError, match="invalid file name"):
        write_bundle(tmp_path / "d.etk", {}, {}, {"../escape": b"x"})
    with pytest.raises(BundleError, match="two bundle files"):
        write_bundle(tmp_path / "d.etk", {}, {"means": ARRAYS["means"]}, {"means.npy": b"x"})
    assert not (tmp_path / "d.etk").exists()


def test_manifest_cannot_escape_the_bundle(tmp_path: Path):
    out = write_bundle(tmp_path / "e.etk", {}, ARRAYS, {})
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["../outside.npy"] = {"sha256": "0" * 64, "bytes": 1}
    (out / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(BundleError, match="invalid file name"):
        Bundle.open(out)


def test_one_changed_digit_in_the_manifest_is_refused(bundle_path: Path):
    # The file hashes cannot see the manifest itself: 25 fps -> 35 must not load and play wrong.
    _rewrite(bundle_path, "manifest.json", lambda d: d.replace(b'"fps": 25', b'"fps": 35'))
    with pytest.raises(BundleError, match=r"manifest\.json is corrupt: its manifest_sha256 does not match"):
        Bundle.open(bundle_path)


def test_nan_in_the_manifest_is_refused(bundle_path: Path):
    _rewrite(bundle_path, "manifest.json", lambda d: d.replace(b'"fps": 25', b'"fps": NaN'))
    with pytest.raises(BundleError, match=r"not valid JSON: NaN is not a number a manifest may hold"):
        Bundle.open(bundle_path)


def test_array_header_larger_than_its_file_is_refused_before_loading(tmp_path: Path):
    import io as _io

    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3)})
    out = write_bundle(tmp_path / "h.etk", {}, {}, {"means.npy": buf.getvalue() + b"\0" * 48})
    with pytest.raises(BundleError, match=r"means\.npy declares shape \(1000000000000, 3\) of float32"):
        Bundle.open(out).array("means")
