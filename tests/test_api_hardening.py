"""The in-process API under misuse (issue 15): threads, a stream interrupted by ``enhance``, and
every argument validated with a typed error. The thread tests run in a subprocess, so a crash
(heap corruption, SIGSEGV) fails the test instead of killing pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dfnet4_sdk import Runtime
from dfnet4_sdk.errors import AudioInputError, ConfigError

TESTS_DIR = Path(__file__).resolve().parent
CLIP = "noisy_real/dns5_blind_street_48k.flac"
# Its shipped ONNX bundle has every path: the fused frame graph on IOBinding buffers (where two
# threads corrupted the heap) and the offline block graphs.
MODEL = "dfnet4-lite-v1"


@pytest.fixture(scope="module")
def rt():
    return Runtime(MODEL, backend="onnx")


@pytest.fixture(scope="module")
def noisy():
    from audio_data import load_clip

    return load_clip(CLIP, seconds=4.0)


def run_isolated(code: str, timeout_s: float = 300.0) -> str:
    """Run ``code`` in a fresh interpreter (tests/ importable); fail on any non-zero exit,
    naming the signal when it crashed. Returns its stdout."""
    from audio_data import data_file

    data_file(CLIP)  # a bare clone without ../shared/data skips here, not inside the subprocess
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=timeout_s, cwd=TESTS_DIR)
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    assert proc.returncode == 0, f"subprocess {how}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


# -- threads -----------------------------------------------------------------------------------

HAMMER = """
    import threading
    import numpy as np
    from audio_data import load_clip
    from dfnet4_sdk import Runtime

    rt = Runtime({model!r}, backend={backend!r})
    x = load_clip({clip!r}, seconds=3.0)
    short = x[:24000]
    expected = rt.enhance(short, 48000)
    totals = {{"in": 0, "out": 0}}
    count = threading.Lock()
    failures = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for i in range({iterations}):
            op = rng.integers(0, 10)
            if op < 7:  # process a random chunk
                start = int(rng.integers(0, len(x) - 2000))
                chunk = x[start : start + int(rng.integers(1, 2000))]
                out = rt.process(chunk)
                with count:
                    totals["in"] += len(chunk)
                    totals["out"] += len(out)
            elif op < 9:
                out = rt.flush()
                with count:
                    totals["out"] += len(out)
            else:
                got = rt.enhance(short, 48000)
                if not np.array_equal(got, expected):
                    failures.append(f"enhance in thread {{seed}} differs: max {{np.abs(got - expected).max()}}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals["out"] += len(rt.flush())
    assert not failures, failures
    # Each call is atomic: whatever the interleaving, every sample given comes out exactly once.
    assert totals["in"] == totals["out"], totals
    print("HAMMER_OK", totals["in"])
"""

CLONES = """
    import threading
    import numpy as np
    from audio_data import load_clip
    from dfnet4_sdk import Runtime

    rt = Runtime({model!r}, backend={backend!r})
    signals = [load_clip({clip!r}, seconds={seconds}, offset_s=1.5 * k) for k in range(4)]
    hop = rt.hop_size_samples

    def stream(r, x, chunk):
        return np.concatenate([r.process(x[i : i + chunk]) for i in range(0, len(x), chunk)] + [r.flush()])

    expected = [stream(rt.clone(), x, hop) for x in signals]  # one thread, one hop per call
    clones = [rt.clone() for _ in signals]
    assert all(c.backend is rt.backend for c in clones)
    got = [None] * len(signals)

    def worker(k):
        outs = [stream(clones[k], signals[k], (hop, 7 * hop + 13, 1000, hop)[k]) for _ in range({repeats})]
        got[k] = outs

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(signals))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, outs in enumerate(got):
        for out in outs:
            assert np.array_equal(out, expected[k]), (k, float(np.abs(out - expected[k]).max()))
    print("CLONES_OK", len(signals))
