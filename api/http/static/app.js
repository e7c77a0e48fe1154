// colsmol web page: search and streamed answers with cited regions, uploads with per-file results, the
// documents panel. One file, no build step, nothing fetched from anywhere but this server.
"use strict";
const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

// ------------------------------------------------------------------ the API key
// Kept for this tab (sessionStorage) unless "Remember on this device" is ticked (then localStorage too).
const KEY = "colsmol-key";
const keyInput = $("api-key"), remember = $("remember-key");
remember.checked = localStorage.getItem(KEY) !== null;
keyInput.value = sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";

function saveKey() {
  const key = keyInput.value.trim();
  keyInput.removeAttribute("aria-invalid");
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  if (remember.checked && key) localStorage.setItem(KEY, key); else localStorage.removeItem(KEY);
}
keyInput.addEventListener("change", () => { saveKey(); refreshAll(); });
remember.addEventListener("change", saveKey);

function authHeaders(extra = {}) {
  const key = keyInput.value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// ------------------------------------------------------------------ the collection
// The server's default collection is at /v1; another at /v1/collections/{name} (GET /v1/collections lists the
// ones this key can use). The choice is kept for this tab.
const COLLECTION = "colsmol-collection";
const picker = $("collection");
let defaultCollection = null;

function base(name = picker.value) {
  return !name || name === defaultCollection ? "/v1" : `/v1/collections/${encodeURIComponent(name)}`;
}

async function loadCollections() {
  const items = (await (await api("/v1/collections")).json()).items;
  const wanted = picker.value || sessionStorage.getItem(COLLECTION);
  defaultCollection = (items.find((c) => c.default) || {}).name || null;
  picker.replaceChildren(...items.map((c) => el("option", { value: c.name, textContent: c.default ? `${c.name} (default)` : c.name })));
  const pick = items.find((c) => c.name === wanted) || items[0];
  if (pick) picker.value = pick.name;
  picker.disabled = items.length < 2;
}

picker.addEventListener("change", () => {
  sessionStorage.setItem(COLLECTION, picker.value);
  $("results").replaceChildren();
  $("answer").hidden = true;
  say($("search-status"), "");
  refreshAll();
});

// ------------------------------------------------------------------ errors a person can act on
class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; this.detail = detail; }
}

// The server's reason, said so that it points at the fix. 401 sends the user to the key field.
function friendly(err, what = "That") {
  if (err instanceof ApiError) {
    if (err.status === 401) {
      keyInput.setAttribute("aria-invalid", "true");
      return keyInput.value.trim()
        ? "The server did not accept this API key. Check the “API key” field at the top of the page."
        : "This server needs an API key. Enter it in the “API key” field at the top of the page.";
    }
    if (err.status === 403) return `${what} was refused: ${err.detail}`;
    if (err.status === 413) return `Too large: ${err.detail}`;
    if (err.status === 503) return `The server is not ready: ${err.detail}. Try again in a moment.`;
    return `${what} failed: ${err.detail}`;
  }
  if (err instanceof TypeError) return "Cannot reach the colsmol server. Is it still running?";
  return `${what} failed: ${err.message}`;
}

function showError(node, err, what) {
  node.className = "error";
  node.textContent = friendly(err, what);
}

function say(node, text) { node.className = ""; node.textContent = text; }

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (!res.ok) {
    let detail = res.statusText || `HTTP ${res.status}`;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return res;
}

const json = (body) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

// ------------------------------------------------------------------ images and cited regions
// <img src> cannot send an Authorization header: with a key, images are fetched and shown as blobs.
// img.dataset.want is the API URL last asked for (a late fetch for another is dropped); img.dataset.src
// is the API URL that the current src shows (the same URL, or a blob of it).
async function setImage(img, url) {
  img.dataset.want = url;
  if (!keyInput.value.trim()) { setSrc(img, url, url); return; }
  const blob = await (await api(url)).blob();
  if (img.dataset.want === url) setSrc(img, URL.createObjectURL(blob), url);
}

function setSrc(img, src, url) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.dataset.src = url;
  if (src) img.src = src; else img.removeAttribute("src");
}

const SVG = "http://www.w3.org/2000/svg";

