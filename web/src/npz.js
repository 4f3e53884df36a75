// Reader for numpy's .npz (a zip of .npy files, stored or deflated, zip64 as numpy writes them)
// with the platform's DecompressionStream (node >= 18 and every current browser).

/** bytes of an .npz -> Map(name without .npy -> {shape, data: Float32Array | Int32Array | ...}). */
export async function readNpz(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const entries = centralDirectory(view);
  const arrays = new Map();
  for (const e of entries) {
    const nameLen = view.getUint16(e.localOffset + 26, true);
    const extraLen = view.getUint16(e.localOffset + 28, true);
    const start = e.localOffset + 30 + nameLen + extraLen;
    const raw = bytes.subarray(start, start + e.compressedSize);
    let data;
    if (e.method === 0) data = raw;
    else if (e.method === 8) data = await inflateRaw(raw);
    else throw new Error(`npz entry ${e.name}: unsupported zip compression method ${e.method}`);
    arrays.set(e.name.replace(/\.npy$/, ""), readNpy(data, e.name));
  }
  return arrays;
}

function centralDirectory(view) {
  // End of central directory: the last "PK\5\6" record (a comment may follow it).
  let eocd = -1;
  for (let i = view.byteLength - 22; i >= Math.max(0, view.byteLength - 65557); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error("not a zip file (no end of central directory): is it an .npz?");
  let count = view.getUint16(eocd + 10, true);
  let offset = view.getUint32(eocd + 16, true);
  if (offset === 0xffffffff || count === 0xffff) {
    const locator = eocd - 20; // zip64 end of central directory locator
    const record = Number(view.getBigUint64(locator + 8, true));
    count = Number(view.getBigUint64(record + 32, true));
    offset = Number(view.getBigUint64(record + 48, true));
  }
  const decoder = new TextDecoder();
  const entries = [];
  for (let i = 0; i < count; i++) {
    if (view.getUint32(offset, true) !== 0x02014b50) throw new Error("corrupt zip central directory");
    const method = view.getUint16(offset + 10, true);
    let compressedSize = view.getUint32(offset + 20, true);
    let size = view.getUint32(offset + 24, true);
    const nameLen = view.getUint16(offset + 28, true);
    const extraLen = view.getUint16(offset + 30, true);
    const commentLen = view.getUint16(offset + 32, true);
    let localOffset = view.getUint32(offset + 42, true);
    const name = decoder.decode(new Uint8Array(view.buffer, view.byteOffset + offset + 46, nameLen));
    // zip64 extra field (id 1): the 64-bit values of the fields set to 0xffffffff, in this order.
    for (let p = offset + 46 + nameLen; p < offset + 46 + nameLen + extraLen; ) {
      const id = view.getUint16(p, true);
      const len = view.getUint16(p + 2, true);
      if (id === 1) {
        let q = p + 4;
        if (size === 0xffffffff) (size = Number(view.getBigUint64(q, true))), (q += 8);
        if (compressedSize === 0xffffffff) (compressedSize = Number(view.getBigUint64(q, true))), (q += 8);
        if (localOffset === 0xffffffff) localOffset = Number(view.getBigUint64(q, true));
      }
      p += 4 + len;
    }
    entries.push({ name, method, compressedSize, size, localOffset });
    offset += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const DTYPES = {
  "<f4": Float32Array,
  "<f8": Float64Array,
  "<i4": Int32Array,
  "<i8": BigInt64Array,
  "|u1": Uint8Array,
  "|b1": Uint8Array,
};

/** One .npy (version 1-3, little-endian, C order) -> {shape, data}. */
export function readNpy(bytes, name = "array") {
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") {
    throw new Error(`${name} is not an .npy array`);
  }
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(headerStart, headerStart + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "";
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const Type = DTYPES[descr];
  if (!Type) throw new Error(`${name}: unsupported .npy dtype ${descr}`);
  const start = headerStart + headerLen;
  const count = shape.reduce((a, b) => a * b, 1);
  // Copy: the offset inside the zip is rarely aligned for the typed array.
  const data = new Type(bytes.slice(start, start + count * Type.BYTES_PER_ELEMENT).buffer);
  return { shape, data: fortran ? toCOrder(data, shape) : data };
}

/** A Fortran-order (column-major) array's elements in C order (row-major). */
function toCOrder(data, shape) {
  const out = new data.constructor(data.length);
  const index = new Array(shape.length).fill(0);
  for (let c = 0; c < data.length; c++) {
    let f = 0;
    for (let k = shape.length - 1; k >= 0; k--) f = f * shape[k] + index[k];
    out[c] = data[f];
    for (let k = shape.length - 1; k >= 0 && ++index[k] === shape[k]; k--) index[k] = 0;
  }
  return out;
}
