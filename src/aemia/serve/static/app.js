// aemia review app: worklist, 2D/3D viewer with mask and heat overlays, brush/eraser/fill editing, ledger saves.
// Voxel order shared with the server (aemia/serve/cases.py): flat index x + nx*(y + ny*z); a view maps its
// canvas pixel (u, v) to a voxel as voxelOf() does.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = new URLSearchParams(location.search).get("token");
const COLORS = [null, [0, 220, 90], [255, 200, 0], [0, 160, 255], [255, 80, 200], [160, 90, 255], [255, 120, 40],
  [0, 230, 230], [200, 255, 80], [255, 255, 255]];
const S = { project: null, worklist: [], caseId: null, meta: null, mask: null, heat: null, views: {},
  tool: "brush", size: 6, cls: 1, undo: [], redo: [], opened: 0, startedAt: null, hidden: 0, hiddenAt: null,
  window: "auto", showHeat: true, activeView: null, busy: false };

function headers(extra) {
  const h = Object.assign({ "X-Aemia-Client": "1" }, extra || {});
  if (TOKEN) h["X-Aemia-Token"] = TOKEN;
  return h;
}
function url(path, params) {
  const q = new URLSearchParams(params || {});
  if (TOKEN) q.set("token", TOKEN);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
async function api(path, params, opts) {
  const r = await fetch(url(path, params), Object.assign({ headers: headers() }, opts || {}));
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
    const err = new Error(detail); err.status = r.status; throw err;
  }
  return r;
}
function say(text, kind) { const m = $("message"); m.textContent = text; m.className = kind || ""; }
const enc = encodeURIComponent;

// ------------------------------------------------------------------------------------------ worklist
async function loadWorklist() {
  S.worklist = await (await api("/api/worklist")).json();
  renderWorklist();
  const eff = await (await api("/api/effort")).json();
  const lines = [`human effort: ${eff.n_timed} case(s) timed, ${Math.round(eff.total_seconds)} s, ` +
    `${eff.total_changed} pixels/voxels changed against the predictions`];
  for (const r of eff.rounds) {
    lines.push(`round ${r.round}: ${r.labels}/${r.queried} labelled, ${Math.round(r.seconds)} s, ${r.changed_pixels} changed` +
      (r.untimed ? `, ${r.untimed} imported untimed` : ""));
  }
  for (const c of eff.curve) {
    if (c.value !== null) lines.push(`model round ${c.round}: ${c.metric} ${c.value.toFixed(3)} after ` +
      `${(c.human_seconds / 60).toFixed(1)} human min (${c.n_train_labels} labels)`);
  }
  $("effort").innerText = lines.join("\n");
}
function visibleCases() {
  const f = $("filter").value, q = $("search").value.trim().toLowerCase();
  return S.worklist.filter((w) => (!f || w.state === f) && (!q || w.case.toLowerCase().includes(q)));
}
function renderWorklist() {
  const body = $("worklist").tBodies[0];
  body.innerHTML = "";
  for (const w of visibleCases()) {
    const tr = body.insertRow();
    tr.dataset.case = w.case;
    if (w.case === S.caseId) tr.className = "current";
    const score = w.score === null ? "–" : (Math.abs(w.score) >= 100 ? w.score.toFixed(0) : w.score.toPrecision(3));
    for (const [text, cls] of [[w.position], [w.case], [w.state, "state-" + w.state.replace(" ", "-")], [score],
      [w.annotator || "–"], [Math.round(w.seconds)], [w.changed_pixels]]) {
      const td = tr.insertCell(); td.textContent = text; if (cls) td.className = cls;
    }
    tr.title = `${w.case} · ${w.score_name}` + (w.comment ? ` · ${w.comment}` : "");
    tr.onclick = () => openCase(w.case);
  }
}
function step(delta) {
  const cases = visibleCases().map((w) => w.case);
  if (!cases.length) return;
  const i = cases.indexOf(S.caseId);
  const j = i < 0 ? 0 : Math.min(cases.length - 1, Math.max(0, i + delta));
  if (cases[j] !== S.caseId) openCase(cases[j]);
}

