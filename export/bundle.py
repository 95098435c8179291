"""Writing an EmbedTalk bundle (numpy only; the exporter calls this after baking).

`write_bundle` is the only writer: it fills in the format fields and the sha256 table, and
replaces the target atomically, so a reader never sees a half-written bundle.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from embedtalk_sdk import __version__
from embedtalk_sdk.runtime.fileio import remove_stale_temporaries, temp_prefix, umask_mode
from embedtalk_sdk.runtime.manifest import seal
from embedtalk_sdk.runtime.bundle import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    open_store,
    array_file,
    check_relpath,
)


def write_bundle(
    out_path: str | Path,
    manifest: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    blobs: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a bundle and return its path.

    out_path: a folder (the default; name it `x.etk`) or, if it ends with `.zip`, a zip archive
        (stored, not compressed: the arrays barely compress and stored members read faster).
    manifest: everything but the format fields; `format`, `format_version`, `sdk_version` and
        `files` ({relpath: {sha256, bytes}}) are filled in here. numpy scalars/arrays in it are
        converted to JSON numbers/lists.
    arrays: name -> array, written as `name.npy` (no pickles: object arrays are refused).
    blobs: relpath -> bytes, written as-is (e.g. {"deform.onnx": model.SerializeToString()}).

    An existing bundle at out_path is replaced atomically; anything else there is refused.
    """
    out_path = Path(out_path)
    files = _collect_files(arrays, blobs or {})
    full = dict(manifest)
    full.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, sdk_version=__version__)
    full["files"] = {rel: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for rel, d in files.items()}
    full = seal(json.loads(json.dumps(full, default=_json_default)))  # digest of what a reader will parse
    text = json.dumps(full, indent=2).encode("utf-8")
    _check_replaceable(out_path)
    if out_path.suffix.lower() == ".zip":
        _write_zip(out_path, text, files)
    else:
        _write_folder(out_path, text, files)
    return out_path


def _collect_files(arrays: Mapping[str, np.ndarray], blobs: Mapping[str, bytes]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise BundleError(f"array {name!r} has dtype {arr.dtype}: bundles hold no pickles")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        _add(files, array_file(name), buf.getvalue())
    for rel, data in blobs.items():
        _add(files, rel, bytes(data))
    return dict(sorted(files.items()))


def _add(files: dict[str, bytes], rel: str, data: bytes) -> None:
    check_relpath(rel)
    if rel in files:
        raise BundleError(f"two bundle files are named {rel}")
    files[rel] = data


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"manifest value of type {type(obj).__name__} is not JSON-serialisable")


def _is_bundle(path: Path) -> bool:
    # Only something that already is a bundle may be overwritten (never a user's folder).
    try:
        store = open_store(path)
        return json.loads(store.read(MANIFEST)).get("format") == FORMAT_NAME
    except (BundleError, ValueError, OSError, KeyError, AttributeError):
        return False


def _check_replaceable(out_path: Path) -> None:
    if out_path.exists() and not _is_bundle(out_path):
        raise FileExistsError(f"{out_path} exists and is not an EmbedTalk bundle; refusing to overwrite it")


def _write_folder(out_path: Path, manifest: bytes, files: dict[str, bytes]) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out_path) + "tmp-", dir=out_path.parent))
    try:
        os.chmod(tmp, umask_mode(directory=True))
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        (tmp / MANIFEST).write_bytes(manifest)  # last: a folder with a manifest is complete
        _swap_in(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, out_path: Path) -> None:
    # A folder cannot be os.replace'd over a non-empty one: move the old one aside first,
    # put it back if the rename fails, delete it only once the new one is in place.
    old = None
    if out_path.exists():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(out_path) + "old-", dir=out_path.parent))
        old.rmdir()
        os.replace(out_path, old)
    try:
        os.replace(tmp, out_path)
    except BaseException:
        if old is not None:
            os.replace(old, out_path)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _write_zip(out_path: Path, manifest: bytes, files: dict[str, bytes]) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_path)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(out_path) + "tmp-", dir=out_path.parent)
    tmp = Path(name)
    try:
        os.chmod(tmp, umask_mode())
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(MANIFEST, manifest)
            for rel, data in files.items():
                zf.writestr(rel, data)
        if out_path.is_dir():
            _swap_in(tmp, out_path)
        else:
            os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
