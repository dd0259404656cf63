// S2I in the browser: microphone (or a dropped file) -> 1-s windows at the model's rate every
// hop -> the audio-in translator in a Web Worker (ONNX Runtime Web) -> K images and the
// uncertainty map. Written by `s2i-web`; config.json describes the export (docs/WEB.md).
//
// URL options: ?k=4&hop=0.5&seed=7&mc=off&ep=wasm|webgpu&threads=N. `window.s2i` is the test hook:
// s2i.translate(audio, masks, k) runs one window with given masks (tests compare it with the
// Python runtime); s2i.benchmark(k, runs) times the model; s2i.last is the newest frame.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SIZE = 96;              // the generator's image side
const MAX_K = 16;

// ---- MC-dropout masks: 0 or 1/(1-p) per channel, as runtime.model.masks.draw_masks -------------

// mulberry32: a small seeded generator of floats in [0, 1) (?seed=N makes a run repeatable;
// it is not numpy's stream: tests that compare with Python pass their masks to s2i.translate)
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function cryptoRandom() {
  const words = new Uint32Array(1024);
  let used = words.length;
  return () => {
    if (used === words.length) { crypto.getRandomValues(words); used = 0; }
    return words[used++] / 4294967296;
  };
}

// random === null: masks that drop nothing (the deterministic translation, ?mc=off)
function drawMasks(dropout, k, random) {
  return dropout.map((spec) => {
    const mask = new Float32Array(k * spec.channels);
    const scale = 1 / (1 - spec.p);
    for (let i = 0; i < mask.length; i++) {
      mask[i] = random === null ? 1 : random() >= spec.p ? scale : 0;
    }
    return mask;
  });
}

// ---- the translator in its worker ----------------------------------------------------------

class Translator {
  constructor(config, ep, threads) {
    this.config = config;
    this.pending = new Map();
    this.nextId = 1;
    this.busy = false;
    this.worker = new Worker("worker.js", {type: "module"});
    this.ready = new Promise((resolve, reject) => {
      this.worker.onmessage = (event) => {
        const msg = event.data;
        if (msg.type === "ready") { this.info = msg; resolve(msg); return; }
        if (msg.type === "error" && msg.id === undefined) { reject(new Error(msg.message)); return; }
        const call = this.pending.get(msg.id);
        if (!call) return;
        this.pending.delete(msg.id);
        if (msg.type === "error") call.reject(new Error(msg.message)); else call.resolve(msg);
      };
      this.worker.onerror = (event) => reject(new Error(event.message || "the worker failed"));
    });
    this.worker.postMessage({type: "init", config, ep, threads});
  }

  call(message, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, {resolve, reject});
      this.worker.postMessage({...message, id}, transfer);
    });
  }

  // audio: Float32Array [n_samples]; masks: one Float32Array [k * C_i] per dropout entry
  translate(audio, masks, k) {
    this.busy = true;
    return this.call({type: "run", audio, masks, k}, [audio.buffer, ...masks.map((m) => m.buffer)])
      .finally(() => { this.busy = false; });
  }
}

// ---- audio: the newest second at the model's rate ------------------------------------------

class AudioWindow {
  constructor(n) { this.samples = new Float32Array(n); this.received = 0; }

  push(chunk) {
    const n = this.samples.length;
    if (chunk.length >= n) {
      this.samples.set(chunk.subarray(chunk.length - n));
    } else {
      this.samples.copyWithin(0, chunk.length);
      this.samples.set(chunk, n - chunk.length);
    }
    this.received += chunk.length;
  }

  full() { return this.received >= this.samples.length; }
  copy() { return this.samples.slice(); }
}

// Linear interpolation to the model's rate, only used when the browser cannot run an
// AudioContext at that rate itself (then the browser's own resampler is not available).
class LinearResampler {
  constructor(from, to) { this.step = from / to; this.pos = 0; this.last = 0; }

  process(chunk) {
    const out = [];
    while (this.pos < chunk.length) {
      const i = Math.floor(this.pos), frac = this.pos - i;
      const a = i === 0 ? this.last : chunk[i - 1], b = chunk[i];
      out.push(a + (b - a) * frac);
      this.pos += this.step;
    }
    this.pos -= chunk.length;
    this.last = chunk[chunk.length - 1];
    return Float32Array.from(out);
  }
}