// Boxes over an image: regions are page-relative (0-1, y down), so a 1 x 1 viewBox stretched over the image.
function drawRegions(frame, regions) {
  frame.querySelector("svg.regions")?.remove();
  if (!regions || !regions.length) return;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "regions");
  svg.setAttribute("viewBox", "0 0 1 1");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  regions.forEach((r, i) => {
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", r.x0); rect.setAttribute("y", r.y0);
    rect.setAttribute("width", Math.max(0, r.x1 - r.x0)); rect.setAttribute("height", Math.max(0, r.y1 - r.y0));
    rect.setAttribute("class", i === 0 ? "region best" : "region");
    rect.dataset.score = r.score;
    svg.append(rect);
  });
  frame.append(svg);
}

function regionsText(regions) {
  const n = (regions || []).length;
  return n ? `, ${n} matched region${n > 1 ? "s" : ""} boxed` : "";
}

// Which side found a hit: pictures (MaxSim), words (BM25), or both.
const foundBy = (hit) => {
  const by = hit.found_by || [];
  return by.length === 2 ? " · pictures + words" : by[0] === "text" ? " · words" : by[0] === "visual" ? " · pictures" : "";
};
// The search mode picked on the page (unset: the server's default, hybrid).
const searchBy = () => $("search-by")?.value || undefined;

const pageName = (hit) => `${hit.file_name || hit.doc_id || "document"}, page ${hit.page_number}`;

// A result: a link to the page image, opened in the viewer (a new tab on middle click).
function card(hit, query) {
  const img = el("img", { alt: pageName(hit) + regionsText(hit.regions), loading: "lazy" });
  const frame = el("span", { className: "frame" }, img);
  drawRegions(frame, hit.regions);
  setImage(img, hit.thumb_url).catch(() => { img.alt += " (image unavailable)"; });
  const a = el("a", { className: "hit", href: hit.image_url },
    frame,
    el("div", { className: "meta", textContent: `${hit.file_name || hit.doc_id} · p. ${hit.page_number}` }),
    el("div", { className: "meta score", textContent: `score ${hit.score.toFixed(3)}${foundBy(hit)}` }));
  a.dataset.pointId = hit.point_id;
  a.addEventListener("click", (ev) => {
    if (ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    ev.preventDefault();
    enlarge(hit, query, a);
  });
  return a;
}

// ------------------------------------------------------------------ enlarged page: boxes, and an optional heatmap
// The heatmap is GET /v1/pages/{id}/explain?query=…: the page with the regions that matched the query
// (or question) whose results are shown.
const viewer = { hit: null, query: "", heatmap: false, opener: null };

function enlarge(hit, query, opener) {
  Object.assign(viewer, { hit, query: query || "", heatmap: false, opener: opener || document.activeElement });
  $("viewer-heatmap").hidden = !viewer.query;
  const img = $("viewer-img");
  setSrc(img, "", "");  // not the last page shown while this one loads
  drawRegions(img.parentElement, hit.regions);
  showViewerImage();
  $("viewer").showModal();
  $("viewer-close").focus();
}

function showViewerImage() {
  const { hit, query, heatmap } = viewer;
  const caption = $("viewer-caption"), img = $("viewer-img");
  const name = pageName(hit), boxed = regionsText(hit.regions);
  $("viewer-heatmap").setAttribute("aria-pressed", String(heatmap));
  img.alt = name + boxed;
  say(caption, heatmap ? `${name}: computing heatmap for “${query}”…` : name + boxed);
  const url = heatmap
    ? `${hit.image_url.replace(/\/image(\?.*)?$/, "")}/explain?query=${encodeURIComponent(query)}`
    : hit.image_url;
  img.onload = () => {
    if (img.dataset.src === url) caption.textContent = heatmap ? `${name}: heatmap for “${query}”${boxed}` : name + boxed;
  };
  img.onerror = () => {
    if (img.dataset.src === url) { caption.className = "error"; caption.textContent = `${name}: image unavailable`; }
  };
  setImage(img, url).catch((e) => { if (img.dataset.want === url) showError(caption, e, "Loading the page"); });
}

$("viewer-heatmap").addEventListener("click", () => {
  if (!viewer.hit) return;
  viewer.heatmap = !viewer.heatmap;
  showViewerImage();
});
$("viewer-close").addEventListener("click", () => $("viewer").close());
$("viewer").addEventListener("close", () => { if (viewer.opener && viewer.opener.isConnected) viewer.opener.focus(); });

// ------------------------------------------------------------------ search and answer
// One request at a time: a new search or answer aborts the one in flight (its fetch, or its event stream).
let inFlight = null;

function begin(button) {
  if (inFlight) inFlight.abort();
  const ctl = new AbortController();
  inFlight = ctl;
  for (const b of [$("search-button"), $("answer-button")]) b.disabled = b === button;
  button.setAttribute("aria-busy", "true");
  ctl.signal.addEventListener("abort", () => finish(ctl, button));
  return ctl;
}

function finish(ctl, button) {
  button.removeAttribute("aria-busy");
  if (inFlight === ctl) {
    inFlight = null;
    $("search-button").disabled = false; $("answer-button").disabled = false;
  }
}

function searchFilter() {
  const filter = {};
  const doc = $("filter-doc").value, meta = $("filter-meta").value;
  if (doc) filter.doc_id = doc;
  if (meta) { const [key, value] = JSON.parse(meta); filter[`metadata.${key}`] = value; }
  return Object.keys(filter).length ? filter : undefined;
}

function resultsK() {
  const k = Number($("k").value);
  return Number.isInteger(k) && k >= 1 ? Math.min(k, Number($("k").max)) : 12;
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const mode = ev.submitter ? ev.submitter.value : "search";
  const q = $("query").value.trim();
  if (!q) return;
  const button = mode === "answer" ? $("answer-button") : $("search-button");
  const ctl = begin(button);
  (mode === "answer" ? answer(q, ctl.signal) : search(q, ctl.signal))
    .catch((e) => { if (!ctl.signal.aborted) showError($("search-status"), e, mode === "answer" ? "Answering" : "The search"); })
    .finally(() => finish(ctl, button));
});

