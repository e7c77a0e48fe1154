// colsmol web page: upload (XHR progress + job polling), search, streamed answers (SSE over fetch).
"use strict";
const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("colsmol-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("colsmol-key", keyInput.value));

function authHeaders(extra = {}) {
  const key = keyInput.value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${res.status}: ${detail}`);
  }
  return res;
}

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

function card(hit, query) {
  const div = document.createElement("div");
  div.className = "hit";
  const img = document.createElement("img");
  img.alt = `${hit.file_name || "document"}, page ${hit.page_number}`;
  img.loading = "lazy";
  setImage(img, hit.thumb_url).catch(() => { img.alt += " (image unavailable)"; });
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${hit.file_name || hit.doc_id} · p. ${hit.page_number}`;
  const score = document.createElement("div");
  score.className = "meta score";
  score.textContent = `score ${hit.score.toFixed(3)}`;
  div.append(img, meta, score);
  div.addEventListener("click", () => enlarge(hit, query));
  return div;
}

// ------------------------------------------------------------------ enlarged page, with an optional heatmap
// The heatmap is GET /v1/pages/{id}/explain?query=…: the page with the regions that matched the query
// (or question) whose results are shown.
const viewer = { hit: null, query: "", heatmap: false };

function enlarge(hit, query) {
  Object.assign(viewer, { hit, query: query || "", heatmap: false });
  $("viewer-heatmap").hidden = !viewer.query;
  setSrc($("viewer-img"), "", "");  // not the last page shown while this one loads
  showViewerImage();
  $("viewer").showModal();
}

function showViewerImage() {
  const { hit, query, heatmap } = viewer;
  const caption = $("viewer-caption"), img = $("viewer-img");
  const name = `${hit.file_name || hit.doc_id}, page ${hit.page_number}`;
  $("viewer-heatmap").setAttribute("aria-pressed", String(heatmap));
  caption.className = "";
  caption.textContent = heatmap ? `${name}: computing heatmap for “${query}”…` : name;
  const url = heatmap
    ? `/v1/pages/${encodeURIComponent(hit.point_id)}/explain?query=${encodeURIComponent(query)}`
    : hit.image_url;
  img.onload = () => {
    if (img.dataset.src === url) caption.textContent = heatmap ? `${name}: heatmap for “${query}”` : name;
  };
  img.onerror = () => {
    if (img.dataset.src === url) { caption.className = "error"; caption.textContent = `${name}: image unavailable`; }
  };
  setImage(img, url).catch((e) => {
    if (img.dataset.want === url) { caption.className = "error"; caption.textContent = e.message; }
  });
}

$("viewer-heatmap").addEventListener("click", () => {
  if (!viewer.hit) return;
  viewer.heatmap = !viewer.heatmap;
  showViewerImage();
});
$("viewer-close").addEventListener("click", () => $("viewer").close());

// ------------------------------------------------------------------ upload
$("upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const files = $("files").files;
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const bar = $("upload-progress"), status = $("upload-status");
  bar.hidden = false; bar.value = 0; status.className = ""; status.textContent = "Uploading…";
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/documents");
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
  xhr.onerror = () => { status.className = "error"; status.textContent = "Upload failed: network error"; };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status !== 202) { status.className = "error"; status.textContent = `Upload failed: ${body.detail || xhr.status}`; return; }
    pollJob(body.job_id);
  };
  xhr.send(form);
});

async function pollJob(id) {
  const bar = $("upload-progress"), status = $("upload-status");
  try {
    const job = await (await api(`/v1/jobs/${id}`)).json();
    bar.value = job.pages_total ? job.pages_done / job.pages_total : 0;
    status.textContent = `Indexing: ${job.state}, ${job.pages_done}/${job.pages_total} pages of ${job.files_total} file(s)`;
    if (job.state === "done" || job.state === "failed" || job.state === "interrupted") {
      bar.value = 1;
      const errs = job.errors.map((e) => `${e.file}: ${e.error}`).join("; ");
      status.className = errs ? "error" : "";
      status.textContent = `Indexing ${job.state}. ${job.report ? job.report.pages_embedded : 0} pages embedded.${errs ? " Errors: " + errs : ""}`;
      return;
    }
    setTimeout(() => pollJob(id), 500);
  } catch (e) { status.className = "error"; status.textContent = e.message; }
}

// ------------------------------------------------------------------ search and answer
$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const mode = ev.submitter ? ev.submitter.value : "search";
  const q = $("query").value.trim();
  if (!q) return;
  (mode === "answer" ? answer(q) : search(q)).catch((e) => {
    $("search-status").className = "error"; $("search-status").textContent = e.message;
  });
});

async function search(query) {
  $("answer").hidden = true;
  $("search-status").className = ""; $("search-status").textContent = "Searching…";
  const t0 = performance.now();
  const res = await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ query, k: 12 }) });
  const { hits } = await res.json();
  $("results").replaceChildren(...hits.map((h) => card(h, query)));
  $("search-status").textContent = `${hits.length} pages in ${Math.round(performance.now() - t0)} ms`;
}

async function answer(question) {
  const box = $("answer"), text = $("answer-text");
  box.hidden = false; text.textContent = ""; $("answer-sources").replaceChildren(); $("results").replaceChildren();
  $("search-status").className = ""; $("search-status").textContent = "Thinking…";
  const res = await api("/v1/answer", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question, stream: true }) });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
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
        const t = payload.timings || {};
        $("search-status").textContent = `Answered from ${payload.sources.length} page(s)` + (t.generate ? ` in ${t.generate.toFixed(2)} s` : "");
      } else if (event[1] === "error") { $("search-status").className = "error"; $("search-status").textContent = payload.detail; }
    }
  }
}
