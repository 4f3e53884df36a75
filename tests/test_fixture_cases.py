"""The golden fixtures' audio cases (schema version 2): the spec-only client
(tests/clients/spec_client.py, written from docs/BUNDLE.md) replays every case of a shipped
bundle and of a 16 kHz export, and a client that leaves out one stage (the silence rule, the
post-filter's order, the final partial hop, gating, the attenuation limit) fails that stage's case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfnet4_sdk.cli import main
from dfnet4_sdk.exporters.base import converter_for, export_bundle, synthetic_fixture_audio
from dfnet4_sdk.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "clients"))
import spec_client  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED_ONNX = REPO / "dfnet4_sdk" / "assets" / "dfnet4-lite-v1-onnx"
MIN_SNR_DB = 60.0
CASES = {"default", "every_stage", "silence", "gating", "post_filter", "atten_lim", "post_filter_atten_lim", "partial_hop"}


class NoSilenceRule(spec_client.Stream):
    def __init__(self, b, options):
        super().__init__(b, options)
        self.skip_silent = False


class NoGating(spec_client.Stream):
    def __init__(self, b, options):
        super().__init__(b, options)
        self.thresholds = np.array([-np.inf, np.inf, np.inf], np.float32)


class LimitBeforePostFilter(spec_client.Stream):
    def finish(self, Y, Xn, erb):
        beta, self.beta = self.beta, 0.0
        Y = super().finish(Y, Xn, erb)  # the limit alone
        self.beta, gain, self.atten_gain = beta, self.atten_gain, None
        Y = super().finish(Y, Xn, erb)  # then the post-filter
        self.atten_gain = gain
        return Y


class NoAttenuationLimit(spec_client.Stream):
    def __init__(self, b, options):
        super().__init__(b, options)
        self.atten_gain = None


def no_partial_hop(b, audio, options):
    """Drops the final N mod H samples instead of completing the hop (outputs zeros for them)."""
    whole = len(audio) // b.hop * b.hop
    out = spec_client.enhance(b, audio[:whole], options)
    return np.concatenate([out, np.zeros(len(audio) - whole, np.float32)])


BROKEN = {  # client -> the case it must fail
    "no silence rule": (lambda b, a, o: spec_client.enhance(b, a, o, NoSilenceRule), "silence"),
    "no gating": (lambda b, a, o: spec_client.enhance(b, a, o, NoGating), "gating"),
    "limit before post-filter": (lambda b, a, o: spec_client.enhance(b, a, o, LimitBeforePostFilter), "post_filter_atten_lim"),
    "no attenuation limit": (lambda b, a, o: spec_client.enhance(b, a, o, NoAttenuationLimit), "atten_lim"),
    "no partial hop": (no_partial_hop, "partial_hop"),
}


@pytest.fixture(scope="module")
def shipped_snrs() -> dict[str, float]:
    return spec_client.replay_fixtures(SHIPPED_ONNX)


def test_shipped_bundle_lists_every_case(shipped_snrs):
    m = json.loads((SHIPPED_ONNX / "manifest.json").read_text())
    assert m["schema_version"] == 2
    cases = {c["name"]: c for c in m["fixtures"]["cases"]}
    assert set(cases) == CASES
    assert cases["partial_hop"]["samples"] % m["dsp"]["hop_size_samples"] != 0
    fx = np.load(SHIPPED_ONNX / "fixtures.npz")
    silence = fx["cases/silence/audio_in"]
    assert np.count_nonzero(silence[: 48000 // 4]) == 0  # leading digital silence
    gating = cases["gating"]["options"]
    assert gating["min_db_thresh"] < gating["max_db_df_thresh"] < gating["max_db_erb_thresh"]


def test_spec_client_replays_every_case_of_the_shipped_bundle(shipped_snrs):
    print("\n" + "\n".join(f"{k:24s} {v:6.1f} dB" for k, v in shipped_snrs.items()))
    assert set(shipped_snrs) == CASES
    assert min(shipped_snrs.values()) >= MIN_SNR_DB


@pytest.mark.parametrize("client", sorted(BROKEN))
def test_a_client_missing_a_stage_fails_its_case(client, shipped_snrs):
    run, case = BROKEN[client]
    b = spec_client.Bundle(SHIPPED_ONNX)
    fx = np.load(SHIPPED_ONNX / "fixtures.npz")
    entry = next(c for c in b.m["fixtures"]["cases"] if c["name"] == case)
    snr = spec_client.snr_db(fx[f"cases/{case}/audio_out"], run(b, fx[f"cases/{case}/audio_in"], entry["options"]))
    print(f"\n{client}: case {case} {snr:.1f} dB (correct client {shipped_snrs[case]:.1f} dB)")
    assert snr < 40.0 <= MIN_SNR_DB <= shipped_snrs[case]


@pytest.fixture(scope="module")
def bundle_16k(tmp_path_factory):
    model = load_model("dfnet4-16k")  # an untrained preset: the recipe, not the quality, is checked
    out = tmp_path_factory.mktemp("b16k") / "dfnet4-16k-onnx"
    audio = synthetic_fixture_audio(16000, seconds=1.0)
    return export_bundle(model, converter_for("onnx"), out, fixture_audio=audio, fused=False, blocks=False)


def test_16k_export_writes_cases_the_spec_client_replays(bundle_16k):
    m = bundle_16k.manifest
    assert m.dsp.sample_rate_hz == 16000 and m.runtime.output_delay_samples == m.latency_samples == 480
    assert sum(m.tables.erb_widths) == m.dsp.fft_size // 2 + 1 and len(m.tables.erb_widths) == m.dsp.nb_erb
    cases = {c["name"]: c for c in m.fixtures["cases"]}
    assert set(cases) == CASES and cases["partial_hop"]["samples"] % 160 != 0
    snrs = spec_client.replay_fixtures(bundle_16k.root)
    print("\n" + "\n".join(f"{k:24s} {v:6.1f} dB" for k, v in snrs.items()))
    assert min(snrs.values()) >= MIN_SNR_DB
    fx = bundle_16k.load_fixtures()
    lead = round(0.25 * 16000) // 160 * 160  # whole silent hops at the start: zeros out
    assert np.count_nonzero(fx["cases/silence/audio_out"][: lead - m.latency_samples]) == 0


def test_spec_client_passes_conformance_probes(tmp_path):
    """The spec client through `dfsdk conformance --client` on quick probes (silence, partial hops)."""
    cmd = f"{sys.executable} {REPO / 'tests' / 'clients' / 'spec_client.py'} {{bundle}} {{input}} {{output}}"
    probes = "silence-leading,silence-inner,one-sample,partial-hop-plus-1,partial-hop-minus-1"
    result = CliRunner().invoke(main, ["conformance", str(SHIPPED_ONNX), "--client", cmd, "--probes", probes])
    print(result.output[-3000:])
    assert result.exit_code == 0, result.output


def test_independent_spec_only_client_passes_conformance_probes(tmp_path):
    """tests/clients/spec_only_client.py was written by a helper that read only docs/BUNDLE.md and
    a bundle, never the SDK's code (issue 16's Done-when; what it needed: BUNDLE.md, last section).
    It must keep passing as the spec and the exporter change."""
    cmd = f"{sys.executable} {REPO / 'tests' / 'clients' / 'spec_only_client.py'} {{bundle}} {{input}} {{output}}"
    probes = "real-noisy_speech_48k,silence-leading,silence-inner,one-sample,partial-hop-plus-1,partial-hop-minus-1"
    result = CliRunner().invoke(main, ["conformance", str(SHIPPED_ONNX), "--client", cmd, "--probes", probes])
    print(result.output[-3000:])
    assert result.exit_code == 0, result.output
