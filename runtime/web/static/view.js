// Polls /latest.json and swaps in the newest frame's images (served by s2i-view --web).
"use strict";
let shown = -1;

function row(name, value) {
  const tr = document.createElement("tr");
  for (const text of [name, value]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  return tr;
}

// dBFS of a level in [0, 1] (the wire's rms/peak are on samples clipped to [-1, 1]).
function dbfs(x) { return x > 0 ? 20 * Math.log10(x) : -Infinity; }
// Position on a -60..0 dBFS scale, in percent.
function meter(x) { return Math.max(0, Math.min(100, (dbfs(x) + 60) / 60 * 100)); }

function renderMeters(state) {
  const h = state.header;
  const publish = (h.publish_time - h.capture_time) * 1000;
  // capture -> shown: the viewer's clock against capture_time (same machine, or synced clocks)
  const shown = ((state.received_time ?? state.now) - h.capture_time) * 1000;
  document.getElementById("latency").textContent = `${shown.toFixed(0)} ms`;
  document.getElementById("latency-detail").textContent =
    `capture → publish ${publish.toFixed(0)} ms, → viewer ${shown.toFixed(0)} ms`;
  const rms = h.rms ?? 0, peak = h.peak ?? 0;
  document.getElementById("level-rms").style.width = meter(rms) + "%";
  document.getElementById("level-peak").style.left = meter(peak) + "%";
  const fmt = x => x > 0 ? dbfs(x).toFixed(1) + " dBFS" : "silence";
  document.getElementById("level").textContent = `rms ${fmt(rms)} · peak ${fmt(peak)}`;
  const legend = document.getElementById("uncertainty-legend");
  legend.textContent = state.uncertainty_max_std == null ? "" :
    `stretched: white = std ${state.uncertainty_max_std.toFixed(3)} (this frame's maximum; ` +
    `images in [0, 1])`;
}

function render(state) {
  const h = state.header;
  const box = document.getElementById("samples");
  while (box.children.length > state.images.length) box.lastChild.remove();
  state.images.forEach((url, k) => {
    let img = box.children[k];
    if (!img) {
      img = document.createElement("img");
      img.className = "sample";
      img.alt = "generated sample " + k;
      box.appendChild(img);
    }
    img.src = url;
  });
  const unc = document.getElementById("uncertainty-box");
  unc.hidden = !state.uncertainty;
  if (state.uncertainty) document.getElementById("uncertainty").src = state.uncertainty;
  const t = h.timings_ms || {};
  const latency = h.publish_time && h.capture_time
    ? ((h.publish_time - h.capture_time) * 1000).toFixed(0) + " ms" : "?";
  document.getElementById("status").textContent =
    `stream ${h.stream} · frame ${h.seq} · ${h.samples} sample(s) · ${h.backend}`;
  document.getElementById("status").dataset.seq = h.seq;
  renderMeters(state);
  const body = document.querySelector("#header tbody");
  body.replaceChildren(
    row("seq", h.seq),
    row("capture time", new Date(h.capture_time * 1000).toISOString()),
    row("window / hop", `${h.window_s} s / ${h.hop_s} s`),
    row("features / encoder / generator / encoding",
        [t.features, t.encoder, t.generator, t.encoding].map(x => (x ?? 0).toFixed(1)).join(" / ") + " ms"),
    row("capture → publish", latency),
    row("level (rms / peak)", `${(h.rms ?? 0).toFixed(3)} / ${(h.peak ?? 0).toFixed(3)}`));
}

async function poll() {
  try {
    const response = await fetch("/latest.json", {cache: "no-store"});
    const state = await response.json();
    if (state.header && state.number !== shown) {
      shown = state.number;
      render(state);
    }
  } catch (err) {
    document.getElementById("status").textContent = "viewer not reachable: " + err;
  }
  setTimeout(poll, 200);
}
poll();
