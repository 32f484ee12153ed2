// Upload one image to POST /predict and show the garment name, confidence and top-3.
"use strict";

const $ = (id) => document.getElementById(id);
const dropZone = $("drop-zone");
const fileInput = $("file-input");
const keyInput = $("api-key");
const statusLine = $("status");

keyInput.value = localStorage.getItem("apiKey") || "";
keyInput.addEventListener("change", () => localStorage.setItem("apiKey", keyInput.value));

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

const CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
  "Sneaker", "Bag", "Ankle boot"];
let lastPredictionId = null;

function fillLabelChoices(names) {
  const select = $("true-label");
  select.replaceChildren();
  names.forEach((name, index) => select.appendChild(new Option(name, String(index))));
}
fillLabelChoices(CLASS_NAMES);

function showResult(result) {
  // A low-confidence answer is a guess: say so instead of naming it with confidence.
  if (result.low_confidence) {
    const [first, second] = result.top_k;
    $("label").textContent = "Not sure";
    $("confidence").textContent = second
      ? `maybe ${first.label} (${percent(first.probability)}) or ${second.label} (${percent(second.probability)})`
      : `maybe ${first.label} (${percent(first.probability)})`;
  } else {
    $("label").textContent = result.label;
    $("confidence").textContent = percent(result.confidence);
  }
  lastPredictionId = result.prediction_id || null;
  $("feedback").hidden = !lastPredictionId;
  $("feedback-status").textContent = "";
  $("true-label").value = String(result.class_id);
  $("model-version").textContent = result.model_version;
  const list = $("top-k");
  list.replaceChildren();
  for (const item of result.top_k.slice(0, 3)) {
    const li = document.createElement("li");
    li.className = "top-k-item";
    li.textContent = `${item.label} — ${percent(item.probability)}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.max(1, 100 * item.probability) + "%";
    li.appendChild(bar);
    list.appendChild(li);
  }
  $("result").hidden = false;
}

async function classify(file) {
  if (!file) return;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("result").hidden = true;
  setStatus(`Classifying ${file.name}…`);
  const body = new FormData();
  body.append("file", file, file.name);
  const headers = {};
  if (keyInput.value) headers["X-API-Key"] = keyInput.value;
  try {
    const response = await fetch("/predict", { method: "POST", body, headers });
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      setStatus(payload.detail || `The server answered ${response.status}.`, true);
      if (response.status === 401) $("key-box").open = true;
      return;
    }
    showResult(payload);
    setStatus("");
  } catch (err) {
    setStatus(`Could not reach the server (${err}).`, true);
  }
}

async function sendFeedback(event) {
  event.preventDefault();
  if (!lastPredictionId) return;
  const label = Number($("true-label").value);
  const headers = { "Content-Type": "application/json" };
  if (keyInput.value) headers["X-API-Key"] = keyInput.value;
  const note = $("feedback-status");
  note.textContent = "Sending…";
  try {
    const response = await fetch("/feedback", {
      method: "POST",
      headers,
      body: JSON.stringify({ prediction_id: lastPredictionId, label }),
    });
    const payload = await response.json().catch(() => ({}));
    note.textContent = response.ok
      ? `Thanks: recorded as ${payload.true_label}.`
      : payload.detail || `The server answered ${response.status}.`;
  } catch (err) {
    note.textContent = `Could not reach the server (${err}).`;
  }
}

$("feedback").addEventListener("submit", sendFeedback);
fileInput.addEventListener("change", () => classify(fileInput.files[0]));

for (const type of ["dragenter", "dragover"]) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
  });
}
dropZone.addEventListener("drop", (event) => {
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) classify(file);
});
dropZone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") fileInput.click();
});

fetch("/model")
  .then((r) => (r.ok ? r.json() : null))
  .then((m) => {
    if (m) $("model-line").textContent = `Serving ${m.name} version ${m.version}.`;
    if (m && Array.isArray(m.class_names)) fillLabelChoices(m.class_names);
  })
  .catch(() => {});
