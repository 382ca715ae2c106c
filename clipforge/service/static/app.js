// clipforge web page: classify an image against typed labels; ask a fusion head about an image; search the
// index by text. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const picked = { classify: null, ask: null };  // the file chosen in each panel
let servedHeads = [];

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

function pick(panel, previewId, file) {
  if (!file) return;
  picked[panel] = file;
  const preview = $(previewId);
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);  // the previous pick's image
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
}

// bars of [{label, score, similarity?}] in the given order; `top` (a label) is highlighted
function renderBars(listId, labels, top = null) {
  const list = $(listId);
  list.replaceChildren();
  for (const { label, score, similarity } of labels) {
    const li = document.createElement("li");
    li.className = label === top ? "bar top" : "bar";
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
    if (similarity !== undefined) {  // the raw cosine: what tells a fit from a misfit when there is one label
      const sim = document.createElement("span");
      sim.className = "sim";
      sim.title = "cosine similarity of the image and the label";
      sim.textContent = "cos " + similarity.toFixed(3);
      name.append(sim);
    }
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
    const file = picked.classify;
    if (!file) throw new Error("pick or drop an image first");
    if (labels.length === 0) throw new Error("type at least one label");
    const form = new FormData();
    form.append("images", file, file.name || "image");
    for (const label of labels) form.append("labels", label);
    $("classify-button").disabled = true;
    const body = await call("/v1/classify", { method: "POST", body: form, headers: headers() });
    renderBars("classify-results", body.results[0].labels);
  } catch (error) {
    showError("classify-error", error);
  } finally {
    $("classify-button").disabled = false;
  }
}

async function ask(event) {
  event.preventDefault();
  showError("ask-error", null);
  const name = $("head-select").value;
  const text = $("ask-text").value.trim();
  try {
    const file = picked.ask;
    if (!file) throw new Error("pick or drop an image first");
    if (!text) throw new Error("type a question or text");
    const form = new FormData();
    form.append("images", file, file.name || "image");
    form.append("texts", text);
    $("ask-button").disabled = true;
    const body = await call(`/v1/heads/${encodeURIComponent(name)}/predict`, {
      method: "POST", body: form, headers: headers(),
    });
    const result = body.results[0];
    const bars = body.labels.map((label) => ({ label, score: result.probabilities[label] }));
    renderBars("ask-results", bars, result.top);
  } catch (error) {
    showError("ask-error", error);
  } finally {
    $("ask-button").disabled = false;
  }
}

function describeHead() {
  const head = servedHeads.find((h) => h.name === $("head-select").value);
  if (!head) return;
  $("head-info").textContent = `${head.task} · ${head.labels.join(" / ")} · ${head.kind}`;
  $("ask-results").replaceChildren();
}

async function loadHeads() {
  try {
    servedHeads = (await call("/v1/heads", { headers: headers() })).heads;
  } catch {
    servedHeads = [];  // an older server, or a read key not typed yet: no panel
  }
  const select = $("head-select");
  select.replaceChildren(...servedHeads.map((h) => new Option(h.name, h.name)));
  $("ask-panel").hidden = servedHeads.length === 0;
  describeHead();
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
    $("search-panel").hidden = !info.index;  // nothing to search: no panel (as the ask panel without heads)
  } catch (error) {
    $("model-info").textContent = String(error.message || error);
  }
}

function dropTarget(panel, zoneId, inputId, previewId) {
  const zone = $(zoneId);
  $(inputId).addEventListener("change", (e) => pick(panel, previewId, e.target.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    pick(panel, previewId, e.dataTransfer.files[0]);
  });
}

async function setup() {
  dropTarget("classify", "drop-zone", "image-input", "preview");
  dropTarget("ask", "ask-drop-zone", "ask-image-input", "ask-preview");
  $("classify-form").addEventListener("submit", classify);
  $("ask-form").addEventListener("submit", ask);
  $("head-select").addEventListener("change", describeHead);
  $("search-form").addEventListener("submit", search);
  // a read key may be what hid the model line and the heads: both are asked again with it
  $("api-key").addEventListener("change", () => Promise.all([loadInfo(), loadHeads()]));
  await Promise.all([loadInfo(), loadHeads()]);
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", setup);