async function openMicrophone(deviceId, rate, onSamples) {
  const stream = await navigator.mediaDevices.getUserMedia({audio: {
    deviceId: deviceId ? {exact: deviceId} : undefined, channelCount: 1,
    echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  let context, source, resampler = null;
  try {
    context = new AudioContext({sampleRate: rate});
    source = context.createMediaStreamSource(stream);
  } catch {
    await context?.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
    resampler = new LinearResampler(context.sampleRate, rate);
  }
  await context.audioWorklet.addModule("capture-worklet.js");
  const node = new AudioWorkletNode(context, "s2i-capture");
  node.port.onmessage = (event) => onSamples(resampler ? resampler.process(event.data) : event.data);
  const mute = context.createGain();
  mute.gain.value = 0;
  source.connect(node).connect(mute).connect(context.destination);
  await context.resume();
  const track = stream.getAudioTracks()[0];
  return {
    label: track?.label || "microphone",
    stop() { stream.getTracks().forEach((t) => t.stop()); context.close(); },
  };
}

// A dropped audio or video file, decoded and resampled by the browser, fed at the hop's pace.
async function decodeFile(file, rate) {
  const context = new OfflineAudioContext(1, 1, rate);
  let buffer;
  try {
    buffer = await context.decodeAudioData(await file.arrayBuffer());
  } catch {
    throw new Error(`cannot decode ${file.name}: not an audio or video file this browser reads`);
  }
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
  }
  return mono;
}

// ---- drawing -------------------------------------------------------------------------------

function toByte(x) { return Math.round((Math.min(1, Math.max(-1, x)) + 1) * 127.5); }

// data: CHW floats from `offset`; `map` turns a value into a byte
function paint(canvas, data, offset, map) {
  const g = canvas.getContext("2d");
  const image = g.createImageData(SIZE, SIZE);
  const plane = SIZE * SIZE;
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) image.data[4 * p + c] = map(data[offset + c * plane + p]);
    image.data[4 * p + 3] = 255;
  }
  g.putImageData(image, 0, 0);
}

function canvasesFor(box, k, label) {
  while (box.children.length > k) box.lastChild.remove();
  while (box.children.length < k) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = SIZE;
    canvas.className = "sample";
    canvas.setAttribute("aria-label", `${label} ${box.children.length}`);
    box.appendChild(canvas);
  }
  return [...box.children];
}

function dbfs(x) { return x > 0 ? 20 * Math.log10(x) : -Infinity; }

function level(audio) {
  let sum = 0, peak = 0;
  for (const x of audio) { sum += x * x; peak = Math.max(peak, Math.abs(x)); }
  return {rms: Math.sqrt(sum / audio.length), peak};
}

// ---- the page ------------------------------------------------------------------------------

const state = {config: null, translator: null, running: false, source: null, file: null,
  filePos: 0, audio: null, timer: null, seq: 0, skipped: 0, random: null, lastLatency: null};

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function micError(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "The microphone was refused. Allow it for this page in the browser's site " +
        "settings and press Start again, or drop an audio file onto the page.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone found (or the chosen one is gone). Connect one and press Start, " +
        "or drop an audio file onto the page.";
    case "NotReadableError":
      return "The microphone is busy or failed to start (another program may hold it).";
    default:
      return `The microphone could not start: ${err?.message ?? err}`;
  }
}

// What the page needs, by use: the model needs WebAssembly and workers; the microphone also
// needs getUserMedia and AudioWorklet (secure context: https or localhost).
function missingFeatures() {
  const model = [], mic = [];
  if (typeof WebAssembly !== "object") model.push("WebAssembly");
  if (typeof Worker !== "function") model.push("Web Workers");
  if (!navigator.mediaDevices?.getUserMedia) mic.push("microphone access (getUserMedia; needs https or localhost)");
  if (typeof AudioWorkletNode !== "function") mic.push("AudioWorklet");
  return {model, mic};
}

function settings() {
  const k = Math.min(MAX_K, Math.max(1, parseInt($("k").value, 10) || 1));
  const hop = Math.max(0.1, parseFloat($("hop").value) || 1);
  return {k, hop};
}

