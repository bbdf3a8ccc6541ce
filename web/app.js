// serve.py's page: send a recording (a file, or one recorded here and converted to a 16 kHz WAV)
// to POST /predict and draw the answer; in the second tab, the run's results, pictures and worst
// errors. Everything is built with DOM calls (no innerHTML), so no text from a file becomes markup.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];  // matplotlib's, so the classes look as in the run's pictures
const WAV_RATE = 16000;                  // what the model reads; a recording is resampled to it here
const PAGE_ROWS = 25;
const $ = (id) => document.getElementById(id);

let health = null;        // GET /health
let chosen = null;        // {blob, name, converted}
let recorder = null;
let runsLoaded = false;
let predictionRows = PAGE_ROWS;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "style") Object.assign(node.style, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function colour(name) {
  const k = health ? health.classes.indexOf(name) : -1;
  return PALETTE[(k < 0 ? 0 : k) % PALETTE.length];
}

function percent(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(digits)}`;
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

// ------------------------------------------------------------------ tabs
function showTab() {
  const runs = location.hash === "#runs";
  $("predict").hidden = runs;
  $("runs").hidden = !runs;
  $("tab-predict").classList.toggle("active", !runs);
  $("tab-runs").classList.toggle("active", runs);
  if (runs && !runsLoaded) {
    runsLoaded = true;
    loadRun();
  }
}

async function loadHealth() {
  const response = await fetch("/health");
  health = await response.json();
  const folds = health.sessions.length > 1 ? `ensemble of folds ${health.sessions.join(", ")}`
                                           : `fold ${health.sessions[0]}'s model`;
  $("run-info").textContent = `${health.run} (${folds}) from ${health.run_dir} · classes ${health.classes.join(", ")}` +
    ` · up to ${health.limits.max_seconds} s and ${health.limits.max_mb} MB per recording`;
  $("transcript-hint").textContent = !health.reads_text
    ? `The ${health.run} model reads no text: a transcript is not used.`
    : `Left empty, the text is transcribed by ${health.asr || "the model's own CTC head"}.`;
}

// ------------------------------------------------------------------ choosing or recording a clip
function setChosen(blob, name, note) {
  chosen = {blob, name, converted: note !== ""};
  $("chosen").textContent = `${name} · ${(blob.size / 1024).toFixed(0)} KB${note ? " · " + note : ""}`;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("predict-button").disabled = false;
}

async function toggleRecording() {
  const button = $("record");
  if (recorder && recorder.state === "recording") {
    recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({audio: true});
  } catch (err) {
    showError($("error"), `No microphone to record from (${err.message}); choose a file instead.`);
    return;
  }
  const chunks = [];
  const started = Date.now();
  const clock = setInterval(() => {
    $("record-time").textContent = `recording… ${((Date.now() - started) / 1000).toFixed(1)} s`;
  }, 100);
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  recorder.onstop = async () => {
    clearInterval(clock);
    stream.getTracks().forEach((track) => track.stop());
    button.textContent = "● Record";
    button.classList.remove("recording");
    $("record-time").textContent = "";
    try {
      // The browser records webm/ogg opus, which soundfile may not read: send a WAV instead.
      const wav = await toWav(new Blob(chunks, {type: recorder.mimeType}));
      setChosen(wav, "recording.wav", "recorded here, sent as a 16 kHz WAV");
    } catch (err) {
      showError($("error"), `The recording could not be decoded (${err.message}).`);
    }
  };
  recorder.start();
  button.textContent = "■ Stop";
  button.classList.add("recording");
  showError($("error"), "");
}

// A recording -> 16 kHz mono 16-bit WAV: the browser decodes it, an OfflineAudioContext downmixes
// and resamples it, and a 44-byte RIFF header goes in front of the samples.
async function toWav(blob) {
  const context = new AudioContext();
  let decoded;
  try {
    decoded = await context.decodeAudioData(await blob.arrayBuffer());
  } finally {
    context.close();
  }
  const offline = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * WAV_RATE)), WAV_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return new Blob([encodeWav(rendered.getChannelData(0), WAV_RATE)], {type: "audio/wav"});
}

function encodeWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const text = (offset, value) => [...value].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);          // the fmt chunk's size
  view.setUint16(20, 1, true);           // PCM
  view.setUint16(22, 1, true);           // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true);    // bytes per second
  view.setUint16(32, 2, true);           // bytes per frame
  view.setUint16(34, 16, true);          // bits per sample
  text(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  samples.forEach((v, i) => view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, v)) * 0x7fff, true));
  return view.buffer;
}

// ------------------------------------------------------------------ prediction
async function send(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  const transcript = $("transcript").value.trim();
  if (transcript) form.append("transcript", transcript);
  return fetch("/predict", {method: "POST", body: form});
}

async function predict() {
  if (!chosen) return;
  const button = $("predict-button");
  button.disabled = true;
  $("status").textContent = "predicting…";
  showError($("error"), "");
  try {
    let response = await send(chosen.blob, chosen.name);
    if (response.status === 415 && !chosen.converted) {
      // A format the service cannot read (webm, m4a, mp3 where libsndfile lacks it): the browser may.
      try {
        const wav = await toWav(chosen.blob);
        setChosen(wav, chosen.name.replace(/\.[^.]*$/, "") + ".wav", "converted here to a 16 kHz WAV");
        response = await send(chosen.blob, chosen.name);
      } catch (err) { /* keep the service's own message */ }
    }
    const body = await response.json();
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      showError($("error"), `${response.status}: ${detail}`);
      $("result").hidden = true;
    } else {
      showResult(body);
    }
  } catch (err) {
    showError($("error"), `The service did not answer (${err.message}).`);
  } finally {
    button.disabled = false;
    $("status").textContent = "";
  }
}

function showResult(result) {
  const label = $("label");
  // A model trained with --task dimensional predicts no class (label null): only its attributes are shown.
  $("label-line").hidden = result.label === null;
  label.textContent = result.label || "";
  label.style.background = colour(result.label);
  const bars = $("bars");
  bars.replaceChildren();
  for (const name of result.classes) {
    const p = result.probabilities[name];
    bars.append(el("span", {className: "name"}, name),
                el("div", {className: "track"},
                   el("div", {className: "fill", style: {width: `${100 * p}%`, background: colour(name)}})),
                el("span", {className: "value"}, `${percent(p)} %`));
  }
  const sources = {given: "typed above", asr: "speech recogniser", ctc: "the model's CTC head",
                   none: "none: the model reads no text"};
  const windows = result.windows || [];
  $("source").textContent = (sources[result.transcript_source] || result.transcript_source) +
    (windows.length && result.transcript_source !== "none" ? ", each window transcribed on its own" : "");
  $("used-transcript").textContent = result.transcript || "";
  $("used-transcript").hidden = !result.transcript;
  // What the service says about this answer (an empty transcript: the audio alone decided), as predict.py says it.
  const notes = result.notes || [];
  $("notes").replaceChildren(...notes.map((note, k) => (k ? [el("br"), note] : [note])).flat());
  $("notes").hidden = !notes.length;
  $("duration").textContent = `${result.duration_s.toFixed(2)} s of audio` +
    (windows.length ? `, scored in ${windows.length} windows: the result is their duration-weighted mean` : "");
  showAttributes(result);
  $("timeline-box").hidden = !windows.length;
  $("timeline").hidden = !result.classes.length;
  $("timeline-legend").hidden = !result.classes.length;
  if (windows.length && result.classes.length) drawTimeline(windows, result.classes, result.duration_s);
  const attributeTimeline = windows.length > 0 && !!result.attributes;
  $("attribute-timeline-box").hidden = !attributeTimeline;
  if (attributeTimeline) {
    drawAttributeTimeline(windows, Object.keys(result.attributes), result.attribute_range, result.duration_s);
  }
  $("result").hidden = false;
}

