// The playground page: pick a model, steer a live session while it plays, see its level
// and spectrogram, download a clip. Built on the JavaScript client (/client/distill.js).
// window.playground exposes its state for scripts and the browser test.

import { createPlayer, open, opusDecodable } from "/client/distill.js";

const $ = (id) => document.getElementById(id);
// Audio the player holds before it starts (beside the server's lookahead): room for a late
// block on a busy machine.
const JITTER_BUFFER_S = 0.2;
const state = {
  server: null,
  info: null,
  session: null,
  player: null,
  context: null,
  positions: {},
  moved: null, // {sequence, at}: the last slider move, until it is heard
  heardMs: [], // slider move -> first block reflecting it starts playing, ms
  firstAudioMs: null,
  downloads: [],
  errors: [],
};
window.playground = state;

function showError(error) {
  const text = error?.message || String(error);
  state.errors.push(text);
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => (box.hidden = true), 8000);
}

async function start() {
  state.server = await open();
  try {
    await loadModels();
  } catch (error) {
    if (error.code === "UNAUTHENTICATED") {
      $("login-panel").hidden = false;
      return;
    }
    showError(error);
  }
}

async function loadModels() {
  const { models, defaultModel } = await state.server.models();
  const select = $("model");
  select.replaceChildren();
  for (const m of models || []) {
    const option = new Option(`${m.name}${m.state === "MODEL_STATE_READY" ? "" : ` (${m.state.replace("MODEL_STATE_", "").toLowerCase()})`}`, m.name);
    option.disabled = m.state !== "MODEL_STATE_READY";
    select.add(option);
  }
  select.value = defaultModel;
  $("login-panel").hidden = true;
  await loadInfo();
  refreshStatus();
  setInterval(refreshStatus, 2000);
}

async function loadInfo() {
  const info = await state.server.info($("model").value);
  state.info = info;
  const card = info.card || {};
  $("model-card").textContent = [
    card.name,
    card.description,
    `vocoder ${info.vocoder || "?"} (${info.vocoderChoice || "default"}), ${info.executionProvider}`,
    info.liveCapacity ? `live capacity ${info.liveCapacity}` : "",
  ].filter(Boolean).join(" · ");
  buildSliders(info.sliders || []);
}