async function search(query, signal) {
  $("answer").hidden = true;
  $("answer-sources").replaceChildren();
  say($("search-status"), "Searching…");
  const t0 = performance.now();
  const res = await api(`${base()}/search`, {
    ...json({ query, k: resultsK(), filter: searchFilter(), mode: searchBy() }), signal });
  const { hits } = await res.json();
  if (signal.aborted) return;
  const ms = Math.round(performance.now() - t0);
  $("results").replaceChildren(...hits.map((h) => card(h, query)));
  if (hits.length) {
    say($("search-status"), `${hits.length} page${hits.length > 1 ? "s" : ""} in ${ms} ms, best first`);
  } else if (facets && facets.pages === 0) {
    say($("search-status"), "Nothing is indexed yet: add documents below, then search them.");
  } else {
    say($("search-status"), `No pages match${searchFilter() ? " these filters" : ""} (${ms} ms).`);
  }
}

async function answer(question, signal) {
  const box = $("answer"), text = $("answer-text");
  box.hidden = false; text.textContent = ""; $("answer-sources").replaceChildren(); $("results").replaceChildren();
  say($("search-status"), "Thinking…");
  const t0 = performance.now();
  const res = await api(`${base()}/answer`, {
    ...json({ question, stream: true, filter: searchFilter(), mode: searchBy() }), signal });
  const reader = res.body.getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}));
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done || signal.aborted) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const event = /^event: (.*)$/m.exec(block), data = /^data: (.*)$/m.exec(block);
      if (!event || !data) continue;
      const payload = JSON.parse(data[1]);
      if (event[1] === "token") text.textContent += payload;
      else if (event[1] === "sources") {
        $("answer-sources").replaceChildren(...payload.sources.map((h) => card(h, question)));
        const n = payload.sources.length, s = ((performance.now() - t0) / 1000).toFixed(2);
        say($("search-status"), n ? `Answered from ${n} page(s) in ${s} s` : "Nothing is indexed yet: add documents below, then ask.");
      } else if (event[1] === "error") showError($("search-status"), new ApiError(500, payload.detail), "Answering");
    }
  }
}

// ------------------------------------------------------------------ filters: what the collection holds
let facets = null;

