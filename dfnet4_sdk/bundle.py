"""Bundles: a directory with ``manifest.json``, one graph file per component and golden
fixtures. Loading verifies the schema and every file's sha256 and reports all problems at once.

Layout (docs/BUNDLE.md has the full format)::

    my_bundle/
      manifest.json
      enc.onnx  erb_dec.onnx  df_dec.onnx     (or .tflite files / .mlpackage directories)
      fixtures.npz                            (per-frame inputs and expected outputs)

A bundle can also travel as one ``.dfbundle`` file (a zip of that directory), extracted on use
into a private per-user cache directory and checked against the archive every time it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from dfnet4_sdk.errors import BundleError, ConfigError
from dfnet4_sdk.manifest import Manifest

MANIFEST_NAME = "manifest.json"
FIXTURES_NAME = "fixtures.npz"
ARCHIVE_SUFFIX = ".dfbundle"
ARCHIVE_CACHE = "extracted-bundles"  # under the user's cache dir (dfnet4_sdk.user_cache)

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory (sorted relative paths and contents; .mlpackage)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    else:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def is_bundle(path: str | Path) -> bool:
    path = Path(path)
    return (path.is_dir() and (path / MANIFEST_NAME).is_file()) or (path.is_file() and path.suffix == ARCHIVE_SUFFIX)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def file_path(self, relative: str, what: str) -> Path:
        """``relative`` inside the bundle; BundleError for a path that leaves it (absolute,
        ``..``, or a symlink that points outside)."""
        pure = PurePosixPath(relative)
        if pure.is_absolute() or Path(relative).is_absolute() or ".." in pure.parts or "\\" in relative:
            raise BundleError(f"{what}: file {relative!r} in {self.root / MANIFEST_NAME} is not a plain path inside the "
                              "bundle (absolute or with '..'); a bundle's files sit in its own directory")
        path = self.root / relative
        root = self.root.resolve()
        for p in (path, *(path.rglob("*") if path.is_dir() else ())):
            if not p.resolve().is_relative_to(root):
                raise BundleError(f"{what}: {p} points outside the bundle {root} (symlink to {p.resolve()}); "
                                  "copy the file into the bundle instead")
        return path

    def graph_path(self, graph: str) -> Path:
        spec = self.manifest.graph(graph)
        if spec.file is None:
            raise BundleError(f"graph {graph!r} has no file in {self.root / MANIFEST_NAME}")
        return self.file_path(spec.file, f"graph {graph!r}")

    def load_fixtures(self) -> dict[str, np.ndarray]:
        if not self.manifest.fixtures:
            raise BundleError(f"bundle {self.root} has no golden fixtures")
        with np.load(self.file_path(self.manifest.fixtures["file"], "fixtures")) as data:
            return {k: data[k] for k in data.files}

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Bundle":
        """Open a bundle directory or ``.dfbundle`` archive; refuse a malformed, tampered or
        foreign one with a BundleError that lists every problem."""
        path = Path(path)
        if path.is_file() and path.suffix == ARCHIVE_SUFFIX:
            path = _extract_archive(path)
        bundle = cls(path, read_manifest(path))
        if not bundle.manifest.source_model:
            bundle = bundle._with_shipped_source()
        if verify:
            bundle.verify()
        return bundle

    def _with_shipped_source(self) -> "Bundle":
        """A bundle shipped in the package, exported before manifests recorded their source,
        was made from the shipped model it is named after."""
        from dfnet4_sdk.shipped import SHIPPED_MODELS

        for m in SHIPPED_MODELS.values():
            if any(b.path.resolve() == self.root.resolve() for b in m.bundles):
                return replace(self, manifest=replace(self.manifest, source_model={"name": m.name, "kind": "shipped"}))
        return self

    def verify(self) -> None:
        problems = []
        entries = [(g.name, g.file, g.sha256) for g in self.manifest.graphs]
        if self.manifest.fixtures:
            entries.append(("fixtures", self.manifest.fixtures.get("file"), self.manifest.fixtures.get("sha256")))
        for name, file, digest in entries:
            if not file:
                problems.append(f"{name}: no file named in the manifest")
                continue
            try:
                p = self.file_path(file, name)
            except BundleError as e:
                problems.append(str(e))
                continue
            if not p.exists():
                problems.append(f"{name}: {file} is missing")
            elif digest != file_sha256(p):
                problems.append(f"{name}: {file} does not match its sha256 in the manifest (modified or corrupt)")
        if problems:
            raise BundleError(f"bundle {self.root} failed verification: " + "; ".join(problems))


def read_manifest(root: Path) -> Manifest:
    """The manifest of the bundle directory ``root``; BundleError naming what is wrong."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"no {MANIFEST_NAME} in {root}; expected a bundle directory written by `dfsdk export`")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{manifest_path} is not a manifest: not UTF-8 text ({e.reason} at byte {e.start}); "
                          "re-export the bundle with `dfsdk export`") from e
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an integer too long to parse, deep nesting
        raise BundleError(f"{manifest_path} is not valid JSON: {e}; re-export the bundle with `dfsdk export`") from e
    except OSError as e:
        raise BundleError(f"cannot read {manifest_path}: {e}") from e
    try:
        return Manifest.from_dict(data)
    except ConfigError as e:
        raise BundleError(f"{manifest_path} is not a valid manifest: {e}") from e


