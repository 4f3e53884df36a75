#!/usr/bin/env python
"""Per-hop client for a dfn bundle (ONNX component graphs), written from BUNDLE.md only.

usage: python client.py BUNDLE_DIR INPUT.wav OUTPUT.wav
"""
import json
import math
import os
import sys

import numpy as np
import onnxruntime as ort

F32 = np.float32


class Bundle:
    def __init__(self, bdir):
        self.dir = bdir
        with open(os.path.join(bdir, "manifest.json")) as fh:
            self.m = m = json.load(fh)
        dsp, st = m["dsp"], m["streaming"]
        self.sr = int(dsp["sample_rate_hz"])
        self.N = int(dsp["fft_size"])
        self.H = int(dsp["hop_size_samples"])
        self.F = self.N // 2 + 1
        self.E = int(dsp["nb_erb"])
        self.D = int(dsp["nb_df"])
        self.O = int(st["df_order"])
        self.Ld = int(st["df_lookahead_frames"])
        self.L = int(st["conv_lookahead_frames"])
        self.a = F32(dsp["norm_alpha"])
        self.erb_widths = [int(w) for w in dsp["erb_widths"]]
        assert sum(self.erb_widths) == self.F and len(self.erb_widths) == self.E
        self.erb_norm_init = np.asarray(dsp["erb_norm_init"], dtype=F32)
        self.spec_norm_init = np.asarray(dsp["spec_norm_init"], dtype=F32)
        n = np.arange(self.N, dtype=np.float64)
        self.window = np.sin(0.5 * np.pi * np.sin(np.pi * (n + 0.5) / self.N) ** 2).astype(F32)
        wn = self.H / (self.N * np.sum(self.window.astype(np.float64) ** 2))
        self.wnorm = F32(wn)
        rt = m["runtime"]
        self.silent_ms = float(rt["silent_hop_mean_square"])
        self.defaults = dict(rt["options"])
        self.delay = int(rt["output_delay_samples"])
        # band index per bin
        self.band_of_bin = np.repeat(np.arange(self.E), self.erb_widths)
        self.inv_w = (1.0 / np.asarray(self.erb_widths, dtype=F32)).astype(F32)
        self.band_starts = np.concatenate([[0], np.cumsum(self.erb_widths)[:-1]]).astype(np.int64)

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.graphs = []  # component graphs, manifest order
        for g in m["graphs"]:
            if g["kind"] != "component":
                continue
            sess = ort.InferenceSession(os.path.join(bdir, g["file"]), so,
                                        providers=["CPUExecutionProvider"])
            names = g.get("tensor_names") or {}
            self.graphs.append(dict(entry=g, sess=sess, names=names))
        self.gmap = {g["entry"]["name"]: g for g in self.graphs}
        self.states = [s for s in m["states"] if s["graph"] in self.gmap]

    def init_states(self):
        out = {}
        for s in self.states:
            shape = tuple(s["shape"])
            if s.get("init_values") is not None:
                out[s["name"]] = np.asarray(s["init_values"], dtype=F32).reshape(shape)
            else:
                out[s["name"]] = np.full(shape, s["init_value"], dtype=F32)
        return out

    def run_graph(self, gname, feeds, states):
        """feeds: our-name -> array for feature/intermediate inputs. Updates states in place.
        Returns our-name -> array of all outputs."""
        g = self.gmap[gname]
        e, names = g["entry"], g["names"]
        inp = {}
        for t in e["inputs"]:
            nm = t["name"]
            if t["role"] == "state_in":
                val = states[nm[len("state_in."):]]
            else:
                val = feeds[nm]
            inp[names.get(nm, nm)] = np.ascontiguousarray(val, dtype=F32).reshape(t["shape"])
        onames = [t["name"] for t in e["outputs"]]
        res = g["sess"].run([names.get(n, n) for n in onames], inp)
        out = dict(zip(onames, res))
        for n in onames:
            if n.startswith("state_out."):
                states[n[len("state_out."):]] = out[n]
        return out