async function loadFacets() {
  const f = await (await api(`${base()}/facets?limit=1000&values=50`)).json();
  facets = f;
  const docSel = $("filter-doc"), metaSel = $("filter-meta");
  const keepDoc = docSel.value, keepMeta = metaSel.value;
  docSel.replaceChildren(el("option", { value: "", textContent: `All documents (${f.documents_total})` }),
    ...f.documents.map((d) => el("option", { value: d.doc_id, textContent: `${d.file_name} (${d.page_count} p.)` })));
  metaSel.replaceChildren(el("option", { value: "", textContent: "Any" }),
    ...f.metadata.map((m) => {
      const group = el("optgroup", { label: m.key });
      group.append(...m.values.map((v) => el("option", { value: JSON.stringify([m.key, v.value]), textContent: `${m.key}: ${v.value} (${v.documents})` })));
      return group;
    }));
  docSel.value = [...docSel.options].some((o) => o.value === keepDoc) ? keepDoc : "";
  metaSel.value = [...metaSel.options].some((o) => o.value === keepMeta) ? keepMeta : "";
  metaSel.disabled = !f.metadata.length;
}

// ------------------------------------------------------------------ the documents panel
const DOCS_PER_PAGE = 20;
const docs = { offset: 0, total: 0 };
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

async function loadDocuments() {
  const state = $("doc-state").value;
  const res = await api(`${base()}/documents?offset=${docs.offset}&limit=${DOCS_PER_PAGE}&state=${state}`);
  const list = await res.json();
  if (!list.items.length && list.total && docs.offset) {  // the last page emptied (deletes): go back one
    docs.offset = Math.max(0, docs.offset - DOCS_PER_PAGE);
    return loadDocuments();
  }
  docs.total = list.total;
  $("doc-list").replaceChildren(...list.items.map(documentRow));
  const empty = list.total === 0;
  $("doc-empty").hidden = !(empty && state === "all");
  say($("doc-status"), empty && state !== "all" ? `No ${state} documents.` : "");
  $("doc-pager").hidden = list.total <= DOCS_PER_PAGE;
  const last = Math.min(list.total, docs.offset + list.items.length);
  $("doc-range").textContent = `${docs.offset + 1}–${last} of ${list.total}`;
  $("doc-prev").disabled = docs.offset === 0;
  $("doc-next").disabled = last >= list.total;
}

function documentRow(d) {
  const name = d.file_name;
  const first = { point_id: d.thumb_url.split("/")[3], doc_id: d.doc_id, file_name: name, page_number: 1,
    image_url: d.thumb_url.replace("size=thumb", "size=full"), regions: [] };
  const img = el("img", { alt: "", loading: "lazy" });
  setImage(img, d.thumb_url).catch(() => {});
  const thumb = el("button", { type: "button", className: "thumb" }, img);
  thumb.setAttribute("aria-label", `Open the first page of ${name}`);
  thumb.addEventListener("click", () => enlarge(first, "", thumb));
  const when = Number.isNaN(Date.parse(d.ingested_at)) ? d.ingested_at : dateFormat.format(new Date(d.ingested_at));
  const state = d.complete
    ? el("span", { className: "doc-state", textContent: "indexed" })
    : el("span", { className: "doc-state incomplete",
      textContent: `incomplete: ${d.pages_stored} of ${d.page_count} pages (an upload still running or interrupted; re-index to finish)` });
  const meta = Object.entries(d.metadata || {}).filter(([k]) => !k.startsWith("_"));
  const info = el("div", { className: "doc-info" },
    el("div", { className: "doc-name", textContent: name }),
    el("div", { className: "doc-meta" }, `${d.page_count} page${d.page_count === 1 ? "" : "s"} · ${when} · `, state));
  if (meta.length) info.append(el("div", { className: "doc-md", textContent: meta.map(([k, v]) => `${k}: ${v}`).join(" · ") }));
  const reindex = el("button", { type: "button", textContent: "Re-index…",
    title: "Upload this document's file again: finishes an interrupted upload, or replaces the document with a new version" });
  reindex.setAttribute("aria-label", `Re-index ${name} from its file`);
  reindex.addEventListener("click", () => pickReindexFile(d));
  const del = el("button", { type: "button", className: "danger", textContent: "Delete" });
  del.setAttribute("aria-label", `Delete ${name}`);
  del.addEventListener("click", () => confirmDelete(d, del));
  const row = el("li", { className: "doc" }, thumb, info, el("div", { className: "doc-actions" }, reindex, del));
  row.dataset.docId = d.doc_id;
  return row;
}