// ------------------------------------------------------------------------------------------ case
function voxelOf(view, u, v, index) {
  const [nx, ny, nz] = S.meta.dims;
  let x, y, z;
  if (view === "axial") { x = nx - 1 - u; y = ny - 1 - v; z = index; }
  else if (view === "coronal") { x = nx - 1 - u; z = nz - 1 - v; y = index; }
  else if (view === "sagittal") { y = ny - 1 - u; z = nz - 1 - v; x = index; }
  else { x = u; y = v; z = 0; }
  return x + nx * (y + ny * z);
}
async function bytes(path) { return new Uint8Array(await (await api(path)).arrayBuffer()); }

async function openCase(caseId) {
  const t0 = performance.now();
  document.body.dataset.rendered = "";
  S.busy = true;
  try {
    const meta = await (await api(`/api/cases/${enc(caseId)}/meta`)).json();
    const t1 = performance.now();
    const maskResp = await api(`/api/cases/${enc(caseId)}/mask`);
    const mask = new Uint8Array(await maskResp.arrayBuffer());
    const heat = meta.has_heat ? await bytes(`/api/cases/${enc(caseId)}/heat`) : null;
    const t2 = performance.now();
    Object.assign(S, { caseId, meta, mask, base: mask.slice(), heat, undo: [], redo: [], views: {} });
    S.meta.version = parseInt(maskResp.headers.get("X-Case-Version"), 10);
    S.window = meta.window;
    const ws = $("window"); ws.innerHTML = "";
    for (const w of meta.windows) ws.add(new Option(w, w, false, w === meta.window));
    const cs = $("cls"); cs.innerHTML = "";
    meta.classes.forEach((c, i) => { if (i > 0) cs.add(new Option(`${i} ${c}`, i, false, i === S.cls)); });
    if (S.cls >= meta.classes.length) S.cls = 1;
    buildViews();
    await Promise.all(Object.keys(S.views).map(loadSlice));
    S.opened = performance.now(); S.startedAt = new Date().toISOString(); S.hidden = 0;
    showInfo();
    renderWorklist();
    const paint = performance.now() - t0;
    window.aemiaFirstPaint = paint;
    window.aemiaTimings = { meta_ms: t1 - t0, masks_ms: t2 - t1, views_ms: performance.now() - t2 };
    document.body.dataset.rendered = caseId;
    say(`opened ${caseId} in ${paint.toFixed(0)} ms · starting mask: ${meta.start_source}`);
  } catch (e) {
    say(`cannot open ${caseId}: ${e.message}`, "error");
  } finally { S.busy = false; }
}
function showInfo() {
  const m = S.meta;
  $("caseinfo").textContent = `${m.case} · #${m.position} · ${m.state} · version ${m.version} · ` +
    `${m.is3d ? m.dims.join("×") + " voxels, " + m.spacing.map((s) => s.toFixed(2)).join("×") + " mm" : m.dims[0] + "×" + m.dims[1] + " px"}` +
    (m.annotator ? ` · last by ${m.annotator}, ${Math.round(m.seconds)} s, ${m.changed_pixels} changed` : "") +
    (m.comment ? ` · “${m.comment}”` : "");
}
function buildViews() {
  const box = $("views"); box.innerHTML = "";
  const names = Object.keys(S.meta.views);
  const maxSide = names.length > 1 ? 400 : 720;
  for (const name of names) {
    const info = S.meta.views[name];
    const div = document.createElement("div"); div.className = "view";
    const label = document.createElement("div"); label.className = "label";
    const canvas = document.createElement("canvas");
    canvas.width = info.width; canvas.height = info.height; canvas.id = `view-${name}`;
    const mmW = info.width * info.du, mmH = info.height * info.dv, k = maxSide / Math.max(mmW, mmH);
    canvas.style.width = `${Math.round(mmW * k)}px`; canvas.style.height = `${Math.round(mmH * k)}px`;
    const slider = document.createElement("input");
    slider.type = "range"; slider.min = 0; slider.max = info.slices - 1; slider.id = `slider-${name}`;
    const index = Math.floor(info.slices / 2);
    slider.value = index;
    const v = { name, canvas, ctx: canvas.getContext("2d", { willReadFrequently: true }), label, slider, index,
      w: info.width, h: info.height, img: null };
    slider.oninput = () => { v.index = +slider.value; loadSlice(name); };
    if (info.slices <= 1) slider.style.display = "none";
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); moveSlice(name, Math.sign(e.deltaY)); });
    canvas.addEventListener("pointerenter", () => { S.activeView = name; });
    attachPainting(v);
    div.append(label, canvas, slider); box.append(div);
    S.views[name] = v;
  }
  S.activeView = names[0];
}
function moveSlice(name, d) {
  const v = S.views[name]; if (!v) return;
  const n = Math.max(0, Math.min(+v.slider.max, v.index + d));
  if (n !== v.index) { v.index = n; v.slider.value = n; loadSlice(name); }
}
async function loadSlice(name) {
  const v = S.views[name];
  const want = v.index, caseId = S.caseId;
  const img = new Image();
  img.src = url(`/api/cases/${enc(caseId)}/slice`, { view: name, index: want, window: S.window });
  await img.decode();
  if (S.caseId !== caseId || v.index !== want) return;  // the user moved on meanwhile
  v.img = img;
  draw(v);
}
// Index of the voxel at canvas (0, row) and the index step per canvas column: voxelOf() without a call per pixel.
function rowStart(view, row, index) { return voxelOf(view, 0, row, index); }
function columnStep(view) {
  const nx = S.meta.dims[0];
  return view === "2d" ? 1 : view === "sagittal" ? -nx : -1;
}
function draw(v) {
  if (!v.img) return;
  const { ctx, w, h, name, index } = v;
  ctx.drawImage(v.img, 0, 0);
  const data = ctx.getImageData(0, 0, w, h), px = data.data;
  const mask = S.mask, heat = S.showHeat ? S.heat : null, step = columnStep(name);
  for (let row = 0, p = 0; row < h; row++) {
    for (let u = 0, i = rowStart(name, row, index); u < w; u++, p += 4, i += step) {
      if (heat) {
        const a = heat[i] / 255 * 0.55;
        if (a > 0.02) { px[p] += (255 - px[p]) * a; px[p + 1] += (heat[i] - px[p + 1]) * a; px[p + 2] *= 1 - a; }
      }
      const c = COLORS[mask[i]];
      if (c) { px[p] = px[p] * 0.55 + c[0] * 0.45; px[p + 1] = px[p + 1] * 0.55 + c[1] * 0.45; px[p + 2] = px[p + 2] * 0.55 + c[2] * 0.45; }
    }
  }
  ctx.putImageData(data, 0, 0);
  v.label.textContent = name === "2d" ? "image" : `${name} ${index + 1}/${+v.slider.max + 1}`;
}
function redraw() { for (const v of Object.values(S.views)) draw(v); }