function render(result, k, lvl, started) {
  state.seq++;
  const images = canvasesFor($("samples"), k, "generated sample");
  const plane = 3 * SIZE * SIZE;
  images.forEach((canvas, i) => paint(canvas, result.images, i * plane, toByte));
  const uncBox = $("uncertainty-box");
  uncBox.hidden = k < 2;
  if (k >= 2) {
    let top = 0;
    for (const v of result.uncertainty) top = Math.max(top, v);
    paint($("uncertainty"), result.uncertainty, 0, (v) => (top > 0 ? Math.round((v / top) * 255) : 0));
    $("uncertainty-legend").textContent = `stretched: white = std ${(top / 2).toFixed(3)} ` +
      "(this window's maximum; images in [0, 1])";
  }
  const total = performance.now() - started;
  $("latency").textContent = `${result.latencyMs.toFixed(0)} ms`;
  $("latency-detail").textContent = `model ${result.latencyMs.toFixed(0)} ms, ` +
    `window → shown ${total.toFixed(0)} ms · ${state.skipped} hop(s) skipped`;
  const fmt = (x) => (x > 0 ? `${dbfs(x).toFixed(1)} dBFS` : "silence");
  $("level").textContent = `rms ${fmt(lvl.rms)} · peak ${fmt(lvl.peak)}`;
  $("level-rms").style.width = `${Math.max(0, Math.min(100, ((dbfs(lvl.rms) + 60) / 60) * 100))}%`;
  const status = $("status");
  status.dataset.seq = String(state.seq);
  status.textContent = `${state.source} · window ${state.seq} · K = ${k} · ` +
    `${state.translator.info.ep}, ${state.translator.info.threads} thread(s)`;
  window.s2i.last = {seq: state.seq, k, latencyMs: result.latencyMs, rms: lvl.rms,
    images: result.images, uncertainty: result.uncertainty};
}

function tick() {
  if (!state.running) return;
  const {k, hop} = settings();
  const rate = state.config.sample_rate;
  if (state.file) {
    const end = Math.min(state.file.length, state.filePos + Math.round(hop * rate));
    state.audio.push(state.file.subarray(state.filePos, end));
    state.filePos = end;
    if (end >= state.file.length) { stop(`end of ${state.source}`); return; }
  }
  if (!state.audio.full()) {
    $("status").textContent = `${state.source}: listening… (the first window needs 1 s)`;
    return;
  }
  if (state.translator.busy) { state.skipped++; return; }   // never queue: newest window wins
  const audio = state.audio.copy();
  const lvl = level(audio);
  const started = performance.now();
  state.translator.translate(audio, drawMasks(state.config.dropout, k, state.random), k)
    .then((result) => { if (state.running) render(result, k, lvl, started); })
    .catch((err) => { showMessage(`The model failed: ${err.message}`); stop(); });
}

function begin(source) {
  state.source = source;
  state.running = true;
  state.seq = 0;
  state.skipped = 0;
  state.audio = new AudioWindow(state.config.n_samples);
  $("start").disabled = true;
  $("stop").disabled = false;
  clearInterval(state.timer);
  state.timer = setInterval(tick, settings().hop * 1000);
}

function stop(why) {
  state.running = false;
  clearInterval(state.timer);
  state.mic?.stop();
  state.mic = null;
  state.file = null;
  $("start").disabled = !state.translator;
  $("stop").disabled = true;
  if (why) $("status").textContent = `stopped: ${why}`;
}

async function startMicrophone() {
  const missing = missingFeatures().mic;
  if (missing.length) {
    showMessage(`This browser lacks ${missing.join(" and ")}, which the microphone needs; ` +
      "you can still drop an audio file onto the page.");
    return;
  }
  stop();
  showMessage("");
  try {
    state.audio = null;   // samples count from begin()
    state.mic = await openMicrophone($("device").value, state.config.sample_rate,
      (chunk) => state.audio?.push(chunk));
    begin(state.mic.label);
    await listDevices();
  } catch (err) {
    stop();
    showMessage(micError(err));
  }
}

async function startFile(file) {
  stop();
  showMessage("");
  try {
    state.file = await decodeFile(file, state.config.sample_rate);
    state.filePos = 0;
    begin(file.name);
  } catch (err) {
    stop();
    showMessage(err.message);
  }
}

async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const select = $("device");
  const chosen = select.value;
  const inputs = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  select.replaceChildren(new Option("default microphone", ""),
    ...inputs.filter((d) => d.deviceId && d.deviceId !== "default")
      .map((d, i) => new Option(d.label || `microphone ${i + 1}`, d.deviceId)));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

