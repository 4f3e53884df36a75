"""Offline path: a whole signal through the block graphs, numbers equal to streaming.

Streaming pays one graph call per 10 ms hop. Offline, the same computation runs as
vectorised DSP plus one call per component per block of frames (``<component>_block``
graphs: the sequence form with state carried between blocks), which is several times faster.
It reproduces ``EnhancementStream`` exactly, including libDF's skipping of silent hops (a
skipped hop is as if it never existed, and outputs zeros) and the delay compensation. When
libDF's gating would switch a stage off on some frame, it returns None and the caller
streams instead, so the result never depends on the path taken.
"""

from __future__ import annotations

import numpy as np

from dfnet4_sdk import dsp
from dfnet4_sdk.stream import SILENT_HOP_MEAN_SQUARE, StreamOptions, apply_stages, post_filter_libdf


def enhance_offline(backend, audio: np.ndarray, options: StreamOptions) -> np.ndarray | None:
    """Mono ``audio`` at the model rate -> enhanced audio of the same length, or None when
    gating would skip a stage on some frame (stream it instead)."""
    m = backend.manifest
    d, s = m.dsp, m.streaming
    hop, n = d.hop_size_samples, len(audio)
    n_whole = n // hop
    flush_hops = -(-m.latency_samples // hop)
    x = np.concatenate([audio, np.zeros((-n) % hop + flush_hops * hop, np.float32)]).reshape(-1, hop)
    keep = np.ones(len(x), dtype=bool)
    if options.skip_silent_hops:  # only whole input hops; the padded last hop is flush, as in streaming
        keep[:n_whole] = np.einsum("ij,ij->i", x[:n_whole], x[:n_whole]) >= SILENT_HOP_MEAN_SQUARE * hop

    fe = dsp.front_end(d)
    state = dsp.FrontEndState.initial(d)
    spec = fe.analysis(x[keep].reshape(-1), state)  # [T, F]
    feat_erb, feat_spec = fe.features(spec, state)
    outputs = _run_blocks(backend, feat_erb, feat_spec, x[keep])
    stages = [apply_stages(v, options) for v in outputs["lsnr"]]
    if any(st != (True, False, True) for st in stages):
        return None

    # Step t's mask and taps belong to frame t-L; frames before 0 are the zeros of the history.
    t_frames, lookahead, order = len(spec), s.conv_lookahead_frames, s.df_order
    past = order - 1 - s.df_lookahead_frames
    padded = np.concatenate([np.zeros((lookahead + past, d.freq_bins), np.complex64), spec])
    noisy = padded[past : past + t_frames]  # frame t-L for every step t
    enhanced = noisy * outputs["erb_mask"][:, fe.band_of_bin]
    windows = np.lib.stride_tricks.sliding_window_view(padded[:, : d.nb_df], order, axis=0)[:t_frames]  # [T, F, O]
    c = outputs["df_coefs"].reshape(t_frames, d.nb_df, order, 2)
    enhanced[:, : d.nb_df] = np.sum(windows * (c[..., 0] + 1j * c[..., 1]), axis=-1)
    if options.post_filter_beta > 0:
        enhanced = np.stack([post_filter_libdf(a, b, options.post_filter_beta) for a, b in zip(noisy, enhanced)])
    lim = options.atten_lim_gain
    if lim is not None:
        enhanced = enhanced * (1.0 - lim) + noisy * lim

    raw = np.zeros(x.shape, np.float32)
    raw[keep] = fe.synthesis(enhanced.astype(np.complex64), dsp.FrontEndState.initial(d)).reshape(-1, hop)
    return raw.reshape(-1)[m.latency_samples : m.latency_samples + n]


def _run_blocks(backend, feat_erb: np.ndarray, feat_spec: np.ndarray, hops: np.ndarray) -> dict[str, np.ndarray]:
    """The three block graphs over all frames (last block zero-padded; the padding only ever
    follows the real frames, so causality keeps it out of their outputs)."""
    m = backend.manifest
    block = m.graph("enc_block").inputs[0].shape[2]
    t_frames = len(feat_erb)
    n_blocks = -(-t_frames // block)
    pad = n_blocks * block - t_frames
    erb = np.concatenate([feat_erb, np.zeros((pad, feat_erb.shape[1]), np.float32)])
    cplx = np.concatenate([feat_spec, np.zeros((pad, feat_spec.shape[1]), np.complex64)])
    samples = np.concatenate([hops, np.zeros((pad, hops.shape[1]), np.float32)])
    state = {st.input_name: st.initial() for st in m.states}
    collected: dict[str, list[np.ndarray]] = {"lsnr": [], "erb_mask": [], "df_coefs": []}
    for b in range(n_blocks):
        frames = slice(b * block, (b + 1) * block)
        values = {
            "feat_erb": erb[frames][None, None],
            "feat_spec": np.stack([cplx[frames].real, cplx[frames].imag])[None].astype(np.float32),
            "frame_samples": samples[frames][None, None],
        }
        for g in m.block_graphs:
            feed = {t.name: state[t.name] if t.role == "state_in" else values[t.name] for t in g.inputs}
            out = backend.run(g.name, feed)
            for t in g.outputs:
                if t.role == "state_out":
                    state[t.name.replace("state_out.", "state_in.", 1)] = out[t.name]
                else:
                    values[t.name] = out[t.name]
        collected["lsnr"].append(values["lsnr"].reshape(-1))
        collected["erb_mask"].append(values["erb_mask"].reshape(block, -1))
        collected["df_coefs"].append(values["df_coefs"].reshape(block, -1))
    return {k: np.concatenate(v)[:t_frames] for k, v in collected.items()}