// ------------------------------------------------------------------------------------------ editing
function canvasPoint(v, e) {
  const r = v.canvas.getBoundingClientRect();
  return [Math.floor((e.clientX - r.left) / r.width * v.w), Math.floor((e.clientY - r.top) / r.height * v.h)];
}
function setVoxel(stroke, i, value) {
  if (S.mask[i] === value) return;
  if (!stroke.has(i)) stroke.set(i, S.mask[i]);
  S.mask[i] = value;
}
function paintDisc(v, stroke, cu, cv, value) {
  const r = S.size / 2, r2 = r * r;
  for (let dv = -Math.ceil(r); dv <= Math.ceil(r); dv++) {
    for (let du = -Math.ceil(r); du <= Math.ceil(r); du++) {
      const u = cu + du, row = cv + dv;
      if (du * du + dv * dv <= r2 && u >= 0 && row >= 0 && u < v.w && row < v.h) setVoxel(stroke, voxelOf(v.name, u, row, v.index), value);
    }
  }
}
function fill(v, stroke, su, sv, value) {
  const target = S.mask[voxelOf(v.name, su, sv, v.index)];
  if (target === value) return;
  const seen = new Uint8Array(v.w * v.h), stack = [su + v.w * sv];
  while (stack.length) {
    const k = stack.pop(); if (seen[k]) continue; seen[k] = 1;
    const u = k % v.w, row = (k - u) / v.w, i = voxelOf(v.name, u, row, v.index);
    if (S.mask[i] !== target) continue;
    setVoxel(stroke, i, value);
    if (u > 0) stack.push(k - 1); if (u < v.w - 1) stack.push(k + 1);
    if (row > 0) stack.push(k - v.w); if (row < v.h - 1) stack.push(k + v.w);
  }
}
function commitStroke(stroke) {
  if (!stroke.size) return;
  const idx = Int32Array.from(stroke.keys()), old = Uint8Array.from(stroke.values());
  const now = new Uint8Array(idx.length); idx.forEach((i, k) => { now[k] = S.mask[i]; });
  S.undo.push({ idx, old, now }); S.redo = [];
}
function attachPainting(v) {
  let stroke = null, last = null;
  v.canvas.addEventListener("pointerdown", (e) => {
    if (!S.mask || e.button !== 0) return;
    v.canvas.setPointerCapture(e.pointerId);
    const [u, row] = canvasPoint(v, e);
    stroke = new Map();
    if (S.tool === "fill") { fill(v, stroke, u, row, S.cls); commitStroke(stroke); stroke = null; draw(v); redrawOthers(v); return; }
    paintDisc(v, stroke, u, row, S.tool === "eraser" ? 0 : S.cls); last = [u, row]; draw(v);
  });
  v.canvas.addEventListener("pointermove", (e) => {
    if (!stroke) return;
    const [u, row] = canvasPoint(v, e), value = S.tool === "eraser" ? 0 : S.cls;
    const n = Math.max(1, Math.ceil(Math.hypot(u - last[0], row - last[1])));
    for (let t = 1; t <= n; t++) paintDisc(v, stroke, Math.round(last[0] + (u - last[0]) * t / n), Math.round(last[1] + (row - last[1]) * t / n), value);
    last = [u, row]; draw(v);
  });
  const end = () => { if (stroke) { commitStroke(stroke); stroke = null; redrawOthers(v); } };
  v.canvas.addEventListener("pointerup", end);
  v.canvas.addEventListener("pointercancel", end);
}
function redrawOthers(v) { for (const o of Object.values(S.views)) if (o !== v) draw(o); }
function undoRedo(from, to, key) {
  const s = from.pop(); if (!s) return;
  s.idx.forEach((i, k) => { S.mask[i] = s[key][k]; });
  to.push(s); redraw();
}
function setTool(t) {
  S.tool = t;
  for (const b of document.querySelectorAll(".tool")) b.classList.toggle("on", b.dataset.tool === t);
}
function setSize(n) { S.size = Math.max(1, Math.min(40, n)); $("size").value = S.size; $("size-val").textContent = S.size; }

