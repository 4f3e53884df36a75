"""The contract every model of the family follows (DFN3 imported, DfNet4, DfNet4Lite).

A model is three streaming components, exported as three graphs:

    enc(feat_erb, feat_spec, [state]) -> named intermediates + lsnr
    erb_dec(<enc outputs it names>, [state]) -> erb_mask
    df_dec(<enc outputs it names>, [state]) -> df_coefs

Dimension letters: B batch, T frames, E nb_erb bands, F nb_df deep-filtered bins,
O df_order taps, C channels.

Tensors that cross components are passed by name, never by position. Every conv time
buffer and recurrent state is an explicit, named state tensor with batch on axis 0; graphs
take it as ``state_in.<name>`` and return it as ``state_out.<name>``.

Alignment: components are causal and never shift time themselves. Output frame t of a
component has seen feature frames 0..t. With ``conv_lookahead_frames = L``, the mask and DF
coefficients produced at step t are applied to spectrum frame t - L; the DF taps of that
frame cover spectrum frames t-L-(O-1-df_lookahead) .. t-L+df_lookahead, oldest tap first.
``EnhancementModel.forward`` (training form) applies that shift itself.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from dfnet4_sdk.params import DspParams
from dfnet4_sdk.states import StateSpec

# Names of the tensors the streaming front-end feeds to ``enc`` every frame.
FRAME_INPUT_SHAPES = {
    "feat_erb": "[B, 1, T, E]  normalised ERB log-power features",
    "feat_spec": "[B, 2, T, F]  unit-normalised complex features, real/imag on axis 1",
    # Optional: only models whose enc lists it in input_names (a waveform path) receive it.
    "frame_samples": "[B, 1, T, hop]  the hop of raw input samples that completed frame t",
}
# Names of the model outputs the streaming front-end consumes every frame.
MODEL_OUTPUT_SHAPES = {
    "lsnr": "[B, T, 1]  local SNR estimate in dB",
    "erb_mask": "[B, 1, T, E]  ERB-band gains in [0, 1]",
    "df_coefs": "[B, T, F, 2*O]  complex DF taps, layout (tap, re/im) in the last axis",
}
COMPONENT_NAMES = ("enc", "erb_dec", "df_dec")
# The fused frame graph (models/frame.py) steps a gated stage (erb_dec, df_dec) with this extra
# entry in its state mapping: [B], the streams for which libDF runs the stage this frame (bool,
# or int64 0/1 where conv buffers are to be selected by a row gather: ``layers.shift_buffer``).
# Every stateful block of those components then returns, for the other streams, their states
# unchanged (tests/test_stages.py checks it for every model).
STAGE_RUNS = "stage_runs"
OUTPUT_TIME_AXIS = {"lsnr": 1, "erb_mask": 2, "df_coefs": 1}

TensorDict = dict[str, Tensor]


class StreamingComponent(nn.Module):
    """One exported graph. Subclasses set ``input_names`` / ``output_names`` and implement
    ``state_specs``, ``forward`` (sequence) and ``step`` (one frame, T == 1)."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def state_specs(self) -> tuple[StateSpec, ...]:
        raise NotImplementedError

    def initial_state(self, batch_size: int = 1) -> TensorDict:
        p = next(self.parameters(), None)
        device = p.device if p is not None else None
        return {s.name: s.initial_tensor(batch_size, device=device) for s in self.state_specs()}

    def forward(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor] | None = None) -> tuple[TensorDict, TensorDict]:
        """Sequence form over all T frames; ``state`` None means the initial state."""
        if state is None:
            state = self.initial_state(next(iter(inputs.values())).shape[0])
        return self._run(inputs, state, step=False)

    def step(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> tuple[TensorDict, TensorDict]:
        """Exact single-frame form: inputs have T == 1; returns (outputs, new state).
        Must be export-friendly: no Python loops over time, no einsum/cumsum, no chunk."""
        return self._run(inputs, state, step=True)

    def _run(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor], step: bool) -> tuple[TensorDict, TensorDict]:
        """Shared body of ``forward`` and ``step`` for components whose two forms differ only
        in which form of each block they call; others override ``forward`` and ``step``."""
        raise NotImplementedError


def chain_components(
    components: Mapping[str, StreamingComponent], values: Mapping[str, Tensor], state: Mapping[str, Tensor] | None,
    step: bool = False,
) -> tuple[TensorDict, TensorDict]:
    """enc -> erb_dec -> df_dec, tensors passed by name: each component reads the names in its
    ``input_names`` from ``values`` (the frame inputs, then what earlier components produced) and
    its own states from ``state`` (None: the initial states). ``step``: the single-frame form.
    Returns (``values`` plus every component output, the new states of all three)."""
    values = dict(values)
    new_state: TensorDict = {}
    for name in COMPONENT_NAMES:
        comp = components[name]
        if state is None:
            comp_state = comp.initial_state(values["feat_erb"].shape[0])
        else:
            comp_state = {s.name: state[s.name] for s in comp.state_specs()}
        outputs, comp_new = (comp.step if step else comp)({k: values[k] for k in comp.input_names}, comp_state)
        values.update(outputs)
        new_state.update(comp_new)
    return values, new_state


