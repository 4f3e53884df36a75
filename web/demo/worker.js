// Inference Worker: loads the bundle once; enhances whole files, runs the self-check, and
// streams live audio chunks that the AudioWorklet sends through a MessagePort.

import { loadBrowserRuntime } from "../src/browser.js";
import { selfCheck } from "../src/selfcheck.js";
import { EnhancementStream, enhance, hopTimeSummary } from "../src/stream.js";

let runtime = null;
let live = null;

const handlers = {
  async init({ bundleUrl }) {
    runtime = await loadBrowserRuntime(bundleUrl);
    const { bundle } = runtime;
    const m = bundle.manifest;
    return { sampleRate: bundle.sampleRate, hopSize: bundle.hopSize, latencySamples: bundle.latencySamples, model: m.source_model?.name ?? m.model_family, precision: m.precision };
  },
  async selfcheck() {
    return selfCheck(runtime.bundle, runtime.pffft);
  },
  async enhance({ samples, options }) {
    const times = [];
    const out = await enhance(runtime.bundle, runtime.pffft, samples, options, times);
    return { samples: out, hopMs: hopTimeSummary(times), transfer: [out.buffer] };
  },
  async liveStart({ port, options }) {
    live?.stop();
    const stream = new EnhancementStream(runtime.bundle, runtime.pffft, options);
    let queue = Promise.resolve();
    let chunks = 0;
    let error = null;
    port.onmessage = ({ data }) => {
      // One chunk at a time, in order: the stream's state is sequential. A failure stops the
      // stream and is reported with the stats (the page shows it).
      queue = queue.then(async () => {
        if (error) return;
        try {
          const out = await stream.process(data);
          chunks += 1;
          if (out.length) port.postMessage(out, [out.buffer]);
        } catch (e) {
          error = e.message;
        }
      });
    };
    live = {
      stop() {
        port.onmessage = null;
        port.close();
        stream.dispose();
      },
      stats: () => ({ chunks, hops: stream.hopTimesMs.length, hopMs: hopTimeSummary(stream.hopTimesMs), lsnrDb: stream.lastLsnrDb, error }),
    };
    return {};
  },
  async liveStats() {
    return live ? live.stats() : null;
  },
  async liveStop() {
    const stats = live?.stats() ?? null;
    live?.stop();
    live = null;
    return stats;
  },
};

self.onmessage = async ({ data }) => {
  const { id, type, ...args } = data;
  try {
    const { transfer = [], ...result } = (await handlers[type](args)) ?? {};
    self.postMessage({ id, ok: true, result }, transfer);
  } catch (e) {
    self.postMessage({ id, ok: false, error: e.message });
  }
};
