"""README.md as a user runs it: every dfsdk command of its fenced blocks and its Python example.

- ```bash: each line is split at ``&&`` into commands. A command starting with ``dfsdk`` (or
  ``.venv/bin/dfsdk``) is run, after the substitutions of ``TINY`` (smaller models, fewer steps,
  where the README's settings take minutes); it must exit 0 and leave the outputs it names
  (``dfsdk run``: as long as its input, at its rate, with its channels; a bundle: its manifest;
  a report: a Markdown table...). A plain shell helper (``HELPERS``: ``mkdir``) runs as it is.
  Every other command must be in ``SKIPPED`` with the reason it cannot run here: a README command
  that is neither run nor listed fails the test.
- ```python: executed with ``audio`` (16 kHz) and ``chunks`` (48 kHz) defined; the lengths it
  promises are checked.
- an untagged block is plain text (the layout tree) and may hold no command.

The blocks run in README order in one folder (later blocks use what earlier ones made: the
``dfn3_onnx`` bundle of "Using it" is evaluated in "Evaluate"), beside a ``../shared/data`` made
for the test: the project's speech, noise and manifest (links), 2 s of three dev_eval pairs and
6 s of the noisy_real street clip, also named by ``$DFNET4_SDK_DATA``. Without the project's audio
(a bare clone) the commands that need it skip with a message naming it; the others run on the
demo clip.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_data import DATA_DIR, MISSING_DATA, data_present
from test_migration import Block, _check_run_outputs, parse_guide

from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.exporters.quantize_cli import EVAL_CLIPS, STREET_CLIP

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXAMPLE_CLIP = REPO / "examples" / "noisy_speech_48k.flac"
CLIP_SECONDS = 2.0
TEXT_BLOCK = ""  # an untagged fence: plain text, never run
DFSDK = re.compile(r"^(\.venv/bin/)?dfsdk\b")

# README commands that cannot run in a test, each with why (matched after comments are removed).
SKIPPED = {
    "python3 -m venv .venv": "creates the virtual environment the test already runs in",
    '.venv/bin/pip install -e ".[all]"': "installs the package the test already imports (no network here)",
    ".venv/bin/python -m pytest -q -n 2 --dist loadfile": "the test suite itself, which holds this test",
    "ray start --head": "starts a Ray head node, a service that outlives the test (the local --ray line runs)",
    "ray start --address=HEAD_IP:6379": "joins a cluster at a placeholder address",
    "dfsdk run /shared/corpus --output-dir /shared/enhanced --ray=auto":
        "needs the Ray cluster of the two lines above (tests/test_ray_batch.py covers address handling)",
    'dfsdk conformance bundles/dfn3-onnx --client "node web/cli.js {bundle} {input} {output}"':
        "needs web/'s npm packages (npm ci in web/): tests/test_web.py runs this very check on a bundle it exports, "
        "and tests/test_client_check.py runs --client with dfsdk run and faulty clients",
}

# Plain shell commands the README's examples need, run as they are.
HELPERS = {"mkdir -p bundles"}

# Tiny settings: (pattern, replacement, why), applied in order to every command that runs.
TINY = [
    (r"^\.venv/bin/dfsdk\b", "dfsdk", "the venv's dfsdk is first on PATH"),
    (r"^(dfsdk export --model) dfn3(?= --target (tflite|coreml)\b)", r"\1 dfnet4-lite-v1",
     "exporting DFN3 to LiteRT or CoreML takes minutes here; the lite model goes through the same exporter"),
    (r"(?<= )/shared/", "shared/", "the cluster's shared filesystem: a folder of the test's"),
    (r"(--calibration \S+)", r"\1 --calibration-seconds 3", "calibrate on 3 s instead of 24 s"),
    (r"^dfsdk conformance --write-docs \S+$", r"\g<0> --target onnx --precision fp32 dfnet4-lite-v1",
     "the whole matrix exports every model to every target and precision; one cell writes the same table "
     "(conformance/ checks every cell)"),
    (r"^dfsdk quantize --report \S+$", r"\g<0> --model dfnet4-lite-v1 --target onnx --seconds 1 --calibration-seconds 3",
     "the report's smallest model x target, on 1 s of audio, its static schemes calibrated on 3 s instead of 24 s"),
    (r"^(dfsdk (distill|train)) --config \S+", r"\1 --config training/configs/tiny.toml --steps 2",
     "the CI config (0.5 s segments, batch 2) for 2 steps"),
    (r"^(dfsdk qat .*)--steps \d+", r"\1--steps 2 --config training/configs/tiny.toml",
     "2 steps of the CI config"),
]
# Commands that read the project's audio (the README's own paths, or training data).
NEEDS_DATA = re.compile(r"\.\./shared/data|^dfsdk (eval|distill|train|qat)\b")
# Options naming what a command writes, and options that take a value (for `dfsdk run` inputs).
OUTPUT_OPTIONS = ("-o", "--output", "--out", "--csv", "--markdown", "--plot", "--report", "--write-docs")


def parse_readme(text: str) -> list[Block]:
    return parse_guide(text, README.name)[0]


def commands(block: Block) -> list[tuple[int, str]]:
    """(README line, command) of a bash block: comments removed, lines split at `&&`."""
    found = []
    for i, line in enumerate(block.code.splitlines()):
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        found += [(block.line + i, part.strip()) for part in line.split("&&") if part.strip()]
    return found


def tiny(command: str) -> str:
    for pattern, replacement, _why in TINY:
        command = re.sub(pattern, replacement, command)
    return command


BLOCKS = parse_readme(README.read_text())


# -- the folder the README runs in -----------------------------------------------------------


def _cut(src: Path, dst: Path, seconds: float) -> None:
    audio, rate = sf.read(src, dtype="float32")
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, audio[: int(seconds * rate)], rate, subtype="PCM_16")


def _fake_shared_data(root: Path, my_set: Path) -> None:
    """../shared/data for the commands: the real corpora (links) and a tiny dev_eval / noisy_real;
    ``my_set`` (the README's own eval folder) gets the same dev_eval pair."""
    root.mkdir(parents=True)
    if not data_present():
        return
    for entry in DATA_DIR.iterdir():
        if entry.name not in ("dev_eval", "noisy_real"):
            (root / entry.name).symlink_to(entry.resolve())
    ears = DATA_DIR / "dev_eval" / "ears"
    for i, clip in enumerate(EVAL_CLIPS):  # the clips `dfsdk quantize --report` scores
        for name in (f"{clip}_noisy.flac", f"{clip}_clean.flac"):
            _cut(ears / name, root / "dev_eval" / "ears" / name, CLIP_SECONDS)
            if i == 0:
                _cut(ears / name, my_set / name, CLIP_SECONDS)
    _cut(DATA_DIR / STREET_CLIP, root / STREET_CLIP, 6.0)  # the report's fixture is its second 4 to 5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The folder every README block runs in (shared, in README order), with the files it names."""
    top = tmp_path_factory.mktemp("readme")
    d = top / "repo"
    (d / "examples").mkdir(parents=True)
    shutil.copy2(EXAMPLE_CLIP, d / "examples" / EXAMPLE_CLIP.name)
    shutil.copytree(REPO / "training" / "configs", d / "training" / "configs")
    _fake_shared_data(top / "shared" / "data", d / "my_set")
    audio, rate = sf.read(EXAMPLE_CLIP, dtype="float32")
    audio = audio[: int(CLIP_SECONDS * rate)]
    for name in ("noisy.flac", "noisy.wav", "corpus/p1.wav", "corpus/sub/p2.flac", "more/m1.flac", "extra/e1.wav"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(d / name, audio, rate, subtype="PCM_16")
    (d / "extra.txt").write_text("extra/e1.wav\n")
    (d / "shared").mkdir()  # stands for the cluster's /shared
    (d / "docs").mkdir()  # the README runs from the repository root, where docs/ is
    return d


def _run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               DFNET4_SDK_DATA=str(cwd.parent / "shared" / "data"))
    return subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


# -- what each command must have written -------------------------------------------------------


def _written(args: list[str], cwd: Path) -> list[Path]:
    return [cwd / args[i + 1] for i, a in enumerate(args[:-1]) if a in OUTPUT_OPTIONS]


def _check_outputs(command: str, cwd: Path) -> None:
    args = shlex.split(command)
    if args[:2] == ["dfsdk", "run"]:
        _check_run_outputs(command, cwd)
    for path in _written(args, cwd):
        where = f"`{command}` exited 0 but"
        assert path.exists(), f"{where} wrote no {path.relative_to(cwd)}"
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            assert files, f"{where} left {path.relative_to(cwd)} empty"
            if args[1] in ("export", "qat"):  # a bundle whose every graph matches its sha256
                Bundle.load(path / "int8_onnx" if args[1] == "qat" else path, verify=True)
            if args[1] in ("distill", "train"):
                assert (path / "state.pt").stat().st_size > 0, f"{where} saved no state.pt"
            if "--plot" in args and path == cwd / args[args.index("--plot") + 1]:
                assert any(p.suffix == ".png" for p in files), f"{where} drew no PNG in {path.name}"
        elif path.suffix == ".md":
            rows = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
            assert len(rows) >= 3, f"{where} wrote no table (header, rule and a row) in {path.name}"
        elif path.suffix == ".csv":
            with path.open() as f:
                assert len(list(csv.DictReader(f))) >= 1, f"{where} wrote no rows in {path.name}"
        else:
            assert path.stat().st_size > 0, f"{where} wrote an empty {path.name}"
    if "--archive" in args:
        out = _written(args, cwd)[0]
        assert out.with_name(out.name + ".dfbundle").stat().st_size > 0, f"`{command}`: no .dfbundle"


# -- the blocks ------------------------------------------------------------------------------------


# Blocks that take minutes even with TINY (training, QAT and int8 exports: 6 min on the loaded 2-core machine).
SLOW_BLOCK = re.compile(r"^dfsdk (distill|train|qat|quantize)\b", re.M)


@pytest.mark.parametrize("block", [pytest.param(b, marks=[pytest.mark.slow] if SLOW_BLOCK.search(b.code) else [])
                                   for b in BLOCKS if b.lang == "bash"], ids=lambda b: f"bash:line{b.line}")
def test_bash_block_runs(block, workdir):
    skipped = []
    for line, command in commands(block):
        if command in SKIPPED:
            skipped.append(command)
            continue
        if command in HELPERS:
            result = _run_shell(command, workdir)
            assert result.returncode == 0, f"{README.name}:{line}: `{command}`: {result.stderr}"
            continue
        assert DFSDK.match(command), (
            f"{README.name}:{line}: `{command}` is neither a dfsdk command nor in SKIPPED; "
            "run it here or list it with the reason it cannot run")
        run = tiny(command)
        if NEEDS_DATA.search(run) and not data_present():
            skipped.append(command)
            continue
        result = _run_shell(run, workdir)
        assert result.returncode == 0, (f"{README.name}:{line}: `{run}` exit {result.returncode}\n"
                                        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
        _check_outputs(run, workdir)
    if skipped and len(skipped) == len(commands(block)):
        pytest.skip(f"nothing runnable: {skipped}" + ("" if data_present() else f"; {MISSING_DATA}"))


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=lambda b: f"python:line{b.line}")
def test_python_block_runs(block, workdir, monkeypatch):
    import soxr

    noisy, rate = sf.read(workdir / "noisy.wav", dtype="float32")
    audio = soxr.resample(noisy, rate, 16000).astype(np.float32)
    sizes = [480, 100, 1000, 7, 4800]
    chunks = np.split(noisy, np.cumsum(sizes))
    monkeypatch.chdir(workdir)
    namespace = {"__name__": "__readme_example__", "audio": audio, "chunks": chunks}
    # Padded so that a traceback points at the README's own line numbers.
    exec(compile("\n" * (block.line - 1) + block.code, str(README), "exec"), namespace)
    assert namespace["clean"].shape == audio.shape
    assert sum(len(o) for o in namespace["out"]) == noisy.shape[0]


# -- the README itself and the tables of this file -----------------------------------------------


def test_every_block_is_known_and_every_command_accounted_for():
    unknown = [(b.line - 1, b.lang) for b in BLOCKS if b.lang not in ("bash", "python", TEXT_BLOCK)]
    assert not unknown, f"code blocks with no known tag (line, tag): {unknown}; use bash, python or none (text)"
    hidden = [b.line - 1 for b in BLOCKS if b.lang == TEXT_BLOCK
              and (re.search(r"^\s*(\.venv/bin/)?dfsdk\b", b.code, re.M) or "import dfnet4_sdk" in b.code)]
    assert not hidden, f"untagged (never run) blocks hold dfsdk commands or dfnet4_sdk code, at lines {hidden}"
    assert any("dfnet4_sdk" in b.code for b in BLOCKS if b.lang == "python"), "the Python example was not found"
    all_commands = [c for b in BLOCKS if b.lang == "bash" for _, c in commands(b)]
    stray = [c for c in all_commands if not DFSDK.match(c) and c not in SKIPPED and c not in HELPERS]
    assert not stray, f"README commands neither run nor listed in SKIPPED: {stray}"
    stale = [c for c in [*SKIPPED, *HELPERS] if c not in all_commands]
    assert not stale, f"SKIPPED or HELPERS list commands the README no longer has: {stale}"
    unused = [p for p, _, _ in TINY if not any(re.search(p, c) for c in all_commands + [tiny(c) for c in all_commands])]
    assert not unused, f"TINY substitutions that match no README command: {unused}"
    assert sum(bool(DFSDK.match(c)) for c in all_commands) >= 20, all_commands