"""


def _shipped_tflite_bundle() -> str:
    """A LiteRT bundle that ships in the package (exporting one takes minutes)."""
    import importlib.util

    from dfnet4_sdk.shipped import SHIPPED_MODELS

    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("LiteRT (ai-edge-litert) is not installed")
    paths = [b.path for m in SHIPPED_MODELS.values() for b in m.bundles if b.backend == "tflite"]
    if not paths:
        pytest.skip("no shipped model has a LiteRT bundle")
    return str(paths[0])


@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_one_runtime_hammered_from_four_threads_never_crashes_and_loses_nothing(backend):
    """process / flush / enhance mixed on one shared Runtime: before the lock, heap corruption
    (SIGABRT) or SIGSEGV on onnx's IOBinding buffers; now every sample in comes out once and
    each enhance() equals the single-threaded result exactly."""
    model, backend = (_shipped_tflite_bundle(), None) if backend == "tflite" else (MODEL, backend)
    out = run_isolated(HAMMER.format(model=model, backend=backend, clip=CLIP, iterations=60))
    assert "HAMMER_OK" in out


@pytest.mark.parametrize("backend, seconds, repeats", [("onnx", 2.0, 2), ("torch", 0.5, 1), ("tflite", 1.0, 1)])
def test_clones_in_threads_equal_single_threaded_streams_exactly(backend, seconds, repeats):
    """Four clones of one loaded model, each streaming its own signal in its own thread with its
    own chunk size: bit-identical to streaming each signal alone (onnx: each stream binds its
    own buffers to the shared sessions; torch: the components hold no state; tflite: one lock
    per interpreter, each stream's buffers its own)."""
    model, backend = (_shipped_tflite_bundle(), None) if backend == "tflite" else (MODEL, backend)
    out = run_isolated(CLONES.format(model=model, backend=backend, clip=CLIP, seconds=seconds, repeats=repeats))
    assert "CLONES_OK 4" in out


@pytest.mark.slow
def test_clones_and_a_shared_runtime_in_threads_on_coreml():
    """The Core ML bundle on Linux runs the MIL reference interpreter (no state between calls):
    clones exact, a shared runtime intact. Slow: the export takes ~30 s."""
    pytest.importorskip("coremltools")
    from dfnet4_sdk.exporters.cache import cached_export
    from dfnet4_sdk.models import load_model

    bundle = str(cached_export(load_model(MODEL), "coreml").root)
    assert "CLONES_OK 4" in run_isolated(CLONES.format(model=bundle, backend=None, clip=CLIP, seconds=0.5, repeats=1))
    assert "HAMMER_OK" in run_isolated(HAMMER.format(model=bundle, backend=None, clip=CLIP, iterations=15))


# -- enhance() and a stream in progress --------------------------------------------------------


def test_enhance_in_the_middle_of_a_stream_does_not_disturb_it(rt, noisy):
    """Before: enhance() reset the stream (1440 samples lost, the state restarted)."""
    half = len(noisy) // 2 + 123
    whole = np.concatenate([rt.process(noisy), rt.flush()])
    first = rt.process(noisy[:half])
    other = rt.enhance(noisy[::-1].copy(), 48000)  # something else, on the offline path
    streamed_other = rt.enhance(noisy[:30000], 16000, chunk_seconds=0.1)  # another rate, another length
    rest = np.concatenate([rt.process(noisy[half:]), rt.flush()])
    assert other.shape == noisy.shape and streamed_other.shape == (30000,)
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)


# -- argument validation -----------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"atten_lim_db": NAN}, ["atten_lim_db"]),
        ({"atten_lim_db": INF}, ["atten_lim_db"]),
        ({"atten_lim_db": 0.0}, ["atten_lim_db"]),
        ({"atten_lim_db": "12"}, ["atten_lim_db"]),
        ({"post_filter_beta": NAN}, ["post_filter_beta"]),
        ({"post_filter_beta": -INF}, ["post_filter_beta"]),
        ({"post_filter_beta": -0.1}, ["post_filter_beta"]),
        ({"min_db_thresh": NAN, "max_db_erb_thresh": NAN, "max_db_df_thresh": NAN},
         ["min_db_thresh", "max_db_erb_thresh", "max_db_df_thresh"]),
        ({"num_threads": 100000}, ["num_threads"]),
        ({"num_threads": 0}, ["num_threads"]),
        ({"num_threads": 2.5}, ["num_threads"]),
        ({"num_threads": True}, ["num_threads"]),
        ({"offline_threads": 100000}, ["offline_threads"]),
        ({"offline_threads": -1}, ["offline_threads"]),
        ({"skip_silent_hops": "no"}, ["skip_silent_hops"]),
        # every problem in one message
        ({"atten_lim_db": NAN, "num_threads": 10**6, "offline_threads": 0, "post_filter_beta": INF},
         ["atten_lim_db", "num_threads", "offline_threads", "post_filter_beta"]),
    ],
)
def test_bad_runtime_arguments_raise_one_config_error_naming_each(kwargs, names):
    with pytest.raises(ConfigError) as info:
        Runtime(**kwargs)
    message = str(info.value)
    for name in names:
        assert f"{name} must be" in message, message
    assert message.count(" must be ") == len(names), message


