"""Reading an EmbedTalk bundle (`.etk` folder or `.zip`); numpy only, never torch.

The layout is in docs/interfaces.md (section Bundle) and runtime/design.md. Opening a bundle
checks the manifest's format and version and the sha256 of every listed file, so everything
that `array()` / `bytes_of()` hands out later was verified; files present but not listed are
ignored and cannot be read through this class.
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from embedtalk_sdk.runtime.errors import EmbedTalkError
from embedtalk_sdk.runtime.manifest import DIGEST_KEY, canonical_digest

FORMAT_NAME = "embedtalk-bundle"
FORMAT_VERSION = 2  # the format this SDK reads and writes (2: the torso track as video, the table in fp16)
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class BundleError(EmbedTalkError, ValueError):
    """A bundle is missing, malformed, corrupt, or too new for this SDK."""


def check_relpath(rel: str) -> str:
    """Return `rel` if it is a safe relative POSIX path inside a bundle, else raise BundleError."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or "\\" in rel or any(part in ("", ".", "..") for part in p.parts):
        raise BundleError(f"invalid file name in bundle: {rel!r}")
    if rel == MANIFEST:
        raise BundleError(f"{MANIFEST} cannot be listed as a bundle file")
    return rel


def array_file(name: str) -> str:
    """Bundle file name of an array: 'means' -> 'means.npy' ('means.npy' is kept)."""
    return name if name.endswith(".npy") else f"{name}.npy"


class _Store:
    """Where a bundle's bytes live: a folder or a zip archive."""

    def exists(self, rel: str) -> bool: ...
    def size(self, rel: str) -> int: ...
    def chunks(self, rel: str) -> Iterator[bytes]: ...
    def read(self, rel: str) -> bytes: ...


class _FolderStore(_Store):
    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def chunks(self, rel: str) -> Iterator[bytes]:
        with open(self.root / rel, "rb") as f:
            while block := f.read(_CHUNK):
                yield block

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class _ZipStore(_Store):
    # The archive is reopened per access: no file handle outlives a call.
    def __init__(self, path: Path, prefix: str) -> None:
        self.path, self.prefix = path, prefix
        with zipfile.ZipFile(path) as zf:
            self.infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}

    def exists(self, rel: str) -> bool:
        return self.prefix + rel in self.infos

    def size(self, rel: str) -> int:
        return self.infos[self.prefix + rel].file_size

    def chunks(self, rel: str) -> Iterator[bytes]:
        with zipfile.ZipFile(self.path) as zf, zf.open(self.prefix + rel) as f:
            while block := f.read(_CHUNK):
                yield block

    def read(self, rel: str) -> bytes:
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(self.prefix + rel)


def open_store(path: Path) -> _Store:
    if not path.exists():
        raise BundleError(f"no such bundle: {path}")
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise BundleError(f"{path} is not an EmbedTalk bundle (no {MANIFEST} in the folder)")
        return _FolderStore(path)
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is not an EmbedTalk bundle (expected a .etk folder or a .zip of one)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if MANIFEST in names:
        return _ZipStore(path, "")
    # A zip of the folder itself ("alice.etk/manifest.json") is accepted too.
    nested = [n for n in names if n.count("/") == 1 and n.endswith("/" + MANIFEST)]
    if len(nested) == 1:
        return _ZipStore(path, nested[0][: -len(MANIFEST)])
    raise BundleError(f"{path} is not an EmbedTalk bundle (no {MANIFEST} in the zip)")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a manifest may hold")


def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise BundleError(f"{path}/{MANIFEST} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path} is not an EmbedTalk bundle (format {found!r}, expected {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"bundle {path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle {path} has format version {version} but this SDK reads version "
            f"{FORMAT_VERSION}: upgrade embedtalk-sdk"
        )
    if version < FORMAT_VERSION:
        raise BundleError(
            f"bundle {path} has format version {version}, from an older embedtalk-sdk; this SDK reads "
            f"version {FORMAT_VERSION}: export it again from its checkpoint (embedtalk-sdk export ckpt.pt)"
        )
    if manifest.get(DIGEST_KEY) != canonical_digest(manifest):
        raise BundleError(f"{path}/{MANIFEST} is corrupt: its {DIGEST_KEY} does not match its contents (damaged or "
                          "edited by hand); export the bundle again")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"bundle {path}: manifest has no 'files' table")
    return manifest


def sha256_of(chunks: Iterator[bytes]) -> str:
    """Hex sha256 of a stream of byte blocks."""
    h = hashlib.sha256()
    for block in chunks:
        h.update(block)
    return h.hexdigest()


