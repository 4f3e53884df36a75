"""A client for `dfsdk conformance --client` that runs the SDK itself, with optional deliberate
faults a port could have (tests/test_client_check.py):

    python sdk_client.py [--ignore-silence] [--drop-partial-hop] BUNDLE INPUT OUTPUT

--ignore-silence    runs every hop (no skipping of hops whose mean square is below 1e-7)
--drop-partial-hop  never feeds the input's last partial hop; pads the output with zeros instead
"""

import argparse

import numpy as np
import soundfile as sf

from dfnet4_sdk import Runtime

parser = argparse.ArgumentParser()
parser.add_argument("--ignore-silence", action="store_true")
parser.add_argument("--drop-partial-hop", action="store_true")
parser.add_argument("bundle")
parser.add_argument("input")
parser.add_argument("output")
args = parser.parse_args()

audio, rate = sf.read(args.input, dtype="float32")
rt = Runtime(args.bundle, skip_silent_hops=not args.ignore_silence)
n = len(audio)
if args.drop_partial_hop:
    audio = audio[: n // rt.hop_size_samples * rt.hop_size_samples]
out = np.concatenate([rt.process(audio), rt.flush()]) if len(audio) else np.zeros(0, np.float32)
out = np.concatenate([out, np.zeros(n - len(out), np.float32)])
sf.write(args.output, out, rate, subtype="FLOAT", format="WAV")
