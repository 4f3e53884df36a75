"""Bundles: a directory with ``manifest.json``, one graph file per component and golden
fixtures. Loading verifies the schema and every file's sha256 and reports all problems at once.

Layout (docs/BUNDLE.md has the full format)::

    my_bundle/
      manifest.json
      enc.onnx  erb_dec.onnx  df_dec.onnx     (or .tflite files / .mlpackage directories)
      fixtures.npz                            (per-frame inputs and expected outputs)

A bundle can also travel as one ``.dfbundle`` file (a zip of that directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfnet4_sdk.errors import BundleError, ConfigError
from dfnet4_sdk.manifest import Manifest

MANIFEST_NAME = "manifest.json"
FIXTURES_NAME = "fixtures.npz"
ARCHIVE_SUFFIX = ".dfbundle"


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

    def graph_path(self, graph: str) -> Path:
        spec = self.manifest.graph(graph)
        if spec.file is None:
            raise BundleError(f"graph {graph!r} has no file in {self.root / MANIFEST_NAME}")
        return self.root / spec.file

    def load_fixtures(self) -> dict[str, np.ndarray]:
        if not self.manifest.fixtures:
            raise BundleError(f"bundle {self.root} has no golden fixtures")
        with np.load(self.root / self.manifest.fixtures["file"]) as data:
            return {k: data[k] for k in data.files}

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Bundle":
        """Open a bundle directory or ``.dfbundle`` archive; refuse a tampered or foreign one."""
        path = Path(path)
        if path.is_file() and path.suffix == ARCHIVE_SUFFIX:
            path = _extract_archive(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not a bundle: {MANIFEST_NAME} not found (export one with `dfsdk export`)")
        try:
            manifest = Manifest.from_json(manifest_path.read_text())
        except (json.JSONDecodeError, ConfigError, KeyError, TypeError) as e:
            raise BundleError(f"{manifest_path} is not a valid manifest: {e}") from e
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        problems = []
        entries = [(g.name, g.file, g.sha256) for g in self.manifest.graphs]
        if self.manifest.fixtures:
            entries.append(("fixtures", self.manifest.fixtures.get("file"), self.manifest.fixtures.get("sha256")))
        for name, file, digest in entries:
            if not file:
                problems.append(f"{name}: no file named in the manifest")
                continue
            p = self.root / file
            if not p.exists():
                problems.append(f"{name}: {file} is missing")
            elif digest != file_sha256(p):
                problems.append(f"{name}: {file} does not match its sha256 in the manifest (modified or corrupt)")
        if problems:
            raise BundleError(f"bundle {self.root} failed verification: " + "; ".join(problems))


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


def _extract_archive(archive: Path) -> Path:
    digest = file_sha256(archive)[:16]
    root = Path(tempfile.gettempdir()) / "dfnet4_sdk_bundles" / f"{archive.stem}-{digest}"
    if not (root / MANIFEST_NAME).is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=root.parent))
        try:
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise BundleError(f"{archive}: refusing unsafe path {name!r}")
                z.extractall(tmp)
        except zipfile.BadZipFile as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"{archive} is not a bundle archive: {e}") from e
        if root.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, root)
    return root
