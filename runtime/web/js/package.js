// Where a model package comes from: a URL (fetched with progress, kept in the Cache API so a second visit works
// offline) or files picked on the device. A package is the folder python -m export writes: manifest.json,
// model.onnx, model.onnx.data, tokenizer.json; nothing is inferred from names beyond the manifest's own.

const CACHE = "phi-edge-packages-v1";

/** The response's bytes, reported to onBytes as they arrive. With a content-length the chunks go straight into one
 *  buffer of that size, so a 1 GB weight file never needs 2 GB while it downloads. */
async function readWithProgress(response, onBytes) {
  if (!response.body || !onBytes) return new Uint8Array(await response.arrayBuffer());
  const total = Number(response.headers.get("content-length")) || 0;
  const encoded = (response.headers.get("content-encoding") ?? "identity") !== "identity";  // length is compressed
  const reader = response.body.getReader();
  let out = total && !encoded ? new Uint8Array(total) : null;
  const parts = [];
  let done = 0;
  for (;;) {
    const { done: end, value } = await reader.read();
    if (end) break;
    if (out && done + value.length > total) {  // more than announced: collect in parts from here
      parts.push(out.subarray(0, done));
      out = null;
    }
    if (out) out.set(value, done);
    else parts.push(value);
    done += value.length;
    onBytes(done, total);
  }
  if (out && done < total) {
    throw new Error(`the download stopped at ${done} of ${total} bytes; reload the page to fetch it again`);
  }
  if (out) return out;
  out = new Uint8Array(done);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** A package at `base` (a URL ending in /). onProgress(name, bytesDone, bytesTotal, fromCache). */
export function urlSource(base, { onProgress = null, cache = true } = {}) {
  const root = new URL(base, location.href);
  return {
    label: root.href,
    async bytes(name) {
      const url = new URL(name, root).href;
      const store = cache && globalThis.caches ? await caches.open(CACHE) : null;
      let response = store ? await store.match(url) : null;
      const cached = Boolean(response);
      if (!response) {
        response = await fetch(url);
        if (!response.ok) throw new Error(`${url}: HTTP ${response.status}; is the package folder served there?`);
        if (store && name !== "manifest.json") await store.put(url, response.clone());
      }
      return readWithProgress(response, onProgress && ((d, t) => onProgress(name, d, t, cached)));
    },
    async json(name) {
      return JSON.parse(new TextDecoder().decode(await this.bytes(name)));
    },
  };
}

/** A package from files the user picked (an <input type=file multiple> or a folder picker). */
export function fileSource(files) {
  const byName = new Map([...files].map((f) => [f.name, f]));
  const get = (name) => {
    const f = byName.get(name);
    if (!f) throw new Error(`${name} is not among the picked files; pick every file of the package folder`);
    return f;
  };
  return {
    label: "files on this device",
    async bytes(name) { return new Uint8Array(await get(name).arrayBuffer()); },
    async json(name) { return JSON.parse(await get(name).text()); },
  };
}

/** The sha256 of `bytes` as lowercase hex (Web Crypto: browsers on https or 127.0.0.1, and Node). */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The manifest checks the runtime makes (runtime/manifest.py): format, version, files present. */
export function checkManifest(manifest) {
  if (manifest.format !== "phi-edge-package") throw new Error("manifest.json is not a phi-edge package manifest");
  if (![1, 2].includes(manifest.format_version)) {
    throw new Error(`package format ${manifest.format_version} is not 1 or 2; re-export it with this version`);
  }
  return manifest;
}
