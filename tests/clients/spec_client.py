"""A bundle client written from docs/BUNDLE.md alone: numpy + onnxruntime + soundfile, no SDK code.

    python tests/clients/spec_client.py BUNDLE INPUT.wav OUTPUT.wav [--options JSON]
    python tests/clients/spec_client.py BUNDLE --fixtures        # replay the bundle's audio cases

Input and output are mono float32 WAV at the bundle's sample rate (the `dfsdk conformance
--client` contract). Runs the component graphs of an ONNX bundle per hop, exactly as the
page's "Running a bundle, per hop" and "Start, end and alignment" say.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


class Bundle:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.m = json.loads((self.root / "manifest.json").read_text())
        d, s = self.m["dsp"], self.m["streaming"]
        self.sr, self.n_fft, self.hop = d["sample_rate_hz"], d["fft_size"], d["hop_size_samples"]
        self.F, self.E, self.D = self.n_fft // 2 + 1, d["nb_erb"], d["nb_df"]
        self.O, self.Ld, self.L = s["df_order"], s["df_lookahead_frames"], s["conv_lookahead_frames"]
        self.alpha = np.float32(d["norm_alpha"])
        self.widths = np.array(d["erb_widths"], dtype=np.int64)
        n = np.arange(self.n_fft, dtype=np.float64)
        self.window = np.sin(np.pi / 2 * np.sin(np.pi * (n + 0.5) / self.n_fft) ** 2).astype(np.float32)
        self.wnorm = np.float32(self.hop / (self.n_fft * np.sum(self.window.astype(np.float64) ** 2)))
        self.graphs = [g for g in self.m["graphs"] if g["kind"] == "component"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sessions = {g["name"]: ort.InferenceSession(str(self.root / g["file"]), opts) for g in self.graphs}
        self.component_names = {g["name"] for g in self.graphs}

    def initial_states(self) -> dict[str, np.ndarray]:
        states = {}
        for s in self.m["states"]:
            if s["graph"] not in self.component_names:
                continue
            if "init_values" in s:
                states[s["name"]] = np.array(s["init_values"], np.float32).reshape(s["shape"])
            else:
                states[s["name"]] = np.full(s["shape"], s["init_value"], np.float32)
        return states


class Stream:
    def __init__(self, b: Bundle, options: dict):
        self.b = b
        o = {**b.m["runtime"]["options"], **options}
        self.skip_silent = bool(o["skip_silent_hops"])
        self.thresholds = np.array([o["min_db_thresh"], o["max_db_erb_thresh"], o["max_db_df_thresh"]], np.float32)
        self.beta = float(o["post_filter_beta"])
        lim = abs(float(o["atten_lim_db"]))
        self.atten_gain = None if lim >= 100 else np.float32(10 ** (-lim / 20))
        self.silent = float(b.m["runtime"]["silent_hop_mean_square"])
        mem = b.n_fft - b.hop
        self.ana = np.zeros(mem, np.float32)
        self.syn = np.zeros(mem, np.float32)
        self.s = np.array(b.m["dsp"]["erb_norm_init"], np.float32)
        self.mnorm = np.array(b.m["dsp"]["spec_norm_init"], np.float32)
        self.K = b.L + b.O - b.Ld
        self.history = np.zeros((self.K, b.F), np.complex64)
        self.states = b.initial_states()

    def run_graph(self, name: str, values: dict) -> dict:
        g = next(g for g in self.b.graphs if g["name"] == name)
        feed = {}
        for t in g["inputs"]:
            key = t["name"]
            value = self.states[key.removeprefix("state_in.")] if t["role"] == "state_in" else values[key]
            feed[g["tensor_names"].get(key, key)] = np.asarray(value, np.float32).reshape(t["shape"])
        names = [o["name"] for o in g["outputs"]]
        out = dict(zip(names, self.b.sessions[name].run([g["tensor_names"].get(n, n) for n in names], feed)))
        for o in g["outputs"]:
            if o["role"] == "state_out":
                self.states[o["name"].removeprefix("state_out.")] = out[o["name"]]
        return out

    def finish(self, Y: np.ndarray, Xn: np.ndarray, erb: bool) -> np.ndarray:
        """6. post-filter (when the ERB stage ran), then 7. attenuation limit."""
        b = self.b
        if self.beta > 0 and erb:
            F4 = b.F // 4 * 4
            r = np.clip(np.abs(Y[:F4]) / (np.abs(Xn[:F4]) + np.float32(1e-12)), np.float32(1e-12), np.float32(1))
            beta = np.float32(self.beta)
            Y[:F4] = Y[:F4] * ((1 + beta) / (1 + beta / np.sin(np.float32(np.pi / 2) * r) ** 2))
        if self.atten_gain is not None:
            G = self.atten_gain
            Y = (Y * (np.float32(1) - G) + Xn * G).astype(np.complex64)
        return Y

    def hop(self, x: np.ndarray, padding: bool) -> np.ndarray:
        b = self.b
        x = x.astype(np.float32)
        # 0. silent hops
        if self.skip_silent and not padding and float(np.dot(x, x)) < self.silent * b.hop:
            return np.zeros(b.hop, np.float32)
        # 1. analysis
        buf = np.concatenate([self.ana, x])
        self.ana = buf[b.hop:].copy()
        X = (np.fft.rfft(buf * b.window) * b.wnorm).astype(np.complex64)
        self.history = np.concatenate([self.history[1:], X[None]])
        # 2. features
        power = (X.real * X.real + X.imag * X.imag).astype(np.float32)
        weights = np.repeat((np.float32(1) / b.widths.astype(np.float32)), b.widths)
        starts = np.concatenate([[0], np.cumsum(b.widths)[:-1]])
        e = np.log10(np.add.reduceat(power * weights, starts) + np.float32(1e-10)) * np.float32(10)
        self.s = (e * (np.float32(1) - b.alpha) + self.s * b.alpha).astype(np.float32)
        feat_erb = ((e - self.s) / np.float32(40)).astype(np.float32)
        self.mnorm = (np.abs(X[: b.D]) * (np.float32(1) - b.alpha) + self.mnorm * b.alpha).astype(np.float32)
        u = X[: b.D] / np.sqrt(self.mnorm)
        values = {"feat_erb": feat_erb.reshape(1, 1, 1, b.E),
                  "feat_spec": np.stack([u.real, u.imag]).astype(np.float32).reshape(1, 2, 1, b.D),
                  "frame_samples": x.reshape(1, 1, 1, b.hop)}
        # 3. encoder and gating
        enc = self.run_graph("enc", values)
        values.update(enc)
        lsnr = np.float32(np.asarray(enc["lsnr"]).reshape(-1)[0])
        lo, max_erb, max_df = self.thresholds
        zero = bool(lsnr < lo)
        erb = not (zero or lsnr > max_erb)
        df = not (zero or lsnr > max_erb or lsnr > max_df)
        # 4. decoders
        P = b.O - 1 - b.Ld
        Xn = self.history[P]
        if erb:
            mask = np.asarray(self.run_graph("erb_dec", values)["erb_mask"], np.float32).reshape(-1)
            g = np.repeat(mask, b.widths)
        else:
            g = np.full(b.F, 0.0 if zero else 1.0, np.float32)
        Y = (Xn * g).astype(np.complex64)
        if df:
            coefs = np.asarray(self.run_graph("df_dec", values)["df_coefs"], np.float32).reshape(-1)
            c = (coefs[0::2] + 1j * coefs[1::2]).astype(np.complex64).reshape(b.D, b.O)
            acc = np.zeros(b.D, np.complex64)
            for i in range(b.O):
                acc = acc + c[:, i] * self.history[i][: b.D]
            Y[: b.D] = acc
        Y = self.finish(Y, Xn, erb)
        # 8. synthesis
        y = (np.fft.irfft(Y, b.n_fft) * b.n_fft).astype(np.float32) * b.window
        out = y[: b.hop] + self.syn[: b.hop]
        self.syn = np.concatenate([self.syn[b.hop:], np.zeros(b.hop, np.float32)]) + y[b.hop:]
        return out.astype(np.float32)


def enhance(bundle: Bundle, audio: np.ndarray, options: dict | None = None, stream=Stream) -> np.ndarray:
    b = bundle
    st = stream(b, options or {})
    n = len(audio)
    delay = b.m["runtime"]["output_delay_samples"]
    whole = n // b.hop * b.hop
    out = [st.hop(audio[i: i + b.hop], padding=False) for i in range(0, whole, b.hop)]
    tail = np.concatenate([audio[whole:], np.zeros((-n) % b.hop + math.ceil(delay / b.hop) * b.hop, np.float32)])
    out += [st.hop(tail[i: i + b.hop], padding=True) for i in range(0, len(tail), b.hop)]
    return np.concatenate(out)[delay: delay + n]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - test) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)


def replay_fixtures(root: str, run=enhance) -> dict[str, float]:
    """SNR (dB) of ``run(bundle, audio_in, options)`` against each audio case's audio_out."""
    b = Bundle(root)
    fx = np.load(b.root / b.m["fixtures"]["file"])
    return {c["name"]: snr_db(fx[f"cases/{c['name']}/audio_out"], run(b, fx[f"cases/{c['name']}/audio_in"], c["options"]))
            for c in b.m["fixtures"]["cases"]}


def main(argv: list[str]) -> int:
    import soundfile as sf

    if len(argv) == 2 and argv[1] == "--fixtures":
        for name, snr in replay_fixtures(argv[0]).items():
            print(f"{name:24s} {snr:7.1f} dB")
        return 0
    options = json.loads(argv[argv.index("--options") + 1]) if "--options" in argv else {}
    root, src, dst = argv[:3]
    b = Bundle(root)
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    if rate != b.sr or audio.shape[1] != 1:
        print(f"expected mono audio at {b.sr} Hz, got {audio.shape[1]} channels at {rate} Hz", file=sys.stderr)
        return 2
    sf.write(dst, enhance(b, audio[:, 0], options), b.sr, subtype="FLOAT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