class Bundle:
    """A verified, read-only EmbedTalk bundle.

    Open with `Bundle.open(path)`. Files are addressed by their path relative to the bundle
    root ("deform.onnx"); arrays also by their bare name ("means" -> "means.npy").
    """

    def __init__(self, path: Path, store: _Store, manifest: dict[str, Any]) -> None:
        self._path, self._store, self._manifest = path, store, manifest
        self._extracted: tempfile.TemporaryDirectory | None = None

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        """Open the bundle at `path` (folder or zip) and check it.

        Checks: format name; format_version is the one this SDK reads (older: export again,
        newer: upgrade); the manifest's own digest; every file listed in the manifest exists with
        the listed size and sha256 (`verify=False` skips the hashing, not the existence and size
        checks). Raises BundleError naming the problem and the file.
        """
        path = Path(path)
        if path.name == MANIFEST and path.is_file():  # the manifest itself: open its folder
            path = path.parent
        store = open_store(path)
        manifest = _parse_manifest(path, store.read(MANIFEST))
        bundle = cls(path, store, manifest)
        bundle._check_files(verify)
        return bundle

    def _check_files(self, verify: bool) -> None:
        for rel, entry in self._manifest["files"].items():
            check_relpath(rel)
            where = f"{self._path}/{rel}"
            if not isinstance(entry, dict) or "sha256" not in entry or "bytes" not in entry:
                raise BundleError(f"bundle {self._path}: manifest entry for {rel} lacks sha256/bytes")
            if not self._store.exists(rel):
                raise BundleError(f"{where} is missing (listed in the manifest)")
            size = self._store.size(rel)
            if size != entry["bytes"]:
                raise BundleError(f"{where} is corrupt ({size} bytes, the manifest says {entry['bytes']})")
            if verify and sha256_of(self._store.chunks(rel)) != entry["sha256"]:
                raise BundleError(f"{where} is corrupt (sha256 mismatch)")

    @property
    def path(self) -> Path:
        """Where the bundle was opened from."""
        return self._path

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed manifest.json (treat as read-only)."""
        return self._manifest

    @property
    def files(self) -> list[str]:
        """Relative paths of the files listed (and verified) in the manifest."""
        return list(self._manifest["files"])

    def has(self, name: str) -> bool:
        """True if `name` (a file, or an array's bare name) is listed in the manifest."""
        return self._resolve(name, required=False) is not None

    def _resolve(self, name: str, required: bool = True) -> str | None:
        files = self._manifest["files"]
        for rel in (name, array_file(name)):
            if rel in files:
                return rel
        if required:
            raise BundleError(f"bundle {self._path} has no file {name!r} (it lists: {', '.join(files)})")
        return None

    def bytes_of(self, name: str) -> bytes:
        """The raw bytes of a listed file."""
        return self._store.read(self._resolve(name))

    def array(self, name: str) -> np.ndarray:
        """Load a listed .npy array (`np.load(..., allow_pickle=False)`)."""
        rel = self._resolve(name)
        if not rel.endswith(".npy"):
            raise BundleError(f"{self._path}/{rel} is not a .npy array")
        self._check_npy_size(rel)
        try:
            if isinstance(self._store, _FolderStore):
                return np.load(self._store.root / rel, allow_pickle=False)
            return np.load(io.BytesIO(self._store.read(rel)), allow_pickle=False)
        except ValueError as e:  # pickled object arrays, bad headers
            raise BundleError(f"{self._path}/{rel} cannot be loaded as an array: {e}") from None

    def _check_npy_size(self, rel: str) -> None:
        """Refuse an array whose header declares more data than the file holds, before np.load
        allocates it (a header saying 1e12 elements would be a MemoryError, not a message)."""
        chunks = self._store.chunks(rel)
        head = next(chunks, b"")
        chunks.close()
        f = io.BytesIO(head)
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        except (ValueError, OSError) as e:
            raise BundleError(f"{self._path}/{rel} is not a valid .npy array: {e}") from None
        declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        stored = self._store.size(rel) - f.tell()
        if declared != stored:
            raise BundleError(f"{self._path}/{rel} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                              f"{stored} bytes of data")

    def path_of(self, name: str) -> Path:
        """A filesystem path to a listed file (files of a zipped bundle are extracted to a
        temporary folder, removed when this Bundle is garbage-collected)."""
        rel = self._resolve(name)
        if isinstance(self._store, _FolderStore):
            return self._store.root / rel
        if self._extracted is None:
            self._extracted = tempfile.TemporaryDirectory(prefix="embedtalk-bundle-")
        target = Path(self._extracted.name) / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._store.read(rel))
        return target

    def __repr__(self) -> str:
        return f"Bundle({str(self._path)!r}, files={len(self._manifest['files'])})"


def bundle_megabytes(path: str | Path) -> float:
    """Size on disk of a bundle folder or zip, in MB (1e6 bytes)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


# What each bundle file is for, by name (the first matching prefix wins); used for size reports.
_PART_OF = (
    ("deform.onnx", "network"),
    ("torso_bg", "torso track"),
    ("viewmats", "camera track"),
    ("engines/", "engines"),
    ("hubert", "audio encoder"), ("phonetic", "audio encoder"), ("LICENSE", "licences"),
    ("means", "gaussians"), ("quats", "gaussians"), ("scales", "gaussians"),
    ("opacity_logits", "gaussians"), ("colors", "gaussians"),
)


def bundle_parts(manifest: dict[str, Any]) -> dict[str, int]:
    """Bytes of a bundle by part ("network", "torso track", "gaussians", ...), largest first,
    from its manifest's file table; the manifest itself is not counted."""
    parts: dict[str, int] = {}
    for rel, entry in manifest["files"].items():
        part = next((p for prefix, p in _PART_OF if rel.startswith(prefix)), "other")
        parts[part] = parts.get(part, 0) + int(entry["bytes"])
    return dict(sorted(parts.items(), key=lambda kv: -kv[1]))


def format_parts(parts: dict[str, int]) -> str:
    """'network 1.92 MB, torso track 0.61 MB, ...' for a console line."""
    return ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in parts.items())
