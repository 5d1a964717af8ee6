// The page: drop or pick photos, upload each once per model, show original | result(s), change saturation
// locally (color.js), download the full-resolution result at the chosen saturation.
"use strict";

const DISPLAY_MAX = 1280; // longest side of the shown result; the download is always full resolution

const els = {
  dropzone: document.getElementById("dropzone"),
  input: document.getElementById("file-input"),
  saturation: document.getElementById("saturation"),
  saturationValue: document.getElementById("saturation-value"),
  status: document.getElementById("status"),
  limits: document.getElementById("limits"),
  results: document.getElementById("results"),
  cardTemplate: document.getElementById("card-template"),
  paneTemplate: document.getElementById("pane-template"),
};
let health = null;
let saturation = 1;
let queue = Promise.resolve(); // photos are colorized one after another
let pending = 0;
let failures = new Set(); // why uploads failed since the page was last idle (the server's own messages)
const results = []; // {canvas, bitmap, blob, base (ImageData at saturation 1), name, label}

const setStatus = (text, error = false) => {
  els.status.textContent = text;
  els.status.classList.toggle("error", error);
};
// Limits for people, as the server words them: 33554432 -> "32 MB", 48000000 -> "45.8 MB", 4e7 -> "40 million".
const oneDecimal = (x) => x.toFixed(1).replace(/\.0$/, "");
const megabytes = (n) => (n >= 1048576 ? `${oneDecimal(n / 1048576)} MB` : `${oneDecimal(n / 1024)} kB`);
const millions = (n) => `${oneDecimal(n / 1e6)} million`;
const safeName = (text) => text.replace(/[^A-Za-z0-9._-]/g, "_");

async function init() {
  try {
    const response = await fetch("/api/health");
    health = await response.json();
  } catch (err) {
    setStatus(`The server does not answer (${err}).`);
    return;
  }
  els.saturation.max = String(health.max_saturation);  // the API's own bound
  els.limits.textContent = `JPEG, PNG, WebP, TIFF or BMP; up to ${megabytes(health.max_upload_bytes)} and ` +
    `${millions(health.max_pixels)} pixels per photo`;
  els.saturation.disabled = false;
  document.body.dataset.ready = "true";
  setStatus("Ready.");
}

function addFiles(files) {
  if (!pending) failures = new Set();
  for (const file of files) {
    pending += 1;
    setStatus(`Colorizing ${pending} photo(s)…`);
    queue = queue.then(() => colorizeFile(file)).finally(() => {
      pending -= 1;
      if (pending) setStatus(`Colorizing ${pending} photo(s)…`);
      else if (failures.size) setStatus([...failures].join(" · "), true); // what went wrong, not "Done."
      else setStatus("Done.");
    });
  }
}

async function colorizeFile(file) {
  const card = els.cardTemplate.content.firstElementChild.cloneNode(true);
  card.querySelector(".card-title").textContent = file.name;
  const original = card.querySelector(".original img");
  // Browsers cannot show every format the server reads (TIFF, 16-bit PNG in some): say so instead.
  original.addEventListener("error", () => original.replaceWith(Object.assign(document.createElement("p"),
    { className: "no-preview", textContent: "No preview in this browser" })));
  original.src = URL.createObjectURL(file); // the browser applies EXIF rotation, as the server does
  els.results.prepend(card);
  for (const model of health.models) {
    const pane = els.paneTemplate.content.firstElementChild.cloneNode(true);
    pane.dataset.model = model.index;
    pane.querySelector(".model-name").textContent =
      health.models.length > 1 ? `Model ${model.index + 1}: ${model.label}` : "Colorized";
    card.querySelector(".panes").append(pane);
    await colorizeWith(file, model, pane);
  }
}

async function colorizeWith(file, model, pane) {
  const status = pane.querySelector(".pane-status");
  const fail = (message, shown = message) => {
    failures.add(message);
    status.textContent = shown;
    status.classList.add("error");
    pane.dataset.error = shown;
  };
  if (file.size > health.max_upload_bytes) {
    return fail(`${file.name}: ${megabytes(file.size)} is over this server's limit of ` +
      `${megabytes(health.max_upload_bytes)}`);
  }
  const form = new FormData();
  form.append("image", file, file.name);
  let response;
  try {
    response = await fetch(`/api/colorize?model=${model.index}&saturation=1&format=png`, { method: "POST", body: form });
  } catch (err) {
    return fail(`${file.name}: upload failed (${err})`);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const detail = typeof body.detail === "string" ? body.detail : `${file.name}: ${response.statusText}`;
    return fail(detail, `Error ${response.status}: ${detail}`);
  }
  const blob = await response.blob();
  const bitmap = await createImageBitmap(blob);
  const canvas = pane.querySelector("canvas");
  const scale = Math.min(1, DISPLAY_MAX / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const result = {
    canvas, bitmap, blob, name: file.name,
    // Two models' downloads of one photo must not get the same file name.
    label: health.models.length > 1 ? `-${safeName(model.label)}` : "",
    base: context.getImageData(0, 0, canvas.width, canvas.height),
  };
  const button = pane.querySelector("button.download");
  button.textContent = `Download full resolution (${bitmap.width}×${bitmap.height})`;
  button.disabled = false;
  button.addEventListener("click", () => download(result, button));
  results.push(result);
  render(result);
  status.textContent = "";
  canvas.dataset.ready = "true";
}

function render(result) {
  const context = result.canvas.getContext("2d", { willReadFrequently: true });
  if (saturation === 1) {
    context.putImageData(result.base, 0, 0); // exactly what the server sent (at display size)
  } else {
    const shown = context.createImageData(result.base.width, result.base.height);
    KoalaColor.saturate(result.base.data, shown.data, saturation);
    context.putImageData(shown, 0, 0);
  }
  result.canvas.dataset.saturation = String(saturation);
}

async function download(result, button) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Preparing…";
  try {
    let blob = result.blob; // saturation 1: the server's file itself
    if (saturation !== 1) {
      const canvas = document.createElement("canvas");
      canvas.width = result.bitmap.width;
      canvas.height = result.bitmap.height;
      const context = canvas.getContext("2d", { willReadFrequently: true });
      context.drawImage(result.bitmap, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
      KoalaColor.saturate(pixels.data, pixels.data, saturation);
      context.putImageData(pixels, 0, 0);
      blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    }
    const stem = result.name.replace(/\.[^.]*$/, "") || "photo";
    const suffix = saturation === 1 ? "" : `-saturation${Math.round(saturation * 100)}`;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${stem}-colorized${result.label}${suffix}.png`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  } finally {
    button.textContent = label;
    button.disabled = false;
  }
}

let frame = 0;
els.saturation.addEventListener("input", () => {
  saturation = Number(els.saturation.value);
  els.saturationValue.textContent = `${Math.round(saturation * 100)} %`;
  cancelAnimationFrame(frame); // drawing once per frame keeps the slider smooth on big photos
  frame = requestAnimationFrame(() => results.forEach(render));
});
els.input.addEventListener("change", () => { addFiles([...els.input.files]); els.input.value = ""; });
// Dropping anywhere on the page works; the browser must not navigate to the dropped file instead.
document.addEventListener("dragover", (event) => { event.preventDefault(); els.dropzone.classList.add("dragging"); });
document.addEventListener("dragleave", () => els.dropzone.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  els.dropzone.classList.remove("dragging");
  if (health && event.dataTransfer?.files?.length) addFiles([...event.dataTransfer.files]);
});
init();