// ------------------------------------------------------------------ attributes (--task dimensional|both)
function svg(tag, attributes = {}, text = "") {
  // the namespace of the page's own <svg> (index.html), so no URL is written here
  const node = document.createElementNS($("va-plane").namespaceURI, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function showAttributes(result) {
  const values = result.attributes;
  $("attributes-box").hidden = !values;
  if (!values) return;
  const [low, high] = result.attribute_range;
  $("attribute-scale").textContent = `(the corpus's rating scale, ${low} to ${high})`;
  $("attribute-values").textContent = Object.entries(values).map(([name, v]) => `${name} ${v.toFixed(2)}`)
    .join(" · ");
  const plane = $("va-plane");   // an SVG element: no .hidden property, the attribute does it (style.css)
  const both = "valence" in values && "arousal" in values;
  plane.toggleAttribute("hidden", !both);
  if (both) drawPlane(plane, values.valence, values.arousal, low, high);
}

// The valence-arousal plane: valence across, arousal up, both on the corpus's scale; the point is
// the recording's prediction (clamped to the frame: the head's outputs are not bounded).
function drawPlane(plane, valence, arousal, low, high) {
  const size = 300, margin = 36, inner = size - 2 * margin;
  const at = (v) => Math.max(0, Math.min(1, (v - low) / (high - low)));
  const px = margin + inner * at(valence), py = margin + inner * (1 - at(arousal));
  const middle = margin + inner / 2, axis = {stroke: "#9aa3b5", "stroke-dasharray": "4 3"};
  plane.replaceChildren(
    svg("rect", {x: margin, y: margin, width: inner, height: inner, fill: "none", stroke: "#1d2433"}),
    svg("line", {x1: middle, y1: margin, x2: middle, y2: margin + inner, ...axis}),
    svg("line", {x1: margin, y1: middle, x2: margin + inner, y2: middle, ...axis}),
    svg("text", {x: margin, y: size - 18, "text-anchor": "middle", "font-size": 11}, `${low}`),
    svg("text", {x: margin + inner, y: size - 18, "text-anchor": "middle", "font-size": 11}, `${high}`),
    svg("text", {x: middle, y: size - 4, "text-anchor": "middle", "font-size": 12}, "valence"),
    svg("text", {x: margin - 6, y: margin + inner + 4, "text-anchor": "end", "font-size": 11}, `${low}`),
    svg("text", {x: margin - 6, y: margin + 4, "text-anchor": "end", "font-size": 11}, `${high}`),
    svg("text", {x: 12, y: middle, "text-anchor": "middle", "font-size": 12,
                 transform: `rotate(-90 12 ${middle})`}, "arousal"),
    svg("circle", {id: "va-point", cx: px, cy: py, r: 6, fill: PALETTE[3], stroke: "#fff", "stroke-width": 2},
        ""));
  plane.lastChild.append(svg("title", {}, `valence ${valence.toFixed(2)}, arousal ${arousal.toFixed(2)}`));
}

// Each attribute's value per window, drawn over the part of the recording the window owns.
function drawAttributeTimeline(windows, names, range, duration) {
  const canvas = $("attribute-timeline");
  const g = canvas.getContext("2d");
  const [low, high] = range;
  const left = 40, right = 10, top = 10, bottom = 28;
  const width = canvas.width - left - right, height = canvas.height - top - bottom;
  const end = Math.max(duration, windows[windows.length - 1].own_end_s);
  const x = (seconds) => left + width * seconds / end;
  const y = (v) => top + height * (1 - Math.max(0, Math.min(1, (v - low) / (high - low))));
  g.clearRect(0, 0, canvas.width, canvas.height);
  names.forEach((name, k) => {
    g.strokeStyle = PALETTE[k % PALETTE.length];
    g.lineWidth = 2;
    g.beginPath();
    windows.forEach((w, i) => {
      g[i ? "lineTo" : "moveTo"](x(w.own_start_s), y(w[name]));
      g.lineTo(x(w.own_end_s), y(w[name]));
    });
    g.stroke();
  });
  g.lineWidth = 1;
  g.strokeStyle = "#1d2433";
  g.fillStyle = "#1d2433";
  g.font = "12px system-ui, sans-serif";
  g.strokeRect(left, top, width, height);
  g.textAlign = "right";
  for (const v of [low, (low + high) / 2, high]) g.fillText(`${+v.toFixed(2)}`, left - 5, y(v) + 4);
  g.textAlign = "center";
  const step = niceStep(end / 8);
  for (let t = 0; t <= end + 1e-9; t += step) g.fillText(`${+t.toFixed(1)} s`, x(t), canvas.height - 8);
  $("attribute-timeline-legend").replaceChildren(...names.map((name, k) =>
    el("span", {}, el("i", {style: {background: PALETTE[k % PALETTE.length]}}), name)));
}

// Stacked class probabilities per window, each drawn over the part of the recording it owns.
function drawTimeline(windows, classes, duration) {
  const canvas = $("timeline");
  const g = canvas.getContext("2d");
  const left = 40, right = 10, top = 10, bottom = 28;
  const width = canvas.width - left - right, height = canvas.height - top - bottom;
  const end = Math.max(duration, windows[windows.length - 1].own_end_s);
  const x = (seconds) => left + width * seconds / end;
  g.clearRect(0, 0, canvas.width, canvas.height);
  for (const w of windows) {
    let base = 0;
    for (const name of classes) {
      const p = w[`prob_${name}`];
      g.fillStyle = colour(name);
      g.fillRect(x(w.own_start_s), top + height * (1 - base - p), x(w.own_end_s) - x(w.own_start_s), height * p);
      base += p;
    }
  }
  g.strokeStyle = "#1d2433";
  g.fillStyle = "#1d2433";
  g.font = "12px system-ui, sans-serif";
  g.strokeRect(left, top, width, height);
  g.textAlign = "right";
  for (const v of [0, 0.5, 1]) g.fillText(v.toFixed(1), left - 5, top + height * (1 - v) + 4);
  g.textAlign = "center";
  const step = niceStep(end / 8);
  for (let t = 0; t <= end + 1e-9; t += step) g.fillText(`${+t.toFixed(1)} s`, x(t), canvas.height - 8);
  $("timeline-legend").replaceChildren(...classes.map((name) =>
    el("span", {}, el("i", {style: {background: colour(name)}}), name)));
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((k) => k * power).find((s) => s >= raw);
}

// ------------------------------------------------------------------ the run browser
async function loadRun() {
  const response = await fetch("/api/run");
  const body = await response.json();
  if (!response.ok) {
    showError($("runs-error"), body.detail);
    return;
  }
  const results = body.results;
  const title = (body.results_md.split("\n")[0] || "").replaceAll("**", "");
  $("results-title").textContent = title || `${results.run}, ${Object.keys(results.folds).length} folds`;
  drawResultsTable(results);
  $("results-legend").textContent = "WA = overall accuracy, UA = mean of the per-class recalls; " +
    "std = population std over the folds.";
  drawPictures(body.pictures);
  const fold = $("fold");
  for (const name of body.folds) fold.append(el("option", {value: name}, name));
  await loadPredictions();
}

// One picture shown at a time (all loaded at once), chosen with a row of buttons.
function drawPictures(names) {
  const figures = names.map((name) =>
    el("figure", {hidden: true}, el("img", {src: `/runs/image/${encodeURIComponent(name)}`, alt: name}),
       el("figcaption", {}, name)));
  const buttons = names.map((name, k) => el("button", {type: "button", onclick: () => show(k)}, pictureTitle(name)));
  function show(k) {
    figures.forEach((figure, i) => { figure.hidden = i !== k; });
    buttons.forEach((button, i) => button.classList.toggle("chosen", i === k));
  }
  $("picture-tabs").replaceChildren(...buttons);
  $("pictures").replaceChildren(...figures);
  if (names.length) show(0);
}

function pictureTitle(name) {
  if (name === "confusion_matrix.png") return "confusion, all folds";
  if (name === "learning_curves.png") return "learning curves";
  return name.replace(/^confusion_matrix_(.*)\.png$/, "confusion, $1");
}

function play(button, name) {
  const player = $("player");
  player.src = `/runs/audio?name=${encodeURIComponent(name)}`;
  player.play().catch((err) => { $("playing").textContent = `cannot play ${name} (${err.message})`; });
  $("playing").textContent = `▶ ${name}`;
  document.querySelectorAll("#predictions-table tr.playing").forEach((row) => row.classList.remove("playing"));
  button.closest("tr").classList.add("playing");
}

function drawResultsTable(results) {
  const unit = results.fold_unit || "session";
  const head = el("tr", {}, ...[`test ${unit}`, "utterances", "WA (%)", "UA (%)", "macro-F1 (%)"]
    .map((text) => el("th", {}, text)));
  const row = (name, m, n, summary) => el("tr", summary ? {className: "summary"} : {},
    el("td", {}, name), el("td", {}, `${n ?? ""}`),
    ...["wa", "ua", "macro_f1"].map((k) => el("td", {}, percent(m[k], 2))));
  const folds = Object.entries(results.folds);
  const total = folds.reduce((sum, [, m]) => sum + (m.n || 0), 0);
  $("results-table").replaceChildren(el("thead", {}, head), el("tbody", {},
    ...folds.map(([name, m]) => row(name, m, m.n)),
    row("mean", results.mean, total, true), row("std", results.std, "", true)));
}

async function loadPredictions() {
  const fold = $("fold").value;
  const query = new URLSearchParams({limit: predictionRows});
  if (fold) query.set("fold", fold);
  const response = await fetch(`/api/predictions?${query}`);
  const body = await response.json();
  if (!response.ok) {
    showError($("runs-error"), body.detail);
    return;
  }
  $("predictions-count").textContent = body.errors === null
    ? `${body.total} utterances (a model without classes: see the pred_ columns of the run's predictions)`
    : `${body.total} utterances, ${body.errors} misclassified; ` +
      `showing ${body.rows.length}, ordered by the probability given to the true class`;
  const head = el("tr", {}, ...["#", "fold", "utterance", "true", "predicted", "p(true)", "listen"]
    .map((text) => el("th", {}, text)));
  const rows = body.rows.map((r, i) => el("tr", {className: r.correct ? "correct" : "wrong"},
    el("td", {}, `${i + 1}`), el("td", {}, r.fold), el("td", {}, r.FileName),
    el("td", {}, el("span", {className: "badge", style: {background: colour(r.true_label), color: "#fff"}}, r.true_label)),
    el("td", {}, el("span", {className: "badge", style: {background: colour(r.predicted_label), color: "#fff"}},
                    r.predicted_label)),
    el("td", {className: "p"}, el("span", {className: "track"},
                                   el("span", {className: "fill", style: {width: `${100 * (r.p_true || 0)}%`}})),
       `${percent(r.p_true)} %`),
    el("td", {}, el("button", {type: "button", className: "play", title: `play ${r.FileName}`,
                               onclick: (event) => play(event.currentTarget, r.FileName)}, "▶"))));
  $("predictions-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  $("more").hidden = body.rows.length >= body.total;
}

// ------------------------------------------------------------------ wiring
$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) setChosen(file, file.name, "");
  showError($("error"), "");
});
$("record").addEventListener("click", toggleRecording);
$("predict-button").addEventListener("click", predict);
$("fold").addEventListener("change", () => { predictionRows = PAGE_ROWS; loadPredictions(); });
$("more").addEventListener("click", () => { predictionRows += PAGE_ROWS; loadPredictions(); });
window.addEventListener("hashchange", showTab);
loadHealth().then(showTab, (err) => showError($("error"), `The service did not answer (${err.message}).`));