class Stream:
    def __init__(self, b, options=None):
        self.b = b
        opts = dict(b.defaults)
        if options:
            opts.update(options)
        self.opts = opts
        self.ana = np.zeros(b.N - b.H, F32)
        self.syn = np.zeros(b.N - b.H, F32)
        self.s = b.erb_norm_init.copy()
        self.mnorm = b.spec_norm_init.copy()
        self.K = b.L + b.O - b.Ld
        self.hist = np.zeros((self.K, b.F), np.complex64)
        self.states = b.init_states()

    def hop(self, x, padding=False):
        b, o = self.b, self.opts
        x = np.asarray(x, dtype=F32)
        H, N = b.H, b.N
        # 0. silence
        if o["skip_silent_hops"] and not padding:
            e = np.sum(x * x, dtype=F32)
            if e < F32(b.silent_ms * H):
                return np.zeros(H, F32)
        # 1. analysis
        buf = np.concatenate([self.ana, x])
        self.ana = buf[H:].copy() if N - H > 0 else np.zeros(0, F32)
        X = (np.fft.rfft(buf * b.window) * b.wnorm).astype(np.complex64)
        self.hist = np.concatenate([self.hist[1:], X[None]], axis=0)
        # 2. features
        p = (X.real * X.real + X.imag * X.imag).astype(F32)
        e = np.add.reduceat(p * b.inv_w[b.band_of_bin], b.band_starts).astype(F32)
        e = (F32(10.0) * np.log10(e + F32(1e-10))).astype(F32)
        a = b.a
        self.s = (e * (F32(1) - a) + self.s * a).astype(F32)
        feat_erb = ((e - self.s) / F32(40)).astype(F32).reshape(1, 1, 1, b.E)
        Xd = X[: b.D]
        self.mnorm = (np.abs(Xd).astype(F32) * (F32(1) - a) + self.mnorm * a).astype(F32)
        u = (Xd / np.sqrt(self.mnorm)).astype(np.complex64)
        feat_spec = np.stack([u.real, u.imag]).astype(F32).reshape(1, 2, 1, b.D)
        feeds = {"feat_erb": feat_erb, "feat_spec": feat_spec,
                 "frame_samples": x.reshape(1, 1, 1, H)}
        # 3. encoder + gating
        eo = b.run_graph("enc", feeds, self.states)
        feeds.update(eo)
        lsnr = F32(np.asarray(eo["lsnr"]).reshape(-1)[0])
        mn, mxe, mxd = (F32(o["min_db_thresh"]), F32(o["max_db_erb_thresh"]),
                        F32(o["max_db_df_thresh"]))
        if np.isnan(lsnr):
            zero, erb, df = False, True, True
        else:
            zero = bool(lsnr < mn)
            erb = not (zero or lsnr > mxe)
            df = not (zero or lsnr > mxe or lsnr > mxd)
        # 4. decoders
        erb_mask = df_coefs = None
        if erb:
            erb_mask = b.run_graph("erb_dec", feeds, self.states)["erb_mask"]
        if df:
            df_coefs = b.run_graph("df_dec", feeds, self.states)["df_coefs"]
        # 5. mask + deep filter
        P = b.O - 1 - b.Ld
        Xn = self.hist[P]
        if erb:
            g = np.asarray(erb_mask, F32).reshape(-1)[b.band_of_bin]
        elif zero:
            g = np.zeros(b.F, F32)
        else:
            g = np.ones(b.F, F32)
        Y = (Xn * g).astype(np.complex64)
        if df:
            c = np.asarray(df_coefs, F32).reshape(b.D, b.O, 2)
            c = (c[..., 0] + 1j * c[..., 1]).astype(np.complex64)  # [D, O]
            win = self.hist[: b.O, : b.D].T  # [D, O]
            Y[: b.D] = np.sum(c * win, axis=1).astype(np.complex64)
        # 6. post-filter
        beta = float(o["post_filter_beta"])
        if beta > 0 and erb:
            F4 = 4 * (b.F // 4)
            r = np.abs(Y[:F4]) / (np.abs(Xn[:F4]) + F32(1e-12))
            r = np.clip(r, F32(1e-12), F32(1)).astype(F32)
            bt = F32(beta)
            sn = np.sin(F32(np.pi / 2) * r).astype(F32)
            pf = ((F32(1) + bt) / (F32(1) + bt / (sn * sn))).astype(F32)
            Y[:F4] = (Y[:F4] * pf).astype(np.complex64)
        # 7. attenuation limit
        lim = abs(float(o["atten_lim_db"]))
        if lim < 100:
            G = F32(10 ** (-lim / 20))
            Y = (Y * (F32(1) - G) + Xn * G).astype(np.complex64)
        # 8. synthesis
        y = (np.fft.irfft(Y, N) * N).astype(F32) * b.window
        out = y[:H] + self.syn[:H]
        mem = np.concatenate([self.syn[H:], np.zeros(H, F32)]) + y[H:]
        self.syn = mem.astype(F32)
        return out.astype(F32)


def enhance(b, audio, options=None):
    audio = np.asarray(audio, dtype=F32).reshape(-1)
    n = audio.shape[0]
    st = Stream(b, options)
    H = b.H
    outs = []
    full = n // H
    for i in range(full):
        outs.append(st.hop(audio[i * H:(i + 1) * H]))
    rem = n - full * H
    if rem:
        x = np.zeros(H, F32)
        x[:rem] = audio[full * H:]
        outs.append(st.hop(x, padding=True))
    extra = int(math.ceil(b.delay / H))
    for _ in range(extra):
        outs.append(st.hop(np.zeros(H, F32), padding=True))
    y = np.concatenate(outs)
    return y[b.delay:b.delay + n].astype(F32)


def main(argv):
    import soundfile as sf
    if len(argv) != 4:
        print(__doc__)
        return 2
    b = Bundle(argv[1])
    audio, sr = sf.read(argv[2], dtype="float32", always_2d=True)
    if sr != b.sr:
        raise SystemExit(f"input sample rate {sr} != bundle's {b.sr}")
    if audio.shape[1] != 1:
        raise SystemExit("input must be mono")
    y = enhance(b, audio[:, 0])
    sf.write(argv[3], y, b.sr, subtype="FLOAT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
