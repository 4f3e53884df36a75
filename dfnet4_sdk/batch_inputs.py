"""What a batch enhances: command-line inputs (files, directories, globs, list files) expanded
into (input file, output path under the output directory) pairs, every problem reported at once.

Where an output lands under ``--output-dir OUT``:
  - a directory ``D`` is searched recursively for audio files; ``D/a/b.wav`` -> ``OUT/a/b.wav``;
  - a glob (quoted, expanded here; ``**`` crosses folders) mirrors the tree below its first
    folder without a wildcard: ``data/*/x*.wav`` matching ``data/s1/x1.wav`` -> ``OUT/s1/x1.wav``;
  - a plain file lands in ``OUT`` by its name;
  - a list file (``--list FILE`` or ``@FILE``) holds one path, directory or glob per line
    (blank lines and lines starting with ``#`` ignored); a relative line is relative to the list
    file's folder, and what it names keeps its path below that folder under ``OUT``
    (``s1/a.wav`` -> ``OUT/s1/a.wav``; a line ``s2`` naming a folder -> ``OUT/s2/...``).
Hidden files and folders (a name starting with ".", such as the temporaries ``atomic_output``
writes) and anything inside the output directory are never inputs.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import soundfile as sf

from dfnet4_sdk.errors import PathError

# Extensions a folder is searched for: every format soundfile reads, by its name, except
# headerless .raw (its rate and sample format are unknown); plus common aliases.
AUDIO_EXTENSIONS = frozenset({f".{f.lower()}" for f in sf.available_formats() if f != "RAW"} | {".aif", ".oga"})
_MAGIC = ("*", "?", "[")
_LISTED_PROBLEMS = 20  # at most this many problems of one kind are spelled out


@dataclass(frozen=True)
class Source:
    """One input file and where its output goes, relative to the output directory."""

    input: Path
    relative_output: PurePosixPath


def expand_inputs(args: Iterable[str], list_files: Iterable[str | Path] = (), output_dir: Path | None = None) -> list[Source]:
    """Every input named by ``args`` (files, directories, globs, ``@LIST``) and ``list_files``,
    in the order given (a folder's files sorted), each file once. ``PathError`` lists every
    problem: missing paths, globs or folders with no audio, unreadable list files, two inputs
    that would write the same output, an output that would replace its own input."""
    problems: list[str] = []
    sources: list[Source] = []
    skip = output_dir.resolve() if output_dir is not None else None
    for arg in args:
        if arg.startswith("@") and len(arg) > 1:
            sources += _from_list(Path(arg[1:]), skip, problems)
        else:
            sources += _expand(arg, None, skip, problems)
    for list_file in list_files:
        sources += _from_list(Path(list_file), skip, problems)
    sources = _unique(sources, output_dir, problems)
    if not sources and not problems:
        problems.append("no input files were given; name files, folders, globs or a list file (--list FILE)")
    if problems:
        raise PathError(f"{len(problems)} problem(s) with the inputs, nothing was enhanced:\n  " + "\n  ".join(problems))
    return sources


def is_batch(inputs: tuple[str, ...], output_dir: Path | None, list_files: tuple, ray_address: str | None) -> bool:
    """Whether `dfsdk run` has a corpus to enhance into --output-dir rather than one file to -o:
    not exactly one input, or an output folder, list file, Ray, ``@FILE``, a glob or a folder."""
    if len(inputs) != 1 or output_dir is not None or list_files or ray_address is not None:
        return True
    return inputs[0].startswith("@") or is_glob(inputs[0]) or Path(inputs[0]).is_dir()


def is_glob(arg: str) -> bool:
    return any(m in arg for m in _MAGIC) and not Path(arg).exists()


def _expand(arg: str, base: Path | None, skip: Path | None, problems: list[str]) -> list[Source]:
    """One argument (or list line, relative to ``base``): a file, a folder or a glob."""
    path = Path(arg) if base is None or Path(arg).is_absolute() else base / arg
    if is_glob(str(path)):
        return _from_glob(str(path), arg, skip, problems)
    if path.is_dir():
        found = [Source(f, PurePosixPath(f.relative_to(path).as_posix())) for f in _audio_files(path, skip)]
        if not found:
            problems.append(f"folder {arg} holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS)[:6])}, ...)")
        return found
    if path.is_file():
        return [Source(path, PurePosixPath(path.name))]
    problems.append(f"input {arg} does not exist" if not path.exists() else f"input {arg} is not a file or folder")
    return []


def _from_glob(pattern: str, arg: str, skip: Path | None, problems: list[str]) -> list[Source]:
    parts = Path(pattern).parts
    fixed = next(i for i, p in enumerate(parts) if any(m in p for m in _MAGIC))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    found = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        f = Path(match)
        if f.is_file() and not _hidden(f.relative_to(root)) and not _inside(f, skip):
            found.append(Source(f, PurePosixPath(f.relative_to(root).as_posix())))
        elif f.is_dir():
            found += [Source(g, PurePosixPath(g.relative_to(root).as_posix())) for g in _audio_files(f, skip)]
    if not found:
        problems.append(f"glob {arg!r} matches no file")
    return found


def _from_list(list_file: Path, skip: Path | None, problems: list[str]) -> list[Source]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"cannot read list file {list_file}: {getattr(e, 'strerror', None) or e}")
        return []
    found = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        relative = PurePosixPath(entry)
        before = len(problems)
        here = _expand(entry, list_file.parent, skip, problems)
        if not relative.is_absolute() and ".." not in relative.parts:  # keep the path below the list's folder
            here = [Source(s.input, PurePosixPath(s.input.relative_to(list_file.parent).as_posix())) for s in here]
        found += here
        for i in range(before, len(problems)):
            problems[i] = f"{list_file} line {number}: {problems[i]}"
    return found


def _audio_files(folder: Path, skip: Path | None) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(here / d, skip))
        out += [here / f for f in sorted(files) if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_EXTENSIONS]
    return out


def _hidden(relative: Path) -> bool:
    return any(p.startswith(".") and p not in (".", "..") for p in relative.parts)


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    p = path.resolve()
    return p == folder or folder in p.parents


def _unique(sources: list[Source], output_dir: Path | None, problems: list[str]) -> list[Source]:
    """Each input once, where it was first named (a folder and a glob may both name it); two
    inputs writing one output, or an output that is its own input, are problems."""
    by_output: dict[PurePosixPath, Source] = {}
    inputs: set[Path] = set()
    clashes, self_writes, unique = [], [], []
    for s in sources:
        if s.input.resolve() in inputs:
            continue  # named again (by a folder, a glob, a list): written where first named
        seen = by_output.get(s.relative_output)
        if seen is None:
            by_output[s.relative_output] = s
            inputs.add(s.input.resolve())
            unique.append(s)
            if output_dir is not None and (output_dir / s.relative_output).resolve() == s.input.resolve():
                self_writes.append(str(s.input))
        elif seen.input.resolve() != s.input.resolve():
            clashes.append(f"{seen.input} and {s.input} would both be written to {s.relative_output}")
    if clashes:
        problems.append(f"{len(clashes)} output name clash(es) (rename the inputs, or name their folders instead "
                        "of the files so the tree is mirrored): " + "; ".join(clashes[:_LISTED_PROBLEMS])
                        + (" ..." if len(clashes) > _LISTED_PROBLEMS else ""))
    if self_writes:
        problems.append(f"--output-dir {output_dir} would overwrite {len(self_writes)} input(s) "
                        f"({', '.join(self_writes[:3])}{' ...' if len(self_writes) > 3 else ''}); choose another folder")
    return unique
