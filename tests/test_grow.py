"""Growing a trained student deeper (training/grow.py): the grown model computes what the original
did, on real audio, and the added layers learn."""

from __future__ import annotations

import pytest
import torch
from audio_data import load_clip

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models import load_checkpoint, save_checkpoint
from dfnet4_sdk.models.dfnet4 import DfNet4
from dfnet4_sdk.training.data import features
from dfnet4_sdk.training.grow import grow, main


@pytest.fixture(scope="module")
def trained():
    """A student whose backbone layers are far from their initialisation (a trained one's are)."""
    torch.manual_seed(3)
    model = DfNet4.from_preset("dfnet4-dfn3conv").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".backbone.layers." in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def real_batch(trained):
    audio = load_clip("noisy_real/dns5_blind_street_48k.flac", seconds=2.0)
    return {k: v[None] for k, v in features(audio, trained.dsp).items()}


def _run(model, batch):
    return model(batch["spec"], batch["feat_erb"], batch["feat_spec"])


def test_grown_model_computes_what_the_original_did(trained, real_batch):
    grown = grow(trained, {"erb_dec": 2, "df_dec": 3})
    assert (grown.params.erb_dec_num_layers, grown.params.df_num_layers, grown.params.enc_num_layers) == (2, 3, 1)
    assert len(grown.erb_dec.backbone.layers) == 2 and len(grown.df_dec.backbone.layers) == 3
    n0, n1 = (sum(p.numel() for p in m.parameters()) for m in (trained, grown))
    assert n1 > n0 * 1.3  # three Mamba layers of width 256 were added
    with torch.no_grad():
        before, after = _run(trained, real_batch), _run(grown, real_batch)
    assert float(before[0].abs().max()) > 1e-3  # real enhanced spectra, not zeros
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    # the streaming form too: the added layers' states are part of the grown model's state
    names = {s.name for s in grown.state_specs()}
    assert {"erb_dec_mamba1_ssm", "df_dec_mamba2_conv"} <= names


def test_added_layers_learn(trained, real_batch):
    grown = grow(trained, {"erb_dec": 2}).train()
    enhanced = _run(grown, real_batch)[0]
    enhanced.square().mean().backward()
    new = grown.erb_dec.backbone.layers[1].mixer
    assert float(new.out_proj.weight.grad.abs().max()) > 0  # the zero projection moves at once
    assert float(grown.erb_dec.backbone.layers[0].mixer.in_proj.weight.grad.abs().max()) > 0


def test_what_cannot_grow_is_reported_together(trained):
    with pytest.raises(ConfigError) as e:
        grow(trained, {"erb_dec": 0, "decoder": 2})
    assert "cannot remove layers" in str(e.value) and "unknown backbone 'decoder'" in str(e.value)
    gru = DfNet4.from_preset("dfnet4-dfn3conv-gru")
    with pytest.raises(ConfigError, match="only residual Mamba layers"):
        grow(gru, {"erb_dec": 3})
    mix = DfNet4.from_preset("dfnet4-dfn3conv-mix")  # Mamba erb_dec, GRU enc and df_dec
    assert grow(mix, {"erb_dec": 2}).params.erb_dec_num_layers == 2
    with pytest.raises(ConfigError, match="df_dec's backbone is 'gru'"):
        grow(mix, {"df_dec": 3})


def test_cli_writes_a_checkpoint_that_loads(trained, tmp_path, capsys):
    save_checkpoint(trained, tmp_path / "in.pt")
    main([str(tmp_path / "in.pt"), "--df-dec-layers", "2", "-o", str(tmp_path / "out.pt")])
    assert "1,438,576 -> " in capsys.readouterr().out  # the dfnet4-dfn3conv student's size before
    grown = load_checkpoint(tmp_path / "out.pt")
    assert grown.params.df_num_layers == 2 and grown.params.erb_dec_num_layers == 1
    with pytest.raises(SystemExit, match="cannot remove layers"):
        main([str(tmp_path / "out.pt"), "--df-dec-layers", "1", "-o", str(tmp_path / "bad.pt")])
