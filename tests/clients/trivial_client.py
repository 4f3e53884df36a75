"""Clients that do no enhancement, or break the output contract, which `dfsdk conformance --client`
must fail (tests/test_client_check.py):

    python trivial_client.py copy|zeros|short|pcm16 INPUT OUTPUT

copy: the input as it is; zeros: silence; short: the input less its last sample; pcm16: the input
as 16-bit PCM instead of 32-bit float.
"""

import sys

import numpy as np
import soundfile as sf

mode, src, dst = sys.argv[1:4]
audio, rate = sf.read(src, dtype="float32")
out = {"copy": audio, "zeros": np.zeros_like(audio), "short": audio[:-1], "pcm16": audio}[mode]
sf.write(dst, out, rate, subtype="PCM_16" if mode == "pcm16" else "FLOAT", format="WAV")
