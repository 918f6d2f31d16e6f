// tagger's review page: the library's photos a page at a time, their machine tags to accept or reject.
// Photos are listed from /v1/library/photos as the grid's end comes near; a thumbnail is fetched only
// while its card is near the screen and dropped when it is far from it, so a library of thousands
// never holds thousands of thumbnails. Decisions go to /v1/library/accept and /reject, which write
// the sidecars before they answer; the card then shows what the server says the photo is now.
"use strict";

const TOKEN_KEY = "tagger-token"; // shared with the tagging page
const PAGE = 60; // photos per listing request
const THUMB = 256; // thumbnail side asked for, in pixels
const THUMBS_AT_ONCE = 6; // thumbnail requests in flight
const CHUNK = 500; // photos per decision request
const $ = (id) => document.getElementById(id);

const view = { tag: "", unreviewed: false, offset: 0, total: 0, loading: false, generation: 0, focus: -1 };
const cards = []; // the grid's cards, in order
const selected = new Set(); // cards
const thumbs = { queue: [], active: 0 };

function headers(extra = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

// fetch with the token; a 401 shows the token form and ends the call with an error.
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    $("token-form").hidden = false;
    $("token-error").textContent = localStorage.getItem(TOKEN_KEY) ? "that token was refused" : "";
    throw new Error("the server needs an API token");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ? String(body.detail) : `HTTP ${response.status}`);
  return body;
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "muted";
}

async function loadSummary() {
  try {
    const lib = await api("v1/library");
    $("token-form").hidden = true;
    $("summary").textContent = `${lib.folder} · ${lib.photos.toLocaleString()} photos · ${lib.unreviewed.toLocaleString()} not reviewed`;
    return true;
  } catch (e) {
    $("summary").textContent = e.message;
    return false;
  }
}

async function loadTags() {
  const { tags } = await api("v1/library/tags");
  $("tag-list").replaceChildren(...tags.map((t) => {
    const option = document.createElement("option");
    option.value = t.tag;
    option.label = `${t.photos} photos, ${t.pending} to review`;
    return option;
  }));
}

// ---- thumbnails: fetched near the screen, dropped far from it

const near = new IntersectionObserver((entries) => {
  for (const entry of entries) (entry.isIntersecting ? wantThumb : dropThumb)(entry.target);
}, { rootMargin: "600px 0px" });

function wantThumb(card) {
  card.wanted = true;
  if (!card.url && !card.fetching && !card.failed) {
    thumbs.queue.push(card);
    pumpThumbs();
  }
}

function dropThumb(card) {
  card.wanted = false;
  if (card.fetching) card.fetching.abort();
  if (card.url) {
    URL.revokeObjectURL(card.url);
    card.url = null;
    card.querySelector("img").removeAttribute("src");
  }
}

function pumpThumbs() {
  while (thumbs.active < THUMBS_AT_ONCE && thumbs.queue.length) {
    const card = thumbs.queue.shift();
    if (!card.wanted || card.url || card.fetching || !card.isConnected) continue;
    thumbs.active++;
    fetchThumb(card).finally(() => {
      thumbs.active--;
      pumpThumbs();
    });
  }
}

async function fetchThumb(card) {
  const abort = new AbortController();
  card.fetching = abort;
  try {
    const response = await fetch(`v1/library/thumbnail?size=${THUMB}&path=${encodeURIComponent(card.dataset.path)}`,
      { headers: headers(), signal: abort.signal });
    if (!response.ok) {
      card.failed = true;
      const body = await response.json().catch(() => ({}));
      card.querySelector(".thumb").classList.add("broken");
      card.querySelector(".thumb").title = body.detail || `HTTP ${response.status}`;
      return;
    }
    const blob = await response.blob();
    if (card.wanted && card.isConnected) {
      card.url = URL.createObjectURL(blob);
      card.querySelector("img").src = card.url;
    }
  } catch (e) {
    // aborted: the card went far from the screen before its thumbnail came
  } finally {
    card.fetching = null;
  }
}

