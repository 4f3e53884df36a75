// Demo page: the UI thread only decodes, plays and shows; inference runs in worker.js, audio I/O
// for the microphone in worklet.js. `window.demo` exposes the same actions to the headless test.

import { writeWav } from "../src/wav.js";

const $ = (id) => document.getElementById(id);
const bundleUrl = new URLSearchParams(location.search).get("bundle") ?? "/bundle/";
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
let nextId = 0;
const pending = new Map();
worker.onmessage = ({ data }) => {
  const { resolve, reject } = pending.get(data.id);
  pending.delete(data.id);
  data.ok ? resolve(data.result) : reject(new Error(data.error));
};
function call(type, args = {}, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, type, ...args }, transfer);
  });
}

const options = () => ({ atten_lim_db: Number($("atten-lim-db").value), post_filter_beta: Number($("post-filter-beta").value) });
const show = (id, text) => ($(id).textContent = text);
const wavUrl = (samples, rate) => URL.createObjectURL(new Blob([writeWav(samples, rate)], { type: "audio/wav" }));

const demo = {
  info: null,
  lastEnhanced: null,
  lastHopMs: null,
  ready: call("init", { bundleUrl }).then(
    (info) => {
      demo.info = info;
      show("status", `${info.model} (${info.precision}), ${info.sampleRate} Hz, hop ${info.hopSize}, latency ${(1000 * info.latencySamples / info.sampleRate).toFixed(0)} ms: ready`);
      for (const id of ["enhance", "mic-start", "selfcheck"]) $(id).disabled = false;
      return info;
    },
    (e) => {
      show("status", `cannot load the bundle at ${bundleUrl}: ${e.message}`);
      throw e;
    },
  ),

  async selfcheck() {
    show("selfcheck-result", "running...");
    const r = await call("selfcheck");
    show("selfcheck-result", `${r.passed ? "PASSED" : "FAILED"}\n` +
      `graphs: worst relative error ${r.worstGraph.toExponential(2)} (tolerance ${r.tolerance.graph_rel_error}), ${r.graphs.hopMs.toFixed(2)} ms per frame\n` +
      `features: feat_erb ${r.features.featErb.toExponential(2)}, feat_spec ${r.features.featSpec.toExponential(2)}\n` +
      `audio: ${r.audio.snrDb.toFixed(1)} dB from PyTorch (tolerance ${r.tolerance.audio_snr_db}), ${r.audio.hopMs.median.toFixed(2)} ms per hop (median)\n` +
      (r.cases.length ? `cases: ${r.cases.map((c) => `${c.name} ${c.snrDb.toFixed(1)} dB`).join(", ")}` : "cases: none in this bundle (schema 1)"));
    $("selfcheck-result").dataset.json = JSON.stringify(r);
    return r;
  },

  async enhanceFile() {
    const file = $("file").files[0];
    if (!file) return show("file-result", "choose an audio file first");
    const rate = demo.info.sampleRate;
    show("file-result", "decoding...");
    // Decoding in a context at the model's rate resamples the file to it.
    const ctx = new OfflineAudioContext(1, 1, rate);
    let decoded;
    try {
      decoded = await ctx.decodeAudioData(await file.arrayBuffer());
    } catch (e) {
      return show("file-result", `cannot decode ${file.name}: ${e.message ?? e}; choose a WAV, FLAC, MP3 or Ogg file`);
    }
    const mono = new Float32Array(decoded.length);
    for (let c = 0; c < decoded.numberOfChannels; c++) {
      const ch = decoded.getChannelData(c);
      for (let i = 0; i < mono.length; i++) mono[i] += ch[i] / decoded.numberOfChannels;
    }
    $("noisy-audio").src = wavUrl(mono, rate);
    show("file-result", `enhancing ${(mono.length / rate).toFixed(1)} s...`);
    const r = await call("enhance", { samples: mono, options: options() });
    demo.lastEnhanced = r.samples;
    const url = wavUrl(r.samples, rate);
    $("enhanced-audio").src = url;
    Object.assign($("download"), { href: url, hidden: false });
    const t = r.hopMs;
    show("file-result", `${file.name}: ${(r.samples.length / rate).toFixed(2)} s enhanced; per ${(1000 * demo.info.hopSize / rate).toFixed(0)} ms hop: median ${t.median.toFixed(2)} ms, mean ${t.mean.toFixed(2)} ms, p95 ${t.p95.toFixed(2)} ms`);
    demo.lastHopMs = t;
    return r;
  },

  async micStart() {
    const rate = demo.info.sampleRate;
    const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    const ctx = new AudioContext({ sampleRate: rate, latencyHint: "interactive" });
    await ctx.audioWorklet.addModule(new URL("./worklet.js", import.meta.url));
    const node = new AudioWorkletNode(ctx, "dfnet-io", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    const channel = new MessageChannel(); // worklet <-> worker, bypassing this thread
    await call("liveStart", { port: channel.port1, options: options() }, [channel.port1]);
    node.port.postMessage({ port: channel.port2 }, [channel.port2]);
    ctx.createMediaStreamSource(media).connect(node).connect(ctx.destination);
    demo.live = { ctx, media };
    $("mic-start").disabled = true;
    $("mic-stop").disabled = false;
    demo.liveTimer = setInterval(async () => {
      const s = await call("liveStats");
      if (s?.error) show("mic-result", `stopped: ${s.error}`);
      else if (s) show("mic-result", `${s.hops} hops enhanced, median ${s.hopMs.median.toFixed(2)} ms per hop, local SNR ${s.lsnrDb.toFixed(1)} dB`);
    }, 500);
  },

  async micStop() {
    clearInterval(demo.liveTimer);
    demo.live?.media.getTracks().forEach((t) => t.stop());
    await demo.live?.ctx.close();
    demo.live = null;
    const stats = await call("liveStop");
    $("mic-start").disabled = false;
    $("mic-stop").disabled = true;
    return stats;
  },
};
window.demo = demo;

const report = (id) => (e) => show(id, `error: ${e.message}`);
$("selfcheck").onclick = () => demo.selfcheck().catch(report("selfcheck-result"));
$("enhance").onclick = () => demo.enhanceFile().catch(report("file-result"));
$("mic-start").onclick = () => demo.micStart().catch(report("mic-result"));
$("mic-stop").onclick = () => demo.micStop().catch(report("mic-result"));