function wireControls() {
  $("start").addEventListener("click", startMicrophone);
  $("stop").addEventListener("click", () => stop("stopped by you"));
  $("hop").addEventListener("change", () => {
    if (state.running) { clearInterval(state.timer); state.timer = setInterval(tick, settings().hop * 1000); }
  });
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";               // so that picking the same file again starts it again
    if (file && state.translator) startFile(file);
  });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dropping"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dropping"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dropping");
    const file = e.dataTransfer?.files?.[0];
    if (file && state.translator) startFile(file);
  });
  for (const [id, name] of [["k", "k"], ["hop", "hop"]]) {
    if (params.has(name)) $(id).value = params.get(name);
  }
}

// ---- test and benchmark hook ---------------------------------------------------------------

let settle = null;
window.s2i = {
  // resolves with {ep, threads} once the model is loaded; rejects with why it is not
  ready: new Promise((resolve, reject) => { settle = {resolve, reject}; }),
  last: null,
  // one window with the given masks (arrays of numbers): {images, uncertainty, latencyMs}
  async translate(audio, masks, k) {
    await window.s2i.ready;
    const result = await state.translator.translate(Float32Array.from(audio),
      masks.map((m) => Float32Array.from(m)), k);
    return {images: Array.from(result.images), uncertainty: Array.from(result.uncertainty),
      latencyMs: result.latencyMs};
  },
  // model latency in ms of `runs` windows of noise at K = k (after one warm-up call)
  async benchmark(k, runs) {
    await window.s2i.ready;
    const random = seededRandom(1);
    const call = () => {
      const audio = Float32Array.from({length: state.config.n_samples}, () => 0.2 * (random() - 0.5));
      return state.translator.translate(audio, drawMasks(state.config.dropout, k, random), k);
    };
    await call();
    const times = [];
    for (let i = 0; i < runs; i++) times.push((await call()).latencyMs);
    return {times, info: state.translator.info, crossOriginIsolated: self.crossOriginIsolated};
  },
  // memory in use: the page's JS heap (after a GC when the browser exposes gc()) and the
  // worker's WebAssembly heap, in bytes
  async memory() {
    await window.s2i.ready;
    const worker = await state.translator.call({type: "memory"});
    for (let i = 0; i < 2; i++) {        // a full collection, then one more after a task
      window.gc?.();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return {pageHeap: performance.memory?.usedJSHeapSize ?? null, wasmBytes: worker.wasmBytes};
  },
};

async function main() {
  wireControls();
  const missing = missingFeatures();
  if (missing.model.length) {
    showMessage(`This browser lacks ${missing.model.join(" and ")}, which the page needs.`);
    $("start").disabled = true;
    settle.reject(new Error(`unsupported browser: no ${missing.model.join(", ")}`));
    return;
  }
  const seed = params.get("seed");
  state.random = params.get("mc") === "off" ? null :
    seed === null ? cryptoRandom() : seededRandom(parseInt(seed, 10) || 0);
  try {
    const response = await fetch("config.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.config = await response.json();
  } catch (err) {
    showMessage(`The page's config.json could not be read (${err.message}); rebuild the page with s2i-web.`);
    settle.reject(err);
    return;
  }
  const ep = params.get("ep") === "webgpu" ? "webgpu" : "wasm";
  const cores = navigator.hardwareConcurrency || 1;
  const threads = self.crossOriginIsolated ? Math.max(1, parseInt(params.get("threads") ?? Math.min(4, cores), 10) || 1) : 1;
  $("model").textContent = state.config.title;
  $("status").textContent = "loading the model…";
  try {
    state.translator = new Translator(state.config, ep, threads);
    const info = await state.translator.ready;
    settle.resolve(info);
    $("status").textContent = `ready: ${info.ep}, ${info.threads} thread(s)` +
      (self.crossOriginIsolated ? "" : " (not cross-origin isolated: one thread)") +
      " · press Start or drop an audio file";
    $("start").disabled = false;
    if (missing.mic.length) {
      showMessage(`This browser lacks ${missing.mic.join(" and ")}, which the microphone needs; ` +
        "you can still drop an audio file onto the page.");
    }
  } catch (err) {
    state.translator = null;
    showMessage(`The model could not be loaded: ${err.message}`);
    $("status").textContent = "no model";
    settle.reject(err);
  }
}

window.s2i.ready.catch(() => {});   // shown in the page; tests read the rejection
main();
