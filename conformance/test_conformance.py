"""model x backend x precision against PyTorch fp32, with declared tolerances.

Run `pytest conformance/ -s` (add `--full` for 10 s per cell); `dfsdk conformance --write-docs`
runs the same matrix and writes docs/CONFORMANCE.md.
"""

from __future__ import annotations

import pytest
from clips import CLIP, read_clip

from dfnet4_sdk.conformance import MATRIX, MODELS, cell_audio, cell_id, run_cell
from dfnet4_sdk.exporters.base import EXPORT_TARGETS, TOLERANCES, converter_for

CELLS = [(m, t, p) for m in MODELS for (t, p) in MATRIX]
# Each cell's export goes to the run's shared cache (tests/export_cache.py exports with the same
# fixture audio and these words: the export tests check the very bundle a cell checks).
FIXTURE_SOURCE = f"{CLIP}, 4 s to 5 s"


def test_every_registered_cell_has_a_declared_tolerance():
    """A target or precision without a tolerance entry would be an unchecked promise."""
    missing = [(t, p) for (t, p) in MATRIX if (t, p) not in TOLERANCES]
    assert not missing, f"no tolerance declared for {missing}"
    assert {t for t, _ in MATRIX} == set(EXPORT_TARGETS)


def test_every_declared_precision_is_a_registered_cell():
    """A converter that declares a precision the matrix does not check exports it unchecked."""
    from dfnet4_sdk.errors import ExportError

    for target in EXPORT_TARGETS:
        try:
            declared = set(converter_for(target).capabilities.precisions)
        except ExportError:  # its toolchain is not installed here: its cells report "unsupported"
            continue
        registered = {p for t, p in MATRIX if t == target}
        assert declared == registered, f"{target}: declared {sorted(declared)}, registered cells {sorted(registered)}"


def test_cells_for_a_model_keep_the_targets_and_precisions_asked_for():
    from dfnet4_sdk.conformance import cells_for
    from dfnet4_sdk.errors import ConfigError

    assert cells_for("dfnet4-lite-v1", targets=("onnx",), precisions=("fp32",)) == ([("dfnet4-lite-v1", "onnx", "fp32")],
                                                                                    None)
    cells, _ = cells_for("dfn3", precisions=("int8", "fp16"))
    assert cells == [("dfn3", t, p) for t, p in MATRIX if p in ("int8", "fp16")] and len(cells) == 6
    with pytest.raises(ConfigError, match=r"unknown --target \['tf'\].*; unknown --precision \['int4'\]; choose from "
                                          r"\['fp16', 'fp32', 'int8'\]"):
        cells_for("dfn3", targets=("tf",), precisions=("int4",))


@pytest.mark.parametrize("model,target,precision", CELLS, ids=[cell_id(t, p, m) for m, t, p in CELLS])
def test_cell(model, target, precision, clip_seconds, shared_exports):
    from dfnet4_sdk.exporters.cache import cached_export
    from dfnet4_sdk.models import load_model

    clip, rate = read_clip()
    audio, fixture = cell_audio(clip, rate, load_model(model).dsp.sample_rate_hz, clip_seconds)

    def export(torch_model, target, precision, fixture_audio):
        return cached_export(torch_model, target, precision, fixture_audio=fixture_audio,
                             fixture_source=FIXTURE_SOURCE, root=shared_exports)

    result = run_cell(model, target, precision, audio, fixture, export=export)
    print(
        f"\n{result.cell_id}: {result.status} on {result.execution or '-'}; worst graph error "
        f"{result.worst_graph_error:.2e} (tol {result.tolerance_graph:.0e}), audio SNR {result.audio_snr_db:.1f} dB "
        f"(tol {result.tolerance_snr_db:.0f})"
        + ("" if result.official_snr_db is None else f", vs official {result.official_snr_db:.1f} dB")
        + f" over {clip_seconds:.0f} s of {CLIP}"
    )
    if result.status == "unsupported":
        pytest.skip(f"{result.cell_id} cannot run here: {'; '.join(result.problems)}")
    assert result.status == "pass", "; ".join(result.problems)