// ---- the grid

function chip(word, kind, n) {
  const item = document.createElement("li");
  item.className = `chip ${kind}`;
  item.dataset.word = word;
  if (kind === "pending") {
    item.innerHTML = '<span class="n"></span><span class="word"></span><button type="button" class="yes" tabindex="-1" title="accept (a)">✓</button><button type="button" class="no" tabindex="-1" title="reject (r)">✕</button>';
    item.querySelector(".n").textContent = n <= 9 ? String(n) : "";
    item.querySelector(".word").textContent = word;
  } else {
    item.textContent = kind === "kept" ? `✓ ${word}` : word;
    item.title = kind === "kept" ? "your keyword" : "rejected: never proposed for this photo again";
  }
  return item;
}

function fill(card, photo) {
  card.photo = photo;
  card.current = Math.min(card.current || 0, Math.max(photo.tags.length - 1, 0));
  card.classList.toggle("reviewed", photo.reviewed);
  const state = card.querySelector(".state");
  state.hidden = !photo.error;
  state.textContent = photo.error || "";
  const chips = [...photo.tags.map((t, i) => chip(t, "pending", i + 1)), ...photo.keywords.map((t) => chip(t, "kept")),
    ...photo.rejected.map((t) => chip(t, "rejected"))];
  if (!photo.tags.length && !photo.keywords.length && !photo.rejected.length && !photo.error) {
    const none = document.createElement("li");
    none.className = "muted";
    none.textContent = "no tags yet (tagger tag … --sidecar xmp)";
    chips.push(none);
  }
  card.querySelector(".chips").replaceChildren(...chips);
  markCurrent(card);
}

function markCurrent(card) {
  card.querySelectorAll(".chip.pending").forEach((c, i) => c.classList.toggle("current", i === card.current));
}

function makeCard(photo) {
  const card = $("photo-card").content.firstElementChild.cloneNode(true);
  card.dataset.path = photo.path;
  const name = card.querySelector(".name");
  name.textContent = photo.path.split("/").pop();
  name.title = photo.path;
  card.querySelector("img").alt = photo.path;
  fill(card, photo);
  return card;
}

function query() {
  const q = new URLSearchParams({ offset: view.offset, limit: PAGE });
  if (view.tag) q.set("tag", view.tag);
  if (view.unreviewed) q.set("unreviewed", "true");
  return q;
}

async function loadMore() {
  if (view.loading || (view.offset > 0 && view.offset >= view.total)) return;
  view.loading = true;
  const generation = view.generation;
  try {
    const page = await api(`v1/library/photos?${query()}`);
    if (generation !== view.generation) return; // the filter changed meanwhile
    view.total = page.total;
    view.offset += page.photos.length;
    const made = page.photos.map(makeCard);
    $("grid").append(...made);
    made.forEach((card) => {
      cards.push(card);
      near.observe(card);
    });
    showCount();
  } catch (e) {
    say(e.message, true);
  } finally {
    if (generation === view.generation) view.loading = false;
  }
  if (generation === view.generation && view.offset < view.total && endIsNear()) loadMore();
}

function endIsNear() {
  return $("more").getBoundingClientRect().top < window.innerHeight + 1200;
}

function showCount() {
  const what = view.tag ? ` tagged “${view.tag}”` : "";
  const which = view.unreviewed ? " not reviewed" : "";
  $("count").textContent = `${cards.length.toLocaleString()} of ${view.total.toLocaleString()} photos${what}${which}`;
  $("more").textContent = cards.length < view.total ? "more as you scroll…" : "";
}

function reset() {
  view.generation++;
  view.offset = 0;
  view.total = 0;
  view.loading = false;
  view.focus = -1;
  for (const card of cards) {
    near.unobserve(card);
    dropThumb(card);
  }
  cards.length = 0;
  thumbs.queue.length = 0;
  selected.clear();
  $("grid").replaceChildren();
  showBulk();
  loadMore();
}