def test_nan_attenuation_limit_no_longer_reaches_the_audio():
    """Before: StreamOptions(atten_lim_db=nan) was accepted and every output sample was NaN."""
    from dfnet4_sdk.stream import StreamOptions

    with pytest.raises(ConfigError, match="atten_lim_db must be a finite number"):
        StreamOptions(atten_lim_db=NAN)
    # Legitimate extremes still work: -inf / inf switch a gate off, a negative limit is libDF's |x|.
    opts = StreamOptions(min_db_thresh=-INF, max_db_erb_thresh=INF, max_db_df_thresh=INF, atten_lim_db=-12.0)
    assert opts.atten_lim_gain == pytest.approx(10 ** (-12 / 20))


def test_thread_bound_accepts_the_machine_and_refuses_a_runaway():
    from dfnet4_sdk.runtime import MAX_THREADS

    assert MAX_THREADS >= 4 * (os.cpu_count() or 1) and MAX_THREADS >= 64
    r = Runtime(MODEL, num_threads=os.cpu_count() or 1, offline_threads=MAX_THREADS)
    assert r.offline_threads == MAX_THREADS
    with pytest.raises(ConfigError, match=f"from 1 to {MAX_THREADS}"):
        Runtime(num_threads=MAX_THREADS + 1)


@pytest.mark.parametrize("rate", [NAN, INF, 0, -48000, 44100.5, 1_000_000, "48000", True])
def test_bad_sample_rates_are_refused(rt, rate):
    """Before: NaN and inf raised a bare ValueError / OverflowError from int(), and
    input_sample_rate=0 was silently taken as 'the model's rate'."""
    with pytest.raises(AudioInputError, match="input_sample_rate must be an integer"):
        Runtime(input_sample_rate=rate)
    with pytest.raises(AudioInputError, match="sample_rate must be an integer"):
        rt.enhance(np.zeros(4800, np.float32), rate)


@pytest.mark.parametrize("chunk_seconds", [0, 0.0, -1.0, NAN, INF, "1"])
def test_bad_chunk_seconds_are_refused(rt, chunk_seconds):
    """Before: 0 and negative silently fell back to one hop; NaN raised a bare ValueError."""
    with pytest.raises(ConfigError, match="chunk_seconds must be a finite number"):
        rt.enhance(np.zeros(4800, np.float32), 48000, chunk_seconds=chunk_seconds)


@pytest.mark.parametrize("shape", [(1, 48000), (2, 48000), (1, 480), (8, 4800)])
def test_channels_first_arrays_are_refused_with_the_fix(rt, shape):
    """Before: process(x[None, :48000]) was taken as 48000 channels of one sample (338 s, empty
    result)."""
    chunk = np.zeros(shape, np.float32)
    for call in (lambda: rt.process(chunk), lambda: rt.enhance(chunk, 48000)):
        with pytest.raises(AudioInputError, match=r"channels-first \[C, N\]; pass \[N, C\].*\.T"):
            call()
    assert rt.process(np.zeros(480, np.float32)).shape == (0,)  # the stream is still usable
    rt.reset()


def test_short_multichannel_chunks_are_still_samples_first(rt):
    """The channels-first guess never refuses a plausible [N, C]: one stereo sample, 4 channels."""
    assert rt.process(np.zeros((1, 2), np.float32)).shape == (0, 2)
    rt.reset()
    assert rt.process(np.zeros((3, 16), np.float32)).shape == (0, 16)
    rt.reset()


@pytest.mark.parametrize("scalar", [np.float32(0.5), 0.5, np.array(0.5), np.int16(3)])
def test_a_scalar_chunk_is_a_typed_error(rt, scalar):
    """Before: IndexError (tuple index out of range) from inside process()."""
    with pytest.raises(AudioInputError, match=r"single number.*np\.array\(\[x\]\)"):
        rt.process(scalar)
    with pytest.raises(AudioInputError, match="single number"):
        rt.enhance(scalar, 48000)


def test_a_chunk_with_no_channels_is_a_typed_error(rt):
    with pytest.raises(AudioInputError, match="no channels"):
        rt.process(np.zeros((480, 0), np.float32))


# -- the same checks reach the command line ----------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--atten-lim-db", "nan"], "atten_lim_db must be a finite number"),
        (["--threads", "100000"], "num_threads must be an integer from 1 to"),
        (["--offline-threads", "0"], "offline_threads must be an integer from 1 to"),
        (["--post-filter-beta", "inf"], "post_filter_beta must be a finite number"),
    ],
)
def test_dfsdk_run_refuses_bad_values_before_writing_anything(tmp_path, noisy, args, message):
    """Before: `--atten-lim-db nan` wrote a full-scale output with exit 0; `--threads 100000`
    ran away to 16 GB."""
    import soundfile as sf
    from click.testing import CliRunner

    from dfnet4_sdk.cli import main

    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, noisy[:24000], 48000)
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(out), "--model", MODEL, "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