def write_manifest(root: Path, manifest: Manifest) -> None:
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(manifest.to_json() + "\n")
    os.replace(tmp, root / MANIFEST_NAME)


def pack(bundle_dir: str | Path, archive: str | Path | None = None) -> Path:
    """Zip a verified bundle directory into one ``.dfbundle`` file."""
    bundle = Bundle.load(bundle_dir)
    archive = Path(archive) if archive else bundle.root.with_suffix(ARCHIVE_SUFFIX)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in bundle.root.rglob("*") if p.is_file()):
            z.write(f, f.relative_to(bundle.root).as_posix())
    return archive


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can use (created 0700; an existing one must be
    a real directory owned by this user, and loses any group/other permissions)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise BundleError(f"bundle cache {path} is not a directory (a symlink or a file); remove it, "
                              "or set DFNET4_SDK_CACHE to a directory of your own")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise BundleError(f"bundle cache {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}), so "
                              "others could plant bundles in it; set DFNET4_SDK_CACHE to a directory of your own")
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        raise BundleError(f"cannot use {path} as the bundle cache: {e}; set DFNET4_SDK_CACHE to a writable directory") from e
    return path


def _extract_archive(archive: Path) -> Path:
    """The directory of ``archive``'s bundle in the user's private cache, extracted once and
    checked against the archive on every use: a cached copy that differs (tampered, partial)
    is extracted again. Extraction goes to a temporary sibling, is verified, then renamed into
    place, so a failure leaves nothing behind."""
    from dfnet4_sdk.user_cache import cache_dir

    parent = private_dir(cache_dir() / ARCHIVE_CACHE)
    root = parent / f"{archive.stem}-{file_sha256(archive)[:16]}"
    try:
        with zipfile.ZipFile(archive) as z:
            members = _safe_members(archive, z)
            if root.exists():
                problems = _differences(root, z, members)
                if not problems:
                    return root
                log.warning("cached extraction %s of %s differs from the archive (%s); extracting again",
                            root, archive, "; ".join(problems[:3]))
                shutil.rmtree(root)
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=parent))
            try:
                z.extractall(tmp, members)
                Bundle.load(tmp)  # verified before it becomes visible
                try:
                    os.rename(tmp, root)
                except OSError:  # another process put it there first: use theirs, once checked
                    shutil.rmtree(tmp)
                    problems = _differences(root, z, members)
                    if problems:
                        raise BundleError(f"{root} differs from {archive}: " + "; ".join(problems)) from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except zipfile.BadZipFile as e:
        raise BundleError(f"{archive} is not a bundle archive: {e}") from e
    except OSError as e:
        raise BundleError(f"cannot extract {archive} into {parent}: {e}") from e
    return root


def _safe_members(archive: Path, z: zipfile.ZipFile) -> list[str]:
    members = [n for n in z.namelist() if not n.endswith("/")]
    unsafe = [n for n in members if n.startswith(("/", "\\")) or "\\" in n or ".." in PurePosixPath(n).parts
              or ":" in PurePosixPath(n).parts[0]]
    if unsafe:
        raise BundleError(f"{archive}: refusing unsafe paths {unsafe} (absolute or leaving the bundle)")
    if MANIFEST_NAME not in members:
        raise BundleError(f"{archive} is not a bundle archive: no {MANIFEST_NAME} at its top level")
    return members


def _differences(root: Path, z: zipfile.ZipFile, members: list[str]) -> list[str]:
    """How an extracted directory differs from its archive: the file list, the manifest's
    bytes, every file the manifest lists by sha256 and any other file by its bytes."""
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}
    problems = [f"{n} is missing" for n in sorted(set(members) - present)]
    problems += [f"{n} is not in the archive" for n in sorted(present - set(members))]
    if problems:
        return problems
    if (root / MANIFEST_NAME).read_bytes() != z.read(MANIFEST_NAME):
        return [f"{MANIFEST_NAME} differs"]
    try:
        bundle = Bundle.load(root)
    except BundleError as e:
        return [str(e)]
    listed = {bundle.manifest.fixtures.get("file")} | {g.file for g in bundle.manifest.graphs}
    for n in members:
        if n != MANIFEST_NAME and not any(n == f or n.startswith(f"{f}/") for f in listed if f):
            if (root / n).is_symlink() or (root / n).read_bytes() != z.read(n):
                problems.append(f"{n} differs")
    return problems