// ---- focus and selection

function focusCard(i) {
  if (!cards.length) return;
  i = Math.max(0, Math.min(cards.length - 1, i));
  if (cards[view.focus]) cards[view.focus].classList.remove("focused");
  view.focus = i;
  const card = cards[i];
  card.classList.add("focused");
  card.focus({ preventScroll: true });
  card.scrollIntoView({ block: "nearest" });
  if (i >= cards.length - 2 * columns()) loadMore();
}

function columns() {
  if (!cards.length) return 1;
  const top = cards[0].offsetTop;
  let n = 0;
  while (n < cards.length && cards[n].offsetTop === top) n++;
  return Math.max(n, 1);
}

function select(card, on = !selected.has(card)) {
  if (on) selected.add(card);
  else selected.delete(card);
  card.classList.toggle("selected", on);
  card.querySelector(".pick").checked = on;
}

function showBulk() {
  $("bulk").hidden = selected.size === 0;
  if (!selected.size) return;
  $("bulk-count").textContent = `${selected.size.toLocaleString()} selected`;
  // The tags pending on the selected photos, most common first; the filter's tag, or the focused photo's, chosen.
  const counts = new Map();
  for (const card of selected) for (const t of card.photo.tags) counts.set(t, (counts.get(t) || 0) + 1);
  const focused = cards[view.focus];
  const want = $("bulk-tag").value || view.tag || (focused && focused.photo.tags[focused.current]);
  const options = [...counts].sort((a, b) => b[1] - a[1]).map(([t, n]) => {
    const option = document.createElement("option");
    option.value = t;
    option.textContent = `${t} (${n})`;
    return option;
  });
  $("bulk-tag").replaceChildren(...options);
  if (want && counts.has(want)) $("bulk-tag").value = want;
  else {
    const same = [...counts.keys()].find((t) => want && t.toLowerCase() === want.toLowerCase());
    if (same) $("bulk-tag").value = same;
  }
}

// ---- decisions