function buildSliders(sliders) {
  const box = $("sliders");
  box.replaceChildren();
  state.positions = {};
  if (!sliders.length) box.textContent = "This model has no sliders.";
  for (const s of sliders) {
    const min = s.minPosition ?? 0, max = s.maxPosition ?? 0;
    const row = document.createElement("div");
    row.className = "slider";
    const name = document.createElement("div");
    name.className = "name";
    name.innerHTML = `<span></span><b>0</b>`;
    name.firstChild.textContent = s.label || `PC${(s.index ?? 0) + 1}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min, max, step: 1, value: 0, id: `slider-${s.index ?? 0}` });
    const track = document.createElement("div");
    track.className = "track";
    track.style.background = zones(s, min, max);
    const index = s.index ?? 0;
    const update = () => {
      const p = Number(input.value);
      name.lastChild.textContent = p > 0 ? `+${p}` : String(p);
      const safe = p >= (s.safeMinPosition ?? min) && p <= (s.safeMaxPosition ?? max);
      const warn = p >= (s.warningMinPosition ?? min) && p <= (s.warningMaxPosition ?? max);
      row.className = `slider${safe ? "" : warn ? " warn" : " beyond"}`;
      state.positions[index] = p;
    };
    input.addEventListener("input", () => {
      update();
      steer();
    });
    update();
    row.append(name, input, track);
    box.append(row);
  }
}

function zones(s, min, max) {
  // the track under a slider: safe (green), warning (amber), beyond (red)
  const at = (p) => `${((p - min) / Math.max(1, max - min)) * 100}%`;
  const sLo = s.safeMinPosition ?? min, sHi = s.safeMaxPosition ?? max;
  const wLo = s.warningMinPosition ?? min, wHi = s.warningMaxPosition ?? max;
  return `linear-gradient(to right, var(--beyond) ${at(wLo)}, var(--warn) ${at(wLo)} ${at(sLo)},
    var(--safe) ${at(sLo)} ${at(sHi)}, var(--warn) ${at(sHi)} ${at(wHi)}, var(--beyond) ${at(wHi)})`;
}

function settings() {
  return {
    model: $("model").value,
    mode: $("mode").value,
    seed: $("seed").value === "" ? undefined : Number($("seed").value),
    sliders: { ...state.positions },
    evolution: Number($("evolution").value),
    spatial: $("spatial").value,
    stereoWidth: $("spatial").value === "mono" ? undefined : Number($("width").value),
    lookahead: Number($("lookahead").value),
    encoding: $("encoding").value === "auto" ? undefined : $("encoding").value,
  };
}

function steer() {
  const s = state.session;
  if (!s || s.closed || $("mode").value !== "slider") return;
  const sequence = s.setSliders(state.positions, { transition: 0.1 });
  if (sequence) state.moved = { sequence, at: performance.now() };
}

async function play() {
  await stop();
  const s = settings();
  const opus = (s.encoding ?? (opusDecodable() ? "opus" : "float32")) === "opus";
  if (!state.context || (opus && state.context.sampleRate !== 48000)) {
    state.context = new AudioContext(opus ? { sampleRate: 48000 } : {});
    state.analyser = null;
  }
  const context = state.context;
  await context.resume();
  if (!opus) s.sampleRate = context.sampleRate;
  const session = state.server.live(s);
  state.session = session;
  state.firstAudioMs = null;
  state.moved = null;
  if (!state.analyser) {
    state.analyser = context.createAnalyser();
    state.analyser.fftSize = 2048;
    state.analyser.smoothingTimeConstant = 0;
    state.analyser.connect(context.destination);
  }
  const player = await createPlayer(context, session, { bufferS: JITTER_BUFFER_S, destination: state.analyser });
  state.player = player;
  player.addEventListener("stats", (event) => {
    const st = event.detail;
    if (state.moved && st.controlHeard >= state.moved.sequence) {
      state.heardMs.push(st.heardAt - state.moved.at);
      state.moved = null;
    }
    drawMeter(st);
    $("stats").textContent =
      `${session.encoding} ${session.sampleRate ?? "?"} Hz · first audio ${fmt(session.firstAudioMs)} ms · ` +
      `buffered ${(st.bufferedS * 1000).toFixed(0)} ms · underruns ${st.underruns} · played ${st.playedS.toFixed(1)} s` +
      (state.heardMs.length ? ` · slider heard after ${fmt(state.heardMs.at(-1))} ms` : "");
  });
  state.maxGapMs = 0;
  let lastArrival = null;
  session.addEventListener("audio", () => {
    const now = performance.now();
    if (state.firstAudioMs === null) state.firstAudioMs = session.firstAudioMs;
    if (lastArrival !== null) state.maxGapMs = Math.max(state.maxGapMs, now - lastArrival);
    lastArrival = now;
  });
  session.addEventListener("error", (event) => showError(event.detail));
  session.addEventListener("close", () => {
    if (state.session === session) setPlaying(false);
  });
  setPlaying(true);
}

async function stop() {
  const session = state.session;
  if (!session) return;
  if (!session.closed) session.stop();
  state.player?.disconnect();
  state.player = null;
  state.session = null;
  setPlaying(false);
}

function setPlaying(on) {
  $("play").disabled = on;
  $("stop").disabled = !on;
}

function fmt(x) {
  return x === null || x === undefined ? "–" : x.toFixed(0);
}

function drawMeter(st) {
  const c = $("meter"), g = c.getContext("2d");
  const db = (x) => Math.max(0, 1 + (20 * Math.log10(Math.max(x, 1e-6))) / 60);
  g.clearRect(0, 0, c.width, c.height);
  const grad = g.createLinearGradient(0, 0, c.width, 0);
  grad.addColorStop(0, "#2f9e75");
  grad.addColorStop(0.75, "#d69e2e");
  grad.addColorStop(1, "#c0504d");
  g.fillStyle = grad;
  g.fillRect(0, 3, c.width * db(st.rms), c.height - 6);
  g.fillStyle = "#e6e9ee";
  g.fillRect(c.width * db(st.peak) - 1, 0, 2, c.height);
}

function drawSpectrogram() {
  requestAnimationFrame(drawSpectrogram);
  const analyser = state.analyser;
  const c = $("spectrogram"), g = c.getContext("2d");
  if (!analyser || !state.player) return;
  const now = performance.now();
  if (now - (drawSpectrogram.last || 0) < 33) return; // ~30 columns a second
  drawSpectrogram.last = now;
  const bins = new Uint8Array(analyser.frequencyBinCount);
  analyser.getByteFrequencyData(bins);
  const h = c.height, w = 2;
  const column = drawSpectrogram.column?.height === h ? drawSpectrogram.column : g.createImageData(w, h);
  drawSpectrogram.column = column;
  const nyquist = analyser.context.sampleRate / 2;
  for (let y = 0; y < h; y++) {
    // log-frequency rows: 30 Hz at the bottom to the Nyquist frequency at the top
    const f = 30 * Math.pow(nyquist / 30, (h - 1 - y) / (h - 1));
    const v = bins[Math.min(bins.length - 1, Math.round((f / nyquist) * bins.length))] / 255;
    const [r, gr, b] = colour(v);
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 4;
      column.data[i] = r;
      column.data[i + 1] = gr;
      column.data[i + 2] = b;
      column.data[i + 3] = 255;
    }
  }
  g.drawImage(c, -w, 0); // scroll left
  g.putImageData(column, c.width - w, 0);
}

function colour(v) {
  // dark blue -> green -> yellow -> orange, by level
  const stops = [[6, 8, 30], [20, 60, 120], [30, 160, 110], [230, 220, 60], [250, 120, 40]];
  const x = Math.min(0.9999, Math.max(0, v)) * (stops.length - 1);
  const i = Math.floor(x), t = x - i;
  return stops[i].map((a, k) => a + (stops[i + 1][k] - a) * t);
}

async function refreshStatus() {
  try {
    const st = await state.server.status();
    const m = st.models.find((x) => x.name === $("model").value) || st.models[0] || {};
    $("status").innerHTML = "";
    $("status").textContent =
      `${m.name ?? "?"} · ${m.vocoder || "?"} (${m.vocoderPath || "?"}) · ${m.provider || "?"} · ` +
      `live sessions ${st.liveSessions}/${m.liveCapacity || "∞"} · ` +
      `latency ${state.firstAudioMs === null ? "–" : state.firstAudioMs.toFixed(0) + " ms"}`;
  } catch (error) {
    $("status").textContent = `server unreachable: ${error.message}`;
  }
}

async function generate() {
  const button = $("generate");
  button.disabled = true;
  $("clip-note").textContent = "generating…";
  try {
    const s = settings();
    const clip = await state.server.generate({ ...s, duration: Number($("duration").value), format: $("format").value, sampleRate: 48000 });
    const url = URL.createObjectURL(clip.blob);
    const a = Object.assign(document.createElement("a"), { href: url, download: clip.filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    state.downloads.push(clip.filename);
    $("clip-note").textContent = `${clip.filename}: ${(clip.blob.size / 1024).toFixed(0)} KiB, seed ${clip.seed}`;
  } catch (error) {
    $("clip-note").textContent = "";
    showError(error);
  } finally {
    button.disabled = false;
  }
}

$("play").addEventListener("click", () => play().catch(showError));
$("stop").addEventListener("click", () => stop().catch(showError));
$("generate").addEventListener("click", generate);
$("model").addEventListener("change", () => loadInfo().catch(showError));
$("dice").addEventListener("click", () => ($("seed").value = Math.floor(Math.random() * 1e6)));
$("centre").addEventListener("click", () => {
  for (const input of $("sliders").querySelectorAll("input")) {
    input.value = 0;
    input.dispatchEvent(new Event("input"));
  }
});
$("evolution").addEventListener("input", () => {
  $("evolution-value").textContent = Number($("evolution").value).toFixed(2);
  state.session?.setEvolution(Number($("evolution").value));
});
$("width").addEventListener("input", () => {
  $("width-value").textContent = Number($("width").value).toFixed(2);
  if ($("spatial").value !== "mono") state.session?.setStereoWidth(Number($("width").value));
});
$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await state.server.login($("token").value);
    await loadModels();
  } catch (error) {
    showError(error);
  }
});
requestAnimationFrame(drawSpectrogram);
start().catch(showError);