function askConfirm(text, okLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}
$("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));
$("confirm-ok").addEventListener("click", () => $("confirm").close("ok"));

async function confirmDelete(d, button) {
  const pages = `${d.pages_stored} page${d.pages_stored === 1 ? "" : "s"}`;
  const ok = await askConfirm(`Delete “${d.file_name}”? Its ${pages} and page images are removed from the index. This cannot be undone.`, "Delete");
  if (!ok) { button.focus(); return; }
  button.disabled = true;
  try {
    const r = await (await api(`${base()}/documents/${encodeURIComponent(d.doc_id)}`, { method: "DELETE" })).json();
    await refreshAll();
    say($("doc-status"), `Deleted “${d.file_name}” (${r.pages_deleted} pages).`);
    $("documents-title").focus();
  } catch (e) {
    button.disabled = false;
    showError($("doc-status"), e, "Deleting");
  }
}

let reindexing = null;
function pickReindexFile(d) {
  reindexing = d;
  $("reindex-file").value = "";
  $("reindex-file").click();
}
$("reindex-file").addEventListener("change", () => {
  const d = reindexing, file = $("reindex-file").files[0];
  if (!d || !file) return;
  const metadata = Object.fromEntries(Object.entries(d.metadata || {}).filter(([k]) => !k.startsWith("_")));
  upload([file], { metadata, replaces: d });
});

$("doc-prev").addEventListener("click", () => { docs.offset = Math.max(0, docs.offset - DOCS_PER_PAGE); loadDocuments().catch((e) => showError($("doc-status"), e, "Listing documents")); });
$("doc-next").addEventListener("click", () => { docs.offset += DOCS_PER_PAGE; loadDocuments().catch((e) => showError($("doc-status"), e, "Listing documents")); });
$("doc-state").addEventListener("change", () => { docs.offset = 0; loadDocuments().catch((e) => showError($("doc-status"), e, "Listing documents")); });
$("doc-empty-upload").addEventListener("click", () => { $("files").focus(); $("files").click(); });

// ------------------------------------------------------------------ upload: bytes, then the job's pages
// The job's page total is counted by the server before any page is embedded, so the bar never runs back.
const JOB = "colsmol-job";

$("upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const files = [...$("files").files];
  if (!files.length) { say($("upload-status"), "Choose one or more PDFs or page images first."); $("files").focus(); return; }
  let metadata;
  const raw = $("upload-metadata").value.trim();
  if (raw) {
    try { metadata = JSON.parse(raw); } catch (_) {
      $("upload-status").className = "error";
      $("upload-status").textContent = "The metadata is not valid JSON: write it as {\"key\": \"value\", …}.";
      $("upload-metadata").closest("details").open = true;
      $("upload-metadata").focus();
      return;
    }
  }
  upload(files, { metadata, password: $("upload-password").value });
});

function fileRows(names) {
  const rows = new Map();
  $("upload-files").replaceChildren(...names.map((name) => {
    const state = el("span", { className: "state", textContent: "waiting" });
    const li = el("li", {}, `${name}: `, state);
    rows.set(name, { li, state });
    return li;
  }));
  return rows;
}

function markFile(rows, name, state, reason) {
  const row = rows.get(name);
  if (!row) return;
  row.li.className = state === "failed" ? "failed" : "";
  row.state.textContent = reason ? `${state}: ${reason}` : state;
}

function upload(files, { metadata, password, replaces } = {}) {
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  if (metadata && Object.keys(metadata).length) form.append("metadata", JSON.stringify(metadata));
  if (password) form.append("password", password);
  const bar = $("upload-progress"), status = $("upload-status"), button = $("upload-button");
  const rows = fileRows(files.map((f) => f.name));
  const bytes = files.reduce((n, f) => n + f.size, 0);
  button.disabled = true;
  bar.hidden = false; bar.value = 0;
  say(status, `Uploading ${files.length} file${files.length > 1 ? "s" : ""} (${mb(bytes)})…`);
  for (const name of rows.keys()) markFile(rows, name, "uploading");
  const xhr = new XMLHttpRequest();
  const jobBase = base();
  xhr.open("POST", `${jobBase}/documents`);
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
  const fail = (err) => {
    bar.hidden = true; button.disabled = false;
    showError(status, err, "The upload");
    for (const name of rows.keys()) markFile(rows, name, "failed", "not uploaded");
  };
  xhr.onerror = () => fail(new TypeError("network"));
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status !== 202) { fail(new ApiError(xhr.status, body.detail || xhr.statusText)); return; }
    sessionStorage.setItem(JOB, JSON.stringify({ id: body.job_id, names: [...rows.keys()], replaces: replaces ? replaces.doc_id : null, base: jobBase }));
    for (const name of rows.keys()) markFile(rows, name, "queued");
    bar.removeAttribute("value");  // indeterminate until the job has counted its pages
    pollJob(body.job_id, rows, replaces ? replaces.doc_id : null, jobBase);
  };
  xhr.send(form);
}