async function decide(decision, tag, targets) {
  // Only the photos the tag is there to decide on (accepting also takes a rejection back).
  const chosen = targets.filter((c) => !c.photo.error && (c.photo.tags.includes(tag) || (decision === "accept" && c.photo.rejected.includes(tag))));
  if (!tag || !chosen.length) {
    say(tag ? `none of those photos has “${tag}” to ${decision}` : "no tag to decide on", true);
    return;
  }
  const byPath = new Map(chosen.map((c) => [c.dataset.path, c]));
  let done = 0;
  const failed = [];
  say(`${decision === "accept" ? "accepting" : "rejecting"} “${tag}” on ${chosen.length.toLocaleString()} photos…`);
  try {
    for (let start = 0; start < chosen.length; start += CHUNK) {
      const paths = chosen.slice(start, start + CHUNK).map((c) => c.dataset.path);
      const body = await api(`v1/library/${decision}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ tag, paths }) });
      for (const result of body.results) {
        const card = byPath.get(result.path);
        if (card) fill(card, result);
        if (result.ok) done++;
        else failed.push(result.reason);
      }
    }
  } catch (e) {
    failed.push(e.message);
  }
  const verb = decision === "accept" ? "accepted" : "rejected";
  const photos = done === 1 ? `${chosen.length === 1 ? chosen[0].dataset.path.split("/").pop() : "1 photo"}` : `${done.toLocaleString()} photos`;
  say(failed.length ? `“${tag}” ${verb} on ${photos}; not on ${failed.length}: ${failed[0]}` : `“${tag}” ${verb} on ${photos}`, failed.length > 0);
  showBulk();
  loadSummary();
  loadTags().catch(() => {});
}

function decideKey(decision) {
  if (selected.size) {
    decide(decision, $("bulk-tag").value, [...selected]);
    return;
  }
  const card = cards[view.focus];
  if (card) decide(decision, card.photo.tags[card.current], [card]);
}

// ---- wiring

function onKey(e) {
  if (e.target.closest("input:not(.pick), select, textarea")) {
    if (e.key === "Escape") e.target.blur();
    return;
  }
  if (e.altKey) return;
  const card = cards[view.focus];
  const ctrl = e.ctrlKey || e.metaKey;
  if (ctrl && e.key.toLowerCase() === "a") {
    cards.forEach((c) => select(c, true));
    showBulk();
  } else if (ctrl) {
    return;
  } else if (e.key === "ArrowRight") focusCard(view.focus + 1);
  else if (e.key === "ArrowLeft") focusCard(view.focus - 1);
  else if (e.key === "ArrowDown") focusCard(view.focus < 0 ? 0 : view.focus + columns());
  else if (e.key === "ArrowUp") focusCard(view.focus - columns());
  else if (e.key === "Home") focusCard(0);
  else if (e.key === "End") focusCard(cards.length - 1);
  else if (/^[1-9]$/.test(e.key) && card) {
    const i = Number(e.key) - 1;
    if (i < card.photo.tags.length) {
      card.current = i;
      markCurrent(card);
      if (selected.size) {
        $("bulk-tag").value = card.photo.tags[i];
        showBulk();
      }
    }
  } else if (e.key === "a") decideKey("accept");
  else if (e.key === "r") decideKey("reject");
  else if (e.key === " " && card) {
    select(card);
    showBulk();
  } else if (e.key === "Escape") {
    [...selected].forEach((c) => select(c, false));
    showBulk();
  } else if (e.key === "/") $("tag").focus();
  else if (e.key === "u") $("unreviewed").click();
  else if (e.key === "?") $("keys").open = !$("keys").open;
  else return;
  e.preventDefault();
}

function onClick(e) {
  const card = e.target.closest(".photo");
  if (!card) return;
  const i = cards.indexOf(card);
  const item = e.target.closest(".chip.pending");
  if (item && e.target.closest("button")) {
    focusCard(i); // the card, not the button, holds the focus: Space then selects, as everywhere else
    decide(e.target.closest(".yes") ? "accept" : "reject", item.dataset.word, [card]);
    return;
  }
  if (e.target.closest(".pick") || e.ctrlKey || e.metaKey) {
    select(card, e.target.closest(".pick") ? e.target.checked : !selected.has(card));
  } else if (e.shiftKey && view.focus >= 0) {
    const [from, to] = [Math.min(view.focus, i), Math.max(view.focus, i)];
    cards.slice(from, to + 1).forEach((c) => select(c, true));
  }
  if (item) {
    card.current = [...card.querySelectorAll(".chip.pending")].indexOf(item);
    markCurrent(card);
  }
  focusCard(i);
  showBulk();
}

async function setUp() {
  document.addEventListener("keydown", onKey);
  $("grid").addEventListener("click", onClick);
  window.addEventListener("scroll", () => {
    if (endIsNear()) loadMore();
  }, { passive: true });
  let typing;
  $("tag").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      if ($("tag").value.trim() !== view.tag) {
        view.tag = $("tag").value.trim();
        reset();
      }
    }, 250);
  });
  $("tag").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      clearTimeout(typing);
      view.tag = $("tag").value.trim();
      reset();
      $("tag").blur();
    }
  });
  $("unreviewed").addEventListener("change", () => {
    view.unreviewed = $("unreviewed").checked;
    reset();
  });
  $("bulk-accept").addEventListener("click", () => decideKey("accept"));
  $("bulk-reject").addEventListener("click", () => decideKey("reject"));
  $("bulk-clear").addEventListener("click", () => {
    [...selected].forEach((c) => select(c, false));
    showBulk();
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  start();
}

async function start() {
  if (!(await loadSummary())) return;
  loadTags().catch(() => {});
  reset();
}

setUp();
