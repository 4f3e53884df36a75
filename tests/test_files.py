"""`enhance_file`: disk to disk in blocks, equal to `Runtime.enhance`, flat memory, the input's
sample format, clipping counted, file modes that follow the umask, checks before the work."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from audio_data import REPO_ROOT, load_clip

from dfnet4_sdk.errors import AudioFileError, ConfigError, PathError
from dfnet4_sdk.files import enhance_file
from dfnet4_sdk.metrics import snr_db
from dfnet4_sdk.runtime import Runtime


LITE = "dfnet4-lite-v1"  # a shipped model with block graphs: the offline path


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return Runtime(LITE)


@pytest.fixture(scope="module")
def street_48k() -> np.ndarray:
    return load_clip("noisy_real/dns5_blind_street_48k.flac", seconds=5.0)


class Bar:
    """What enhance_file asks of a progress bar (tqdm's methods), recording every update."""

    def __init__(self, total: int):
        self.total, self.updates, self.resets, self.closed = total, [], 0, False

    def update(self, n: int) -> None:
        self.updates.append(n)

    def reset(self) -> None:
        self.updates, self.resets = [], self.resets + 1

    def close(self) -> None:
        self.closed = True


def _never_called():
    raise AssertionError("the model was loaded although the output could not be written")


@pytest.mark.parametrize("rate, channels", [(48000, 1), (16000, 2)], ids=["48k-mono", "16k-stereo-resampled"])
def test_block_path_equals_enhance_on_the_whole_file(rt, tmp_path, rate, channels):
    x = load_clip("noisy_real/gtcrn_mix_16k.flac", sample_rate=rate, seconds=4.0)
    audio = np.stack([np.roll(x, 997 * c) for c in range(channels)], axis=1)
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, audio, rate, subtype="FLOAT")
    bars = []
    summary = enhance_file(src, out, rt, block_seconds=0.37, progress_factory=lambda n: bars.append(Bar(n)) or bars[-1])
    y, sr = sf.read(out, dtype="float32", always_2d=True)
    whole = rt.enhance(audio, rate)
    assert summary["path"] == "offline" and sr == rate and y.shape == audio.shape
    assert snr_db(whole, y) >= 60.0
    # The bar moved once per block (11 blocks of 0.37 s), to the end.
    bar = bars[0]
    assert bar.closed and len(bar.updates) == 11 and sum(bar.updates) == bar.total == len(audio)


def test_block_path_streams_the_file_when_gating_acts(tmp_path):
    """A gate the offline path cannot follow: the file is read again and streamed, as enhance() does."""
    gated = Runtime(LITE, min_db_thresh=5.0)
    x = load_clip("noisy_real/gtcrn_mix_16k.flac", sample_rate=16000, seconds=3.0)
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, x, 16000, subtype="FLOAT")
    bar = []
    summary = enhance_file(src, out, gated, block_seconds=0.5, progress_factory=lambda n: bar.append(Bar(n)) or bar[-1])
    y, _ = sf.read(out, dtype="float32")
    assert summary["path"] == "streaming" and bar[0].resets == 1 and sum(bar[0].updates) == len(x)
    assert snr_db(gated.enhance(x, 16000), y) >= 60.0


# Peak memory of the probe process itself: bench's VmHWM reader, because ru_maxrss survives exec
# on Linux and reported the pytest process that spawned the probe (2.7 GB late in a full run).
MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    from dfnet4_sdk.bench import _peak_rss_mb
    from dfnet4_sdk.files import enhance_file
    from dfnet4_sdk.runtime import Runtime
    rt = Runtime(sys.argv[3])
    before = _peak_rss_mb()
    summary = enhance_file(sys.argv[1], sys.argv[2], rt)
    print(json.dumps({"before_mb": before, "peak_mb": _peak_rss_mb(), "path": summary["path"]}))