class EnhancementModel(nn.Module):
    """Base of DFN3, DfNet4 and DfNet4Lite: three components plus the alignment facts."""

    family: str = "abstract"

    def __init__(self, dsp: DspParams, df_order: int, df_lookahead_frames: int, conv_lookahead_frames: int):
        super().__init__()
        if conv_lookahead_frames < df_lookahead_frames:
            # The DF window of frame t-L reaches t-L+df_lookahead; it must already be analysed.
            raise ValueError(
                f"conv_lookahead_frames ({conv_lookahead_frames}) must be >= df_lookahead_frames ({df_lookahead_frames})"
            )
        self.dsp = dsp
        self.df_order = df_order
        self.df_lookahead_frames = df_lookahead_frames
        self.conv_lookahead_frames = conv_lookahead_frames

    # Subclasses assign these three in __init__.
    enc: StreamingComponent
    erb_dec: StreamingComponent
    df_dec: StreamingComponent

    @property
    def components(self) -> dict[str, StreamingComponent]:
        return {name: getattr(self, name) for name in COMPONENT_NAMES}

    @property
    def latency_samples(self) -> int:
        """Algorithmic delay: STFT overlap plus the conv look-ahead."""
        return self.dsp.stft_delay_samples + self.conv_lookahead_frames * self.dsp.hop_size_samples

    def state_specs(self) -> tuple[StateSpec, ...]:
        specs = tuple(s for c in self.components.values() for s in c.state_specs())
        names = [s.name for s in specs]
        assert len(names) == len(set(names)), f"state names must be unique across components: {names}"
        return specs

    def initial_state(self, batch_size: int = 1) -> TensorDict:
        state: TensorDict = {}
        for c in self.components.values():
            state.update(c.initial_state(batch_size))
        return state

    def config_dict(self) -> dict:
        """Everything needed to rebuild this model (saved inside checkpoints and manifests)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping) -> "EnhancementModel":
        """Inverse of ``config_dict``: rebuild an (untrained) model of this family."""
        raise NotImplementedError

    @property
    def frame_input_names(self) -> tuple[str, ...]:
        return self.enc.input_names

    def forward_components(self, frame_inputs: Mapping[str, Tensor], state: Mapping[str, Tensor] | None = None):
        """Sequence form of the three components, unshifted: returns ({lsnr, erb_mask, df_coefs}, state).
        ``frame_inputs`` holds the tensors named in ``frame_input_names`` (FRAME_INPUT_SHAPES)."""
        values, new_state = chain_components(self.components, frame_inputs, state)
        return {k: values[k] for k in MODEL_OUTPUT_SHAPES}, new_state

    def step(self, frame_inputs: Mapping[str, Tensor], state: Mapping[str, Tensor]):
        """One frame (T == 1) through all three components: ({lsnr, erb_mask, df_coefs}, state)."""
        values, new_state = chain_components(self.components, frame_inputs, state, step=True)
        return {k: values[k] for k in MODEL_OUTPUT_SHAPES}, new_state

    def forward(
        self, spec: Tensor, feat_erb: Tensor, feat_spec: Tensor, frame_samples: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training form: every output aligned to spectrum frame t, exactly as streaming computes it.

        spec [B, 1, T, F_all, 2] noisy spectrum; feat_erb [B, 1, T, E]; feat_spec [B, 2, T, F];
        frame_samples [B, 1, T, hop] only for models whose enc takes it.
        Returns (enhanced spec [B, 1, T, F_all, 2], erb_mask [B, 1, T, E], lsnr [B, T, 1],
        df_coefs [B, T, F, 2*O]) with every output aligned to spectrum frame t.
        """
        inputs = {"feat_erb": feat_erb, "feat_spec": feat_spec, "frame_samples": frame_samples}
        out = self.forward_aligned(spec, inputs)
        return out["enhanced"], out["erb_mask"], out["lsnr"], out["df_coefs"]

    def forward_aligned(
        self, spec: Tensor, inputs: Mapping[str, Tensor | None], time_axes: Mapping[str, int] = OUTPUT_TIME_AXIS
    ) -> TensorDict:
        """The training form keeping every component output named in ``time_axes`` (name -> its
        time axis; those the components produce), each aligned to spectrum frame t, and
        ``enhanced`` [B, 1, T, F_all, 2]. ``inputs`` holds the frame inputs (``forward``'s)."""
        from dfnet4_sdk.models import spectral

        # Exactly what streaming does: the components see every feature frame from the first
        # on, and the output of step t belongs to spectrum frame t - L. (Upstream DFN3 instead
        # drops the first L feature frames; the difference fades within a second.)
        lookahead = self.conv_lookahead_frames
        frame_inputs = {}
        for name in self.frame_input_names:
            if inputs.get(name) is None:
                raise ValueError(f"{self.family} needs the frame input {name!r}: {FRAME_INPUT_SHAPES[name]}")
            frame_inputs[name] = spectral.pad_time_end(inputs[name], lookahead, time_axis=2)
        values, _ = chain_components(self.components, frame_inputs, None)
        out = {
            k: values[k].narrow(axis, lookahead, values[k].shape[axis] - lookahead)
            for k, axis in time_axes.items() if k in values
        }
        out["enhanced"] = spectral.enhance_sequence(
            spec, out["erb_mask"], out["df_coefs"], self.dsp, self.df_order, self.df_lookahead_frames
        )
        return out
