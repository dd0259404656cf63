// S2I labelling page: one image at a time; every label is POSTed (and saved) at once.
"use strict";

const INFORMATIVE = "informative";
const NON_INFORMATIVE = "non-informative";
let items = [];
let labels = {};
let position = 0;
let history = [];   // positions labelled in this session, for "back"

const $ = (id) => document.getElementById(id);

function setBusy(busy) { document.body.dataset.busy = busy ? "1" : "0"; }

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (kind || "");
}

function firstUnlabelled(from) {
  for (let k = 0; k < items.length; k++) {
    const i = (from + k) % items.length;
    if (!(items[i].file in labels)) return i;
  }
  return items.length;  // all done
}

function show() {
  const n = Object.keys(labels).length;
  document.body.dataset.position = String(position);
  document.body.dataset.labelled = String(n);
  const informative = Object.values(labels).filter((v) => v === INFORMATIVE).length;
  $("progress").textContent = `${n} / ${items.length} labelled ` +
    `(${informative} informative, ${n - informative} non-informative)`;
  if (position >= items.length) {
    document.body.classList.add("done");
    $("sound-class").textContent = "All images are labelled. Thank you!";
    return;
  }
  document.body.classList.remove("done");
  const item = items[position];
  $("sound-class").textContent = item["class"];
  $("generated").src = "/files/" + item.file;
  if (item.real) {
    $("real-figure").style.display = "";
    $("real").src = "/files/" + item.real;
  } else {
    $("real-figure").style.display = "none";
  }
  const next = items[position + 1];
  if (next) {  // fetch the next pictures ahead, so the page never waits on them
    new Image().src = "/files/" + next.file;
    if (next.real) new Image().src = "/files/" + next.real;
  }
  const given = labels[item.file] ? `  [labelled: ${labels[item.file]}]` : "";
  $("meta").textContent = `image ${position + 1} of ${items.length} - sound ${item.sound_id}` +
    ` - model ${item.model} (epoch ${item.epoch}) - sample ${item.sample}${given}`;
}

async function post(file, label) {
  const response = await fetch("/api/label", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({file: file, label: label}),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function give(label) {
  if (document.body.dataset.busy === "1" || position >= items.length) return;
  const item = items[position];
  setBusy(true);
  try {
    await post(item.file, label);
    labels[item.file] = label;
    history.push(position);
    position = firstUnlabelled(position + 1);
    status(`saved: ${label}`, "saved");
  } catch (err) {
    status(`NOT saved (${err.message}); press the key again`, "error");
  }
  show();
  setBusy(false);
}

async function back() {
  if (document.body.dataset.busy === "1") return;
  const fromHistory = history.length > 0;
  const previous = fromHistory ? history.pop() : position - 1;
  if (previous < 0) return;
  const item = items[previous];
  setBusy(true);
  try {
    if (item.file in labels) await post(item.file, null);
    delete labels[item.file];
    position = previous;
    status("went back one image; its label is cleared", "saved");
  } catch (err) {
    if (fromHistory) history.push(previous);
    status(`could not go back (${err.message})`, "error");
  }
  show();
  setBusy(false);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "i" || key === "I" || key === "ArrowRight") give(INFORMATIVE);
  else if (key === "n" || key === "N" || key === "ArrowLeft") give(NON_INFORMATIVE);
  else if (key === "u" || key === "U" || key === "Backspace") back();
  else return;
  event.preventDefault();
});
$("btn-inf").addEventListener("click", () => give(INFORMATIVE));
$("btn-non").addEventListener("click", () => give(NON_INFORMATIVE));
$("btn-back").addEventListener("click", () => back());

async function start() {
  try {
    const response = await fetch("/api/state");
    const state = await response.json();
    items = state.items;
    labels = state.labels;
    position = firstUnlabelled(0);
    show();
    setBusy(false);
  } catch (err) {
    status(`could not load the images (${err.message}); is the server running?`, "error");
  }
}

start();