// ------------------------------------------------------------------------------------------ saving
function seconds() { return Math.max(0, (performance.now() - S.opened - S.hidden) / 1000); }
// The voxels that differ from the mask as loaded (or last saved): uint32 count, uint32 indices, uint8 values; null
// when so many changed that the whole mask is smaller.
function diffBody() {
  const mask = S.mask, base = S.base, idx = [];
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] !== base[i]) { idx.push(i); if (idx.length * 5 > mask.length / 8) return null; }
  }
  const buf = new ArrayBuffer(4 + 5 * idx.length), dv = new DataView(buf), vals = new Uint8Array(buf, 4 + 4 * idx.length);
  dv.setUint32(0, idx.length, true);
  idx.forEach((i, k) => { dv.setUint32(4 + 4 * k, i, true); vals[k] = mask[i]; });
  return new Uint8Array(buf);
}
async function gzip(u8) {
  const stream = new Blob([u8]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
function annotator() {
  const a = $("annotator").value.trim();
  if (!a) { say("type your name in 'annotator' first", "error"); $("annotator").focus(); }
  return a;
}
async function save(action) {
  if (!S.meta || S.busy) return;
  const who = annotator(); if (!who) return;
  S.busy = true;
  const t0 = performance.now();
  try {
    const diff = diffBody(), snapshot = S.mask.slice();
    const body = await gzip(diff || S.mask);
    const r = await (await api(`/api/cases/${enc(S.caseId)}/save`, { action, base_version: S.meta.version,
      annotator: who, seconds: seconds().toFixed(1), started_at: S.startedAt, encoding: diff ? "diff" : "gzip" },
    { method: "POST", body, headers: headers({ "Content-Type": "application/octet-stream" }) })).json();
    S.meta.version = r.version; S.meta.state = action === "accepted" ? "accepted" : "in review"; S.base = snapshot;
    S.meta.annotator = r.annotator; S.meta.changed_pixels = r.changed_pixels;
    S.opened = performance.now(); S.startedAt = new Date().toISOString(); S.hidden = 0;
    window.aemiaLastSave = performance.now() - t0;
    say(`${action} ${S.caseId}: ${r.changed_pixels} of ${r.total_pixels} pixels changed against the prediction, ` +
      `${r.seconds.toFixed(0)} s (${window.aemiaLastSave.toFixed(0)} ms)`, "ok");
    showInfo(); await loadWorklist();
    document.body.dataset.saved = `${S.caseId}:${r.version}`;
  } catch (e) {
    say(e.status === 409 ? `NOT SAVED: ${e.message}` : `save failed: ${e.message}`, "error");
    document.body.dataset.saved = `error:${e.status}`;
  } finally { S.busy = false; }
}
async function decide(action) {
  if (!S.meta) return;
  const who = annotator(); if (!who) return;
  const comment = $("comment").value.trim();
  if (action === "flagged" && !comment) { say("write a comment saying what is wrong, then flag", "error"); $("comment").focus(); return; }
  try {
    const r = await (await api(`/api/cases/${enc(S.caseId)}/decision`, {}, { method: "POST",
      headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify({ action, comment,
        base_version: S.meta.version, annotator: who, seconds: seconds(), started_at: S.startedAt }) })).json();
    S.meta.version = r.version; S.meta.state = action; S.meta.comment = comment || null;
    say(`${action} ${S.caseId}`, "ok"); $("comment").value = ""; showInfo(); await loadWorklist();
  } catch (e) { say(e.status === 409 ? `NOT SAVED: ${e.message}` : `${action} failed: ${e.message}`, "error"); }
}

// ------------------------------------------------------------------------------------------ wiring
function wire() {
  for (const b of document.querySelectorAll(".tool")) b.onclick = () => setTool(b.dataset.tool);
  $("size").oninput = () => setSize(+$("size").value);
  $("cls").onchange = () => { S.cls = +$("cls").value; };
  $("undo").onclick = () => undoRedo(S.undo, S.redo, "old");
  $("redo").onclick = () => undoRedo(S.redo, S.undo, "now");
  $("window").onchange = () => { S.window = $("window").value; Object.keys(S.views).forEach(loadSlice); };
  $("heat").onchange = () => { S.showHeat = $("heat").checked; redraw(); };
  $("save").onclick = () => save("saved");
  $("accept").onclick = () => save("accepted");
  $("reject").onclick = () => decide("rejected");
  $("flag").onclick = () => decide("flagged");
  $("filter").onchange = renderWorklist;
  $("search").oninput = renderWorklist;
  $("annotator").onchange = () => localStorage.setItem("aemia-annotator", $("annotator").value.trim());
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) S.hiddenAt = performance.now();
    else if (S.hiddenAt !== null) { S.hidden += performance.now() - S.hiddenAt; S.hiddenAt = null; }
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "checkbox") return;
    const k = e.key.toLowerCase(), ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && k === "z" && !e.shiftKey) { e.preventDefault(); undoRedo(S.undo, S.redo, "old"); }
    else if (ctrl && (k === "y" || (k === "z" && e.shiftKey))) { e.preventDefault(); undoRedo(S.redo, S.undo, "now"); }
    else if (ctrl && k === "s") { e.preventDefault(); save("saved"); }
    else if (ctrl) return;
    else if (k === "n" || k === "j") step(1);
    else if (k === "p" || k === "k") step(-1);
    else if (k === "b") setTool("brush");
    else if (k === "e") setTool("eraser");
    else if (k === "f") setTool("fill");
    else if (k === "a") save("accepted");
    else if (k === "h") { $("heat").checked = !$("heat").checked; $("heat").onchange(); }
    else if (k === "[") setSize(S.size - 1);
    else if (k === "]") setSize(S.size + 1);
    else if (e.key === "ArrowUp" || e.key === "PageUp") { e.preventDefault(); moveSlice(S.activeView, 1); }
    else if (e.key === "ArrowDown" || e.key === "PageDown") { e.preventDefault(); moveSlice(S.activeView, -1); }
    else if (/^[1-9]$/.test(e.key) && S.meta && +e.key < S.meta.classes.length) { S.cls = +e.key; $("cls").value = e.key; }
  });
}
async function main() {
  wire();
  try {
    S.project = await (await api("/api/project")).json();
    $("project").textContent = S.project.name + (S.project.priority ? ` · ${S.project.priority}` : "");
    $("annotator").value = localStorage.getItem("aemia-annotator") || S.project.annotator || "";
    await loadWorklist();
    document.body.dataset.ready = "1";
    if (S.worklist.length) await openCase(S.worklist[0].case);
    else say("no queried cases yet: run `aemia active query` first");
  } catch (e) { say(`cannot load the project: ${e.message}`, "error"); }
}
main();
