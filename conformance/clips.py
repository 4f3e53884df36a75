"""The real clip every conformance cell streams (../shared/data; a bare clone skips the cells)."""

from __future__ import annotations

import numpy as np
import pytest

from dfnet4_sdk.audio_io import read_audio
from dfnet4_sdk.shared_data import (
    NOISY_CLIP,
    REQUIRE_ENV_VAR,
    missing_data_reason,
    shared_data_dir,
    shared_data_present,
    shared_data_required,
)

DATA_DIR = shared_data_dir()
CLIP = NOISY_CLIP  # real noisy speech, CC BY 4.0 (DNS5 blind test)
MISSING_DATA = missing_data_reason(DATA_DIR)


def read_clip() -> tuple[np.ndarray, int]:
    """CLIP as read ([N, C] float32) and its rate; each cell takes its part with
    ``dfnet4_sdk.conformance.cell_audio``, as ``dfsdk conformance`` does. Skips the test when the
    data folder is absent (an error where $DFNET4_SDK_REQUIRE_DATA is set); a missing clip in a
    folder that is there is an error."""
    if not shared_data_present(DATA_DIR):
        if shared_data_required():
            raise FileNotFoundError(f"{REQUIRE_ENV_VAR} is set, but the conformance suite {MISSING_DATA}")
        pytest.skip(MISSING_DATA)
    path = DATA_DIR / CLIP
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from {DATA_DIR}, which is there: restore the file")
    return read_audio(path)
