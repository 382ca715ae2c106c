// clipforge web page: classify an image against typed labels; search the index by text. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
let pickedFile = null;

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function call(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const message = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function showError(id, error) {
  const el = $(id);
  el.textContent = error ? String(error.message || error) : "";
  el.hidden = !error;
}

function parseLabels(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter((s) => s.length > 0);
}

function pick(file) {
  if (!file) return;
  pickedFile = file;
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
}

function renderBars(labels) {
  const list = $("classify-results");
  list.replaceChildren();
  for (const { label, score } of labels) {
    const li = document.createElement("li");
    li.className = "bar";
    li.dataset.label = label;
    li.dataset.score = String(score);
    const name = document.createElement("div");
    name.className = "name";
    const left = document.createElement("span");
    left.className = "label";
    left.textContent = label;
    const right = document.createElement("span");
    right.className = "score";
    right.textContent = (100 * score).toFixed(1) + "%";
    name.append(left, right);
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = Math.max(0, Math.min(100, 100 * score)).toFixed(1) + "%";
    track.append(fill);
    li.append(name, track);
    list.append(li);
  }
}

function renderGrid(results) {
  const grid = $("search-results");
  grid.replaceChildren();
  if (results.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No matches.";
    grid.append(p);
  }
  for (const hit of results) {
    const fig = document.createElement("figure");
    fig.className = "hit";
    fig.dataset.id = String(hit.id);
    const img = document.createElement("img");
    img.src = hit.image_url;  // same origin; the API key cannot travel on <img>, so reads must be open for images
    img.alt = hit.caption || `item ${hit.id}`;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    cap.textContent = `${hit.caption || ""} (${hit.score.toFixed(3)})`;
    fig.append(img, cap);
    grid.append(fig);
  }
}

async function classify(event) {
  event.preventDefault();
  showError("classify-error", null);
  const labels = parseLabels($("labels-input").value);
  try {
    if (!pickedFile) throw new Error("pick or drop an image first");
    if (labels.length === 0) throw new Error("type at least one label");
    const form = new FormData();
    form.append("images", pickedFile, pickedFile.name || "image");
    for (const label of labels) form.append("labels", label);
    $("classify-button").disabled = true;
    const body = await call("/v1/classify", { method: "POST", body: form, headers: headers() });
    renderBars(body.results[0].labels);
  } catch (error) {
    showError("classify-error", error);
  } finally {
    $("classify-button").disabled = false;
  }
}

async function search(event) {
  event.preventDefault();
  showError("search-error", null);
  const text = $("search-input").value.trim();
  try {
    if (!text) throw new Error("type something to search for");
    $("search-button").disabled = true;
    const body = await call("/v1/search", {
      method: "POST",
      body: JSON.stringify({ text, k: 12 }),
      headers: headers({ "Content-Type": "application/json" }),
    });
    renderGrid(body.results);
  } catch (error) {
    showError("search-error", error);
  } finally {
    $("search-button").disabled = false;
  }
}

async function loadInfo() {
  try {
    const info = await call("/v1/info", { headers: headers() });
    const b = info.bundle;
    const parts = [b ? `${b.arch} · ${b.loss} · dim ${b.embed_dim}` : "no model"];
    parts.push(info.index ? `${info.index.count} indexed items` : "no index");
    $("model-info").textContent = parts.join(" · ");
    if (!info.index) $("search-panel").classList.add("disabled");
  } catch (error) {
    $("model-info").textContent = String(error.message || error);
  }
}

function setup() {
  const zone = $("drop-zone");
  $("image-input").addEventListener("change", (e) => pick(e.target.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  $("classify-form").addEventListener("submit", classify);
  $("search-form").addEventListener("submit", search);
  loadInfo();
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", setup);
