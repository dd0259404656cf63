// The translator in a Web Worker (the page never blocks on the model): ONNX Runtime Web runs
// the export's audio-in graph (log-mel inside the graph), one window and K mask sets a call.
//   in:  {type: "init", config, ep: "wasm"|"webgpu", threads}
//        {type: "run", id, audio: Float32Array[n_samples], masks: [Float32Array[K*C_i]], k}
//   out: {type: "ready", ep, threads} | {type: "result", id, images, uncertainty, latencyMs}
//        | {type: "error", id, message}
//        {type: "memory", id} -> {type: "memory", id, wasmBytes}: the WebAssembly heap now
"use strict";
let ort = null;

// Every WebAssembly memory made here (ONNX Runtime's threaded build makes its heap in JS), so
// that the page can watch the worker's heap (it only grows: a leak shows as growth).
const memories = [];
WebAssembly.Memory = class CountedMemory extends WebAssembly.Memory {
  constructor(descriptor) { super(descriptor); memories.push(this); }
};
let session = null;
let config = null;

async function init(msg) {
  config = msg.config;
  const webgpu = msg.ep === "webgpu";
  let adapter = null;                      // which GPU (a software one counts as one)
  if (webgpu) {
    const found = "gpu" in navigator ? await navigator.gpu.requestAdapter() : null;
    if (!found) throw new Error("this browser has no WebGPU adapter");
    const info = found.info ?? {};
    adapter = {vendor: info.vendor, architecture: info.architecture, device: info.device,
      description: info.description};
  }
  // ort.wasm: WebAssembly only (the smaller download); ort (JSEP build): WebAssembly + WebGPU
  ort = await import(webgpu ? "./ort/ort.min.mjs" : "./ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("./ort/", self.location.href).href;
  ort.env.wasm.numThreads = msg.threads;   // > 1 needs a cross-origin isolated page
  ort.env.wasm.proxy = false;              // already off the UI thread
  const response = await fetch(config.model.file);
  if (!response.ok) throw new Error(`cannot load the model ${config.model.file}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  session = await ort.InferenceSession.create(bytes, {
    executionProviders: [webgpu ? "webgpu" : "wasm"], graphOptimizationLevel: "all"});
  for (const name of [config.model.audio_input, ...config.dropout.map(d => d.input)]) {
    if (!session.inputNames.includes(name)) throw new Error(`the model has no input ${name}`);
  }
  return {type: "ready", ep: webgpu ? "webgpu" : "wasm", threads: msg.threads, adapter};
}

async function run(msg) {
  const k = msg.k;
  const feeds = {[config.model.audio_input]: new ort.Tensor("float32", msg.audio, [1, msg.audio.length])};
  config.dropout.forEach((spec, i) => {
    feeds[spec.input] = new ort.Tensor("float32", msg.masks[i], [k, spec.channels]);
  });
  const started = performance.now();
  const out = await session.run(feeds);
  const latencyMs = performance.now() - started;
  const images = new Float32Array(out[config.model.images_output].data);
  const uncertainty = new Float32Array(out[config.model.uncertainty_output].data);
  for (const tensor of Object.values(out)) tensor.dispose?.();
  return [{type: "result", id: msg.id, images, uncertainty, latencyMs},
          [images.buffer, uncertainty.buffer]];
}

self.onmessage = async (event) => {
  const msg = event.data;
  try {
    if (msg.type === "init") {
      self.postMessage(await init(msg));
    } else if (msg.type === "memory") {
      self.gc?.();
      const wasmBytes = memories.reduce((sum, m) => sum + m.buffer.byteLength, 0);
      self.postMessage({type: "memory", id: msg.id, wasmBytes});
    } else if (msg.type === "run") {
      const [reply, transfer] = await run(msg);
      self.postMessage(reply, transfer);
    }
  } catch (err) {
    self.postMessage({type: "error", id: msg.id, message: String(err?.message ?? err)});
  }
};
