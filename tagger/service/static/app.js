// tagger's page: upload dropped or picked photos to /v1/tag and show each one with its tags.
// The API token, when the server wants one, is kept in localStorage so it is asked for once.
"use strict";

const TOKEN_KEY = "tagger-token";
const $ = (id) => document.getElementById(id);
let maxPhotos = 32; // replaced by the server's limit once /v1/model answers

function headers() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// fetch with the token; a 401 shows the token form and ends the call with an error.
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers() });
  if (response.status === 401) {
    $("token-form").hidden = false;
    $("token-error").textContent = localStorage.getItem(TOKEN_KEY) ? "that token was refused" : "";
    throw new Error("the server needs an API token");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ? String(body.detail) : `HTTP ${response.status}`);
  return body;
}

async function loadModel() {
  try {
    const model = await api("v1/model");
    maxPhotos = model.limits.max_photos;
    const n = model.info && (model.info.train_photos || model.info.photos);
    const photos = n ? `, trained on ${n.toLocaleString()} photos` : "";
    $("model").textContent = `${model.backbone} · ${model.vocabulary_size.toLocaleString()} tags${photos}`;
    $("token-form").hidden = true;
    // Served with --library: link to its review page.
    fetch("v1/library", { headers: headers() }).then((r) => { $("review-link").hidden = !r.ok; }, () => {});
  } catch (e) {
    $("model").textContent = e.message;
  }
}

function addCard(file) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  const img = card.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  // A file the browser cannot show either: an empty frame instead of the broken-image icon.
  img.addEventListener("error", () => {
    const blank = document.createElement("div");
    blank.className = "thumb";
    img.replaceWith(blank);
  });
  card.querySelector(".name").textContent = file.name;
  $("results").append(card);
  return card;
}

function showTags(card, result) {
  const state = card.querySelector(".state");
  if (result.error) {
    card.classList.add("failed");
    state.textContent = result.error;
    return;
  }
  state.textContent = result.tags.length ? "" : result.note || "no tags above the threshold";
  state.hidden = result.tags.length > 0;
  const list = card.querySelector(".tags");
  result.tags.forEach((tag, i) => {
    const score = result.scores[i];
    const item = document.createElement("li");
    item.className = "tag";
    item.innerHTML = '<span class="word"></span><span class="bar"><span></span></span><span class="score"></span>';
    item.querySelector(".word").textContent = tag;
    item.querySelector(".bar span").style.width = `${Math.round(score * 100)}%`;
    item.querySelector(".score").textContent = score.toFixed(2);
    list.append(item);
  });
}

function failCard(card, message) {
  card.classList.add("failed");
  card.querySelector(".state").textContent = message;
}

async function tagFiles(files) {
  $("status").textContent = "";
  const photos = [...files].filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|gif|webp|bmp|tiff?)$/i.test(f.name));
  if (!photos.length) {
    $("status").textContent = "none of those files is a photo";
    return;
  }
  const topK = $("top-k").value;
  const query = topK ? `?top_k=${encodeURIComponent(topK)}` : "";
  // The server takes at most maxPhotos per request: send the photos in groups of that size.
  for (let start = 0; start < photos.length; start += maxPhotos) {
    const group = photos.slice(start, start + maxPhotos);
    const cards = group.map(addCard);
    const form = new FormData();
    group.forEach((file) => form.append("files", file, file.name));
    try {
      const body = await api(`v1/tag${query}`, { method: "POST", body: form });
      body.results.forEach((result, i) => showTags(cards[i], result));
    } catch (e) {
      cards.forEach((card) => failCard(card, e.message));
    }
  }
}

function setUp() {
  const drop = $("drop");
  $("picker").addEventListener("change", (e) => {
    tagFiles(e.target.files);
    e.target.value = ""; // picking the same photo again should tag it again
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    tagFiles(e.dataTransfer.files);
  });
  $("clear").addEventListener("click", () => {
    $("results").querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
    $("results").replaceChildren();
    $("status").textContent = "";
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    loadModel();
  });
  loadModel();
}

setUp();
