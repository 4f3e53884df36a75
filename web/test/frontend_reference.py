"""The Python runtime's front-end on a clip, for test/frontend.test.js: the spectrum of each hop
and the features computed from it (numpy's float32 arithmetic), written as .npz.

usage: python test/frontend_reference.py INPUT.wav OUTPUT.npz [HOPS]"""

import sys

import numpy as np
import soundfile as sf

from dfnet4_sdk import dsp
from dfnet4_sdk.params import DspParams

audio, rate = sf.read(sys.argv[1], dtype="float32")
params = DspParams(sample_rate_hz=rate)
front_end, state = dsp.FrontEnd(params), dsp.FrontEndState.initial(params)
hop = params.hop_size_samples
spectra, feat_erb, feat_spec = [], [], []
for t in range(int(sys.argv[3]) if len(sys.argv) > 3 else len(audio) // hop):
    spec = front_end.analysis_frame(audio[t * hop : (t + 1) * hop], state)
    erb, unit = front_end.features_frame(spec, state)
    spectra.append(np.stack([spec.real, spec.imag], axis=-1))  # [F, 2]
    feat_erb.append(erb)
    feat_spec.append(np.stack([unit.real, unit.imag]))  # [2, D]
np.savez(sys.argv[2], spec=np.array(spectra, np.float32), feat_erb=np.array(feat_erb, np.float32),
         feat_spec=np.array(feat_spec, np.float32))