""")


def test_peak_memory_stays_flat_for_a_ten_minute_file(tmp_path, street_48k):
    """10 min of 48 kHz audio, enhanced in a fresh process: the peak stays below 300 MB (the
    issue's target for an hour). The whole-file path holds at least the float32 signal and its
    complex spectrum (4 + 8 * 481 / 480 bytes per sample: 346 MB here, 1156 MB peak measured)."""
    src, out = tmp_path / "long.wav", tmp_path / "long_out.wav"
    minutes, rate = 10, 48000
    with sf.SoundFile(src, "w", rate, 1, subtype="PCM_16") as f:
        for _ in range(minutes * 60 * rate // len(street_48k)):
            f.write(street_48k)
    assert sf.info(src).frames == minutes * 60 * rate
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(src), str(out), LITE], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    whole_path_floor_mb = result["before_mb"] + minutes * 60 * rate * (4 + 8 * 481 / 480) / 2**20
    assert result["path"] == "offline"
    assert result["peak_mb"] < 300.0 < whole_path_floor_mb, result
    assert sf.info(out).frames == minutes * 60 * rate


@pytest.mark.parametrize(
    "in_name, in_subtype, out_name, expected",
    [
        ("in.wav", "PCM_16", "out.wav", "PCM_16"),
        ("in.wav", "PCM_24", "out.wav", "PCM_24"),
        ("in.wav", "FLOAT", "out.wav", "FLOAT"),
        ("in.flac", "PCM_24", "out.wav", "PCM_24"),
        ("in.wav", "FLOAT", "out.flac", "PCM_24"),  # FLAC has no float: its widest PCM
    ],
)
def test_output_keeps_the_input_sample_format(rt, tmp_path, street_48k, in_name, in_subtype, out_name, expected):
    src, out = tmp_path / in_name, tmp_path / out_name
    sf.write(src, street_48k[:48000], 48000, subtype=in_subtype)
    assert enhance_file(src, out, rt)["subtype"] == expected
    assert sf.info(out).subtype == expected


def test_subtype_option_chooses_and_is_checked_before_the_model_loads(rt, tmp_path, street_48k):
    src = tmp_path / "in.wav"
    sf.write(src, street_48k[:48000], 48000, subtype="PCM_16")
    assert enhance_file(src, tmp_path / "f.wav", rt, subtype="float")["subtype"] == "FLOAT"
    assert sf.info(tmp_path / "f.wav").subtype == "FLOAT"
    with pytest.raises(ConfigError, match="FLAC takes: .*PCM_24"):
        enhance_file(src, tmp_path / "f.flac", _never_called, subtype="FLOAT")
    assert sorted(os.listdir(tmp_path)) == ["f.wav", "in.wav"]  # no f.flac, no temporary


def test_clipping_by_an_integer_format_is_counted(rt, tmp_path, street_48k):
    """Float input far above full scale: float output keeps every sample; 16-bit output clips
    exactly the samples beyond full scale and says how many."""
    loud = 6.0 * street_48k[: 2 * 48000] / np.abs(street_48k).max()
    src = tmp_path / "loud.wav"
    sf.write(src, loud, 48000, subtype="FLOAT")
    as_float = enhance_file(src, tmp_path / "f.wav", rt)
    y, _ = sf.read(tmp_path / "f.wav", dtype="float32")
    beyond = int(np.count_nonzero(np.abs(y) > 1.0))
    assert as_float["clipped_samples"] == 0 and beyond > 1000
    as_pcm = enhance_file(src, tmp_path / "i.wav", rt, subtype="PCM_16")
    assert as_pcm["clipped_samples"] == beyond
    z, _ = sf.read(tmp_path / "i.wav", dtype="float32")
    assert np.abs(z).max() <= 1.0 and np.sign(z[np.abs(y) > 1.0]).tolist() == np.sign(y[np.abs(y) > 1.0]).tolist()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_new_output_mode_follows_the_umask(rt, tmp_path, street_48k, umask, mode):
    src = tmp_path / "in.wav"
    sf.write(src, street_48k[:24000], 48000)
    old = os.umask(umask)
    try:
        enhance_file(src, tmp_path / "out.wav", rt)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.wav").st_mode) == mode


def test_overwrite_keeps_the_mode_of_the_replaced_file(rt, tmp_path, street_48k):
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, street_48k[:24000], 48000)
    out.write_bytes(b"old")
    os.chmod(out, 0o664)
    old = os.umask(0o077)
    try:
        enhance_file(src, out, rt, overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o664 and sf.info(out).frames == 24000


@pytest.mark.parametrize(
    "name, rate, message",
    [
        ("out.mp3", 96000, "MPEG-1/2/2.5 only supports sample rates"),
        ("out.raw", 48000, "headerless .raw"),
        ("out.xyz", 48000, "unknown audio format"),
        ("missing_dir/out.wav", 48000, "does not exist"),
    ],
)
def test_unwritable_outputs_fail_before_the_model_loads(tmp_path, name, rate, message):
    src = tmp_path / "in.wav"
    sf.write(src, np.zeros(rate // 10, np.float32) + 0.01, rate)
    with pytest.raises(PathError, match=message):
        enhance_file(src, tmp_path / name, _never_called)
    assert os.listdir(tmp_path) == ["in.wav"]  # no output, no temporary left behind


def test_a_failed_write_is_an_error_and_leaves_nothing(rt, tmp_path, street_48k, monkeypatch):
    """A full disk mid-file (libsndfile's write error, simulated): a typed error, no output, no temporary."""
    src = tmp_path / "in.wav"
    sf.write(src, street_48k[:48000], 48000)

    def full_disk(self, data):
        raise sf.LibsndfileError(0, "Error : write failed: No space left on device")

    monkeypatch.setattr(sf.SoundFile, "write", full_disk)
    with pytest.raises(AudioFileError, match="failed writing .*out.wav.*No space left"):
        enhance_file(src, tmp_path / "out.wav", rt)
    assert os.listdir(tmp_path) == ["in.wav"]
