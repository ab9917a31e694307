// mxr0 serve: the web page. Plain JS, no build step, no external resources.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { files: {}, info: null, image: null, boxes: [], heat: null, preset: "default" };

function token() { return localStorage.getItem("mxr0-token") || ""; }
function headers() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }
function status(msg) { $("status").textContent = msg; }

async function api(path, form) {
  const r = await fetch(path, { method: "POST", body: form, headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
  return body;
}

function formWith(fields) {
  const f = new FormData();
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null && v !== "") f.append(k, v);
  return f;
}

async function loadInfo() {
  const h = await (await fetch("/health")).json();
  if (h.auth && !token()) {
    const t = prompt("This server needs a token:");
    if (t) localStorage.setItem("mxr0-token", t);
  }
  const r = await fetch("/v1/info", { headers: headers() });
  const info = await r.json();
  state.info = info;
  const vlm = info.vlm || {};
  $("model-name").textContent = "— " + Object.entries(info.models).map(([k, v]) => v + " (" + k + ")").join(", ");
  $("model-summary").textContent = vlm.summary ? "Model: " + vlm.summary + (vlm.tasks ? " [" + vlm.tasks.join(", ") + "]" : "") : "";
  $("model-use").textContent = "Intended use: " + info.intended_use;
  $("model-extra").textContent = vlm.views ? "Views read: " + vlm.views.join(", ") : "";
  $("disclaimer").textContent = info.disclaimer;
  $("classifier-box").hidden = !info.classifier;
  $("zeroshot-box").hidden = !info.align;
  $("heat-box").hidden = !info.align;
  const w = $("windows");
  for (const p of info.window_presets) {
    const b = document.createElement("button");
    b.textContent = p; b.dataset.preset = p;
    b.onclick = () => showImage(p);
    w.appendChild(b);
  }
}

async function showImage(preset) {
  if (!state.files.frontal) return;
  state.preset = preset;
  for (const b of $("windows").children) b.classList.toggle("active", b.dataset.preset === preset);
  const d = await api("/v1/image", formWith({ image: state.files.frontal, window: preset }));
  state.image = d;
  $("xray").src = "data:image/png;base64," + d.png;
  const m = d.meta || {};
  const parts = [d.format.toUpperCase(), d.width + "×" + d.height + " px", "window: " + preset];
  if (m.PhotometricInterpretation) parts.push(m.PhotometricInterpretation +
      (m.PhotometricInterpretation === "MONOCHROME1" ? " (inverted: bone shown bright)" : ""));
  if (m.ViewPosition) parts.push("view " + m.ViewPosition);
  if (m.ImageLaterality || m.Laterality) parts.push("laterality " + (m.ImageLaterality || m.Laterality));
  if (d.orientation && d.orientation.source) parts.push("markers: " + d.orientation.source);
  $("image-info").textContent = parts.join(" · ");
  $("marker-left").textContent = (d.orientation && d.orientation.left) || "";
  $("marker-right").textContent = (d.orientation && d.orientation.right) || "";
}

function fit() {  // the image as large as the viewer allows, aspect kept (small images are scaled up)
  const img = $("xray");
  if (!img.naturalWidth) return;
  const maxW = $("viewer").clientWidth - 24, maxH = window.innerHeight * 0.7;
  const s = Math.min(maxW / img.naturalWidth, maxH / img.naturalHeight);
  img.style.width = Math.floor(img.naturalWidth * s) + "px";
  img.style.height = Math.floor(img.naturalHeight * s) + "px";
}

function redraw() {
  const img = $("xray"), c = $("overlay");
  fit();
  c.width = img.clientWidth; c.height = img.clientHeight;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  let drawn = 0;
  if (state.heat && $("show-heat").checked) { g.drawImage(state.heat, 0, 0, c.width, c.height); drawn++; }
  if (state.image) {
    const sx = c.width / state.image.width, sy = c.height / state.image.height;
    g.lineWidth = 2; g.font = "13px sans-serif";
    for (const b of state.boxes) {
      g.strokeStyle = "#f33"; g.fillStyle = "#f33";
      g.strokeRect(b.box[0] * sx, b.box[1] * sy, (b.box[2] - b.box[0]) * sx, (b.box[3] - b.box[1]) * sy);
      g.fillText(b.label, b.box[0] * sx + 3, Math.max(12, b.box[1] * sy - 3));
      drawn++;
    }
  }
  c.dataset.drawn = String(drawn);
}

async function runReport() {
  const out = $("report");
  out.textContent = ""; out.dataset.state = "running";
  const f = formWith({ frontal: state.files.frontal, lateral: state.files.lateral, prior: state.files.prior,
    prior_report: $("prior-report").value, indication: $("indication").value, stream: "true" });
  try {
    const r = await fetch("/v1/report", { method: "POST", body: f, headers: headers() });
    if (!r.ok) { const e = await r.json(); throw new Error(e.error ? e.error.message : "HTTP " + r.status); }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let k;
      while ((k = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, k).trim(); buf = buf.slice(k + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const ev = JSON.parse(data);
        if (ev.delta) out.textContent += ev.delta;
        if (ev.error) throw new Error(ev.error.message);
        if (ev.done) {
          out.textContent = ev.text || "(the model wrote an empty report)";
          if (ev.unused_views && ev.unused_views.length) status("not read by this model: " + ev.unused_views.join(", "));
        }
      }
    }
    out.dataset.state = "done";
  } catch (e) { out.textContent = "Error: " + e.message; out.dataset.state = "error"; }
}

function bars(el, rows) {
  el.innerHTML = "";
  for (const r of rows) {
    const row = document.createElement("div"); row.className = "row";
    const name = document.createElement("span"); name.textContent = r.label;
    const track = document.createElement("div"); track.className = "track";
    const bar = document.createElement("div"); bar.className = "bar"; bar.style.width = (100 * r.probability).toFixed(1) + "%";
    track.appendChild(bar);
    const v = document.createElement("span"); v.textContent = r.probability.toFixed(2);
    row.append(name, track, v); el.appendChild(row);
  }
}

async function runClassifiers() {
  if (state.info.classifier) {
    try { bars($("classifier"), (await api("/v1/classify", formWith({ image: state.files.frontal }))).probabilities); }
    catch (e) { $("classifier").textContent = "Error: " + e.message; }
  }
  if (state.info.align) {
    try { bars($("zeroshot"), (await api("/v1/zero-shot", formWith({ image: state.files.frontal }))).probabilities); }
    catch (e) { $("zeroshot").textContent = "Error: " + e.message; }
  }
}

async function runGround() {
  const phrase = $("phrase").value.trim();
  if (!phrase) return;
  try {
    const d = await api("/v1/ground", formWith({ image: state.files.frontal, phrase }));
    const li = document.createElement("li");
    li.textContent = phrase + ": " + (d.boxes.length ? d.boxes.map((b) => "[" + b.map((v) => Math.round(v)).join(", ") + "]").join(" ") : "no box (" + d.answer + ")");
    $("boxes").appendChild(li);
    for (const b of d.boxes) state.boxes.push({ box: b, label: phrase });
    redraw();
  } catch (e) { status("Grounding: " + e.message); }
}

async function runVqa() {
  const q = $("question").value.trim();
  if (!q) return;
  const chat = $("chat");
  const qd = document.createElement("div"); qd.className = "q"; qd.textContent = "Q: " + q; chat.appendChild(qd);
  const ad = document.createElement("div"); ad.className = "a"; ad.textContent = "…"; chat.appendChild(ad);
  $("question").value = "";
  try { ad.textContent = "A: " + ((await api("/v1/vqa", formWith({ image: state.files.frontal, question: q }))).answer || "(empty)"); }
  catch (e) { ad.textContent = "Error: " + e.message; }
}

async function runHeat() {
  const phrase = $("heat-phrase").value.trim();
  if (!phrase) return;
  try {
    const d = await api("/v1/similarity", formWith({ image: state.files.frontal, phrase }));
    const im = new Image();
    im.onload = () => { state.heat = im; redraw(); };
    im.src = "data:image/png;base64," + d.heatmap_png;
    $("heat-info").textContent = "\"" + d.phrase + "\": cosine " + d.min.toFixed(2) + " … " + d.max.toFixed(2) + " (min–max scaled)";
  } catch (e) { $("heat-info").textContent = "Error: " + e.message; }
}

async function onFrontal() {
  const f = $("frontal").files[0];
  if (!f) return;
  state.files.frontal = f; state.boxes = []; state.heat = null; $("boxes").innerHTML = "";
  for (const id of ["run-report", "run-ground", "run-vqa", "run-heat"]) $(id).disabled = false;
  status("reading the image…");
  try { await showImage("default"); status(""); }
  catch (e) { status("Error: " + e.message); return; }
  await runReport();
  await runClassifiers();
}

for (const k of ["lateral", "prior"]) $(k).onchange = () => { state.files[k] = $(k).files[0]; };
$("frontal").onchange = onFrontal;
$("run-report").onclick = runReport;
$("run-ground").onclick = runGround;
$("run-vqa").onclick = runVqa;
$("run-heat").onclick = runHeat;
$("show-heat").onchange = redraw;
$("xray").onload = redraw;
window.addEventListener("resize", redraw);
loadInfo().catch((e) => status("Error: " + e.message));