const mb = (n) => (n < 1e6 ? `${Math.max(1, Math.round(n / 1e3))} kB` : `${(n / 1e6).toFixed(1)} MB`);

async function pollJob(id, rows, replaces, jobBase = base()) {
  const bar = $("upload-progress"), status = $("upload-status"), button = $("upload-button");
  const stop = () => { sessionStorage.removeItem(JOB); bar.hidden = true; button.disabled = false; };
  let job;
  try {
    job = await (await api(`${jobBase}/jobs/${encodeURIComponent(id)}`)).json();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      stop();
      status.className = "error";
      status.textContent = "The server no longer knows this upload (it was restarted with another data directory?). Upload the files again.";
      return;
    }
    if (e instanceof ApiError && e.status === 401) { stop(); showError(status, e); return; }
    say(status, `${friendly(e, "Checking the upload")} Retrying…`);
    setTimeout(() => pollJob(id, rows, replaces, jobBase), 2000);
    return;
  }
  const terminal = ["done", "failed", "interrupted"].includes(job.state);
  if (!terminal) {
    if (job.state === "running" && job.pages_total) bar.value = job.pages_done / job.pages_total;
    for (const name of rows.keys()) markFile(rows, name, job.state === "queued" ? "queued" : "indexing");
    for (const e of job.errors) markFile(rows, e.file, "failed", e.error);
    say(status, job.state === "queued"
      ? "Queued: waiting for the indexer…"
      : `Indexing: ${job.pages_done} of ${job.pages_total} pages, ${job.files_total} file${job.files_total > 1 ? "s" : ""}`);
    setTimeout(() => pollJob(id, rows, replaces, jobBase), 500);
    return;
  }
  stop();
  const files = job.report ? job.report.files : [];
  for (const f of files) markFile(rows, f.file, f.status, f.error || (f.status === "indexed" ? `${f.pages} page${f.pages === 1 ? "" : "s"}` : ""));
  for (const e of job.errors) markFile(rows, e.file, "failed", e.error);
  const failed = job.errors.length;
  if (job.state === "interrupted") {
    status.className = "error";
    status.textContent = "The server stopped before this upload finished. Upload the files again to finish it.";
    for (const name of rows.keys()) if (!files.some((f) => f.file === name)) markFile(rows, name, "interrupted");
  } else {
    const embedded = job.report ? job.report.pages_embedded : 0;
    status.className = failed ? "error" : "";
    status.textContent = `Indexing ${job.state}: ${embedded} page${embedded === 1 ? "" : "s"} embedded` +
      (failed ? `, ${failed} file${failed > 1 ? "s" : ""} failed (reasons below).` : ".");
  }
  // A re-index that produced a new version (new content, new id) replaces the old document.
  const newIds = files.filter((f) => f.doc_id && f.status !== "failed").map((f) => f.doc_id);
  if (replaces && newIds.length && !newIds.includes(replaces)) {
    try {
      await api(`${jobBase}/documents/${encodeURIComponent(replaces)}`, { method: "DELETE" });
      status.textContent += " The previous version was removed.";
    } catch (e) { await refreshAll(); showError($("doc-status"), e, "Removing the previous version"); return; }
  }
  refreshAll();
}

function resumeJob() {
  const saved = sessionStorage.getItem(JOB);
  if (!saved) return;
  try {
    const { id, names, replaces, base: jobBase } = JSON.parse(saved);
    $("upload-progress").hidden = false; $("upload-progress").removeAttribute("value");
    $("upload-button").disabled = true;
    pollJob(id, fileRows(names), replaces, jobBase || "/v1");
  } catch (_) { sessionStorage.removeItem(JOB); }
}

// ------------------------------------------------------------------ start
async function refreshAll() {
  try {
    await loadCollections();
  } catch (e) {
    showError($("doc-status"), e, "Listing collections");
    return;
  }
  await Promise.all([
    loadDocuments().catch((e) => showError($("doc-status"), e, "Listing documents")),
    loadFacets().catch(() => { /* the documents panel already says why */ }),
  ]);
}
refreshAll();
resumeJob();
