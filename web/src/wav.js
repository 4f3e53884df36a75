// Mono 32-bit float WAV, the one format the CLI takes and writes (what `dfsdk conformance
// --client` exchanges). Anything else is refused with what was expected and what was found.

export class WavError extends Error {
  constructor(message) {
    super(message);
    this.name = "WavError";
  }
}

const WAVE_FORMAT_PCM = 1;
const WAVE_FORMAT_IEEE_FLOAT = 3;
const WAVE_FORMAT_EXTENSIBLE = 0xfffe;

/** bytes -> {sampleRate, samples: Float32Array}; refuses anything but mono float32. */
export function readWav(bytes, name = "input") {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (o) => (o + 4 <= bytes.length ? String.fromCharCode(...bytes.subarray(o, o + 4)) : "");
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new WavError(`${name} is not a WAV file (no RIFF/WAVE header); convert it to mono 32-bit float WAV`);
  let fmt = null;
  let data = null;
  for (let o = 12; o + 8 <= bytes.length; ) {
    const id = tag(o);
    const size = view.getUint32(o + 4, true);
    const body = o + 8;
    if (id === "fmt ") {
      let format = view.getUint16(body, true);
      if (format === WAVE_FORMAT_EXTENSIBLE && size >= 40) format = view.getUint16(body + 24, true);
      fmt = { format, channels: view.getUint16(body + 2, true), sampleRate: view.getUint32(body + 4, true), bits: view.getUint16(body + 14, true) };
    } else if (id === "data") {
      data = { offset: body, size: Math.min(size, bytes.length - body) };
    }
    o = body + size + (size % 2);
  }
  if (!fmt || !data) throw new WavError(`${name} has no ${fmt ? "data" : "fmt"} chunk: a damaged WAV file`);
  const found = `${fmt.channels} channel(s), ${fmt.format === WAVE_FORMAT_IEEE_FLOAT ? "float" : fmt.format === WAVE_FORMAT_PCM ? "integer PCM" : `format ${fmt.format}`} ${fmt.bits}-bit`;
  if (fmt.channels !== 1 || fmt.format !== WAVE_FORMAT_IEEE_FLOAT || fmt.bits !== 32) {
    throw new WavError(`${name} must be mono 32-bit float WAV, found ${found}; convert it (e.g. sox in.wav -c 1 -e floating-point -b 32 out.wav)`);
  }
  const n = Math.floor(data.size / 4);
  const samples = new Float32Array(n);
  for (let i = 0; i < n; i++) samples[i] = view.getFloat32(data.offset + 4 * i, true);
  return { sampleRate: fmt.sampleRate, samples };
}

/** Float32Array -> bytes of a mono 32-bit float WAV. */
export function writeWav(samples, sampleRate) {
  const dataBytes = samples.length * 4;
  const bytes = new Uint8Array(58 + dataBytes);
  const view = new DataView(bytes.buffer);
  const put = (o, s) => [...s].forEach((c, i) => (bytes[o + i] = c.charCodeAt(0)));
  put(0, "RIFF");
  view.setUint32(4, 50 + dataBytes, true);
  put(8, "WAVE");
  put(12, "fmt ");
  view.setUint32(16, 18, true);
  view.setUint16(20, WAVE_FORMAT_IEEE_FLOAT, true);
  view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 4, true);
  view.setUint16(32, 4, true);
  view.setUint16(34, 32, true);
  view.setUint16(36, 0, true); // cbSize
  put(38, "fact"); // non-PCM formats carry a fact chunk: the number of samples
  view.setUint32(42, 4, true);
  view.setUint32(46, samples.length, true);
  put(50, "data");
  view.setUint32(54, dataBytes, true);
  for (let i = 0; i < samples.length; i++) view.setFloat32(58 + 4 * i, samples[i], true);
  return bytes;
}
