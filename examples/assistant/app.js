/* global document, window, location, navigator, console, WebSocket, AudioContext, AudioWorkletNode, Option, URLSearchParams, performance, setInterval, clearInterval, atob, btoa */
// The omniflow assistant page: microphone (and camera) in, streamed speech out, over the Realtime-compatible
// WebSocket protocol (docs/realtime-protocol.md). Plain JS, no build step. `window.assistant` exposes the state
// (events, playback, barge-ins) for tests and for poking at in the console.

const RATE = 24_000; // PCM16 at 24 kHz both ways
const CHUNK = 480; // 20 ms per append

const $ = (id) => document.getElementById(id);
const state = {
  ws: undefined,
  ctx: undefined,
  mode: 'hands-free',
  talking: false, // push-to-talk button held
  events: [],
  /** Audio sent: [{ endMs, at }] (the client clock when each appended chunk left) — to time the end of speech. */
  sent: [],
  sentMs: 0,
  /** Playback of the current answer. */
  play: { itemId: undefined, responseId: undefined, sources: [], scheduledEnd: 0, startedAt: 0, samples: 0, chunks: [] },
  /** Responses stopped by the user speaking over them: what was played when playback stopped. */
  bargeIns: [],
  /** Every chunk scheduled: { responseId, start, end } in AudioContext seconds. */
  scheduled: [],
  ignoredDeltas: 0,
  scheduledAfterStop: 0,
  stopped: new Set(),
  reports: [],
  speechEndAt: undefined,
  firstAudioAt: undefined,
  camera: undefined,
  cameraTimer: undefined,
};
window.assistant = state;

function send(event) {
  if (state.ws?.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(event));
}

function b64FromPcm16(f32) {
  const bytes = new Uint8Array(f32.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < f32.length; i++) {
    const s = Math.max(-1, Math.min(1, f32[i]));
    view.setInt16(2 * i, s < 0 ? s * 32768 : s * 32767, true);
  }
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

function pcm16FromB64(b64) {
  const bin = atob(b64);
  const out = new Float32Array(bin.length / 2);
  for (let i = 0; i < out.length; i++) {
    let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    if (v >= 0x8000) v -= 0x10000;
    out[i] = v / 32768;
  }
  return out;
}

// ---- transcript ----
const bubbles = new Map();
function bubble(id, role) {
  let el = bubbles.get(id);
  if (!el) {
    el = document.createElement('div');
    el.className = `msg ${role}`;
    el.dataset.item = id;
    $('transcript').append(el);
    bubbles.set(id, el);
  }
  return el;
}

// ---- playback ----
/** Samples of the current answer played so far (the audio clock against the scheduled chunks). */
function playedSamples() {
  const p = state.play;
  if (!state.ctx) return 0;
  const now = state.ctx.currentTime;
  let n = 0;
  for (const c of p.chunks) {
    if (now >= c.end) n += c.samples;
    else if (now > c.start) n += Math.floor((now - c.start) * RATE);
  }
  return n;
}

function schedule(samples) {
  const ctx = state.ctx;
  const p = state.play;
  const buf = ctx.createBuffer(1, samples.length, RATE);
  buf.copyToChannel(samples, 0);
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  const start = Math.max(ctx.currentTime + 0.005, p.scheduledEnd);
  src.start(start);
  p.scheduledEnd = start + samples.length / RATE;
  p.chunks.push({ start, end: p.scheduledEnd, samples: samples.length });
  state.scheduled.push({ responseId: p.responseId, scheduledAt: ctx.currentTime, start, end: p.scheduledEnd });
  if (state.scheduled.length > 2000) state.scheduled.splice(0, 1000);
  p.sources.push(src);
  src.onended = () => {
    p.sources = p.sources.filter((s) => s !== src);
  };
}

/** Stops playback now and tells the server how much of the answer was heard. */
function stopPlayback(reason) {
  const p = state.play;
  if (!p.itemId) return;
  const played = playedSamples();
  const stoppedSources = p.sources.length;
  for (const s of p.sources) {
    try {
      s.stop();
    } catch {
      /* already ended */
    }
  }
  p.sources = [];
  p.scheduledEnd = 0;
  const audioEndMs = (played * 1000) / RATE;
  state.stopped.add(p.responseId);
  state.bargeIns.push({ reason, itemId: p.itemId, responseId: p.responseId, playedMs: audioEndMs, receivedMs: (p.samples * 1000) / RATE, at: performance.now(), ctxTime: state.ctx.currentTime, stoppedSources });
  send({ type: 'conversation.item.truncate', item_id: p.itemId, content_index: 0, audio_end_ms: audioEndMs });
  p.itemId = undefined;
  p.responseId = undefined;
  p.chunks = [];
  p.samples = 0;
}

Object.defineProperty(state, 'playing', { get: () => state.play.sources.length > 0 });

// ---- server events ----
function onEvent(e) {
  e.receivedAt = performance.now();
  state.events.push(e);
  switch (e.type) {
    case 'session.created':
    case 'session.updated': {
      const sel = $('voice');
      if (!sel.options.length) for (const v of e.session.voices ?? []) sel.add(new Option(v, v));
      sel.value = e.session.audio.output.voice;
      $('status').textContent = `connected (${e.session.audio.input.turn_detection ? 'hands-free' : 'push-to-talk'})`;
      break;
    }
    case 'input_audio_buffer.speech_started':
      // Barge-in: the user talks over the answer — stop at once; the server cancels the response.
      if (state.play.itemId) stopPlayback('barge-in');
      bubble(e.item_id, 'user').textContent = '🎤 …';
      break;
    case 'input_audio_buffer.speech_stopped': {
      const sent = state.sent.find((s) => s.endMs >= e.audio_end_ms);
      state.speechEndAt = sent ? sent.at : performance.now();
      break;
    }
    case 'conversation.item.added':
      if (e.item.role === 'user') bubble(e.item.id, 'user').textContent = e.item.content?.[0]?.type === 'input_text' ? e.item.content[0].text : '🎤 (audio)';
      else bubble(e.item.id, 'assistant');
      break;
    case 'response.created':
      state.firstAudioAt = undefined;
      state.activeResponse = e.response.id;
      break;
    case 'response.output_audio_transcript.delta':
    case 'response.output_text.delta':
      bubble(e.item_id, 'assistant').textContent += e.delta;
      break;
    case 'response.output_audio.delta': {
      if (state.stopped.has(e.response_id)) {
        state.ignoredDeltas++; // in flight when playback stopped: never played
        break;
      }
      const p = state.play;
      if (p.responseId !== e.response_id) {
        p.responseId = e.response_id;
        p.itemId = e.item_id;
        p.chunks = [];
        p.samples = 0;
        p.startedAt = performance.now();
      }
      state.firstAudioAt ??= performance.now();
      const samples = pcm16FromB64(e.delta);
      p.samples += samples.length;
      schedule(samples);
      break;
    }
    case 'response.done':
      if (state.activeResponse === e.response.id) state.activeResponse = undefined;
      if (e.response.status === 'completed' && state.play.responseId === e.response.id) state.play.doneAt = performance.now();
      break;
    case 'omniflow.heard': {
      const el = bubble(e.item_id, 'assistant');
      const full = el.textContent;
      el.textContent = e.text;
      if (full.length > e.text.length) {
        const cut = document.createElement('span');
        cut.className = 'cut';
        cut.textContent = full.slice(e.text.length);
        el.append(cut);
      }
      break;
    }
    case 'omniflow.metrics':
      showLatency(e);
      break;
    case 'error':
      console.warn('server error', e.error);
      $('status').textContent = `error: ${e.error.message}`;
      break;
  }
}

function showLatency(report) {
  const l = report.latency;
  const client = state.speechEndAt !== undefined && state.firstAudioAt !== undefined ? state.firstAudioAt - state.speechEndAt : undefined;
  const rows = [
    ['end of speech → first audio (client)', client],
    ['… server part', l.first_audio_ms],
    ['… network + client', client !== undefined && l.first_audio_ms !== undefined ? client - l.first_audio_ms : undefined],
    ['time to first token', l.first_text_ms],
    ['VAD hangover', l.vad_ms], ['audio encoder', l.encode_ms], ['queue', l.queue_ms], ['vision', l.vision_ms], ['thinker prefill', l.prefill_ms],
    ['talker first frame', l.talker_first_frame_ms], ['Code2Wav first', l.code2wav_first_ms], ['send', l.send_ms],
    ['model compute', l.model_ms], ['SDK share', l.sdk_ms],
  ];
  state.reports.push({ ...report, clientFirstAudioMs: client });
  $('latency').innerHTML = `<tr><td>${report.response_id} (${report.status})</td><td></td></tr>` +
    rows.filter(([, v]) => v !== undefined).map(([k, v]) => `<tr><td>${k}</td><td>${v.toFixed(1)} ms</td></tr>`).join('');
  $('nodes').innerHTML = report.nodes.map((n) => `<tr><td>${n.id} [${n.type}]</td><td>p50 ${n.p50_ms.toFixed(2)} / p99 ${n.p99_ms.toFixed(2)} ms</td></tr>` +
    Object.entries(n.steps ?? {}).map(([k, h]) => `<tr><td>&nbsp;&nbsp;${k}</td><td>${(h.mean_ms / 1000).toFixed(1)} ms × ${h.count}</td></tr>`).join('')).join('');
}

// ---- microphone and camera ----
async function startMicrophone() {
  const ctx = state.ctx;
  await ctx.audioWorklet.addModule('capture-worklet.js');
  // No echo cancellation / noise suppression / gain: the server's VAD sees the microphone as it is.
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const node = new AudioWorkletNode(ctx, 'capture');
  ctx.createMediaStreamSource(stream).connect(node);
  let pending = new Float32Array(CHUNK);
  let filled = 0;
  node.port.onmessage = ({ data }) => {
    if (state.mode === 'push-to-talk' && !state.talking) return;
    for (let i = 0; i < data.length; ) {
      const n = Math.min(CHUNK - filled, data.length - i);
      pending.set(data.subarray(i, i + n), filled);
      filled += n;
      i += n;
      if (filled === CHUNK) {
        send({ type: 'input_audio_buffer.append', audio: b64FromPcm16(pending) });
        state.sentMs += (CHUNK * 1000) / RATE;
        state.sent.push({ endMs: state.sentMs, at: performance.now() });
        if (state.sent.length > 1000) state.sent.splice(0, 500);
        pending = new Float32Array(CHUNK);
        filled = 0;
      }
    }
  };
}

async function toggleCamera(on) {
  clearInterval(state.cameraTimer);
  state.camera?.getTracks().forEach((t) => t.stop());
  state.camera = undefined;
  send({ type: 'session.update', session: { video: on } });
  if (!on) return;
  state.camera = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
  const video = $('preview');
  video.srcObject = state.camera;
  await video.play();
  const canvas = document.createElement('canvas');
  canvas.width = 64;
  canvas.height = 64;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  // Two frames a second is plenty: the thinker looks at the latest frame when the user's turn ends.
  state.cameraTimer = setInterval(() => {
    g.drawImage(video, 0, 0, 64, 64);
    const rgba = g.getImageData(0, 0, 64, 64).data;
    const rgb = new Uint8Array(64 * 64 * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i];
      rgb[j + 1] = rgba[i + 1];
      rgb[j + 2] = rgba[i + 2];
    }
    let bin = '';
    for (let i = 0; i < rgb.length; i += 0x8000) bin += String.fromCharCode.apply(null, rgb.subarray(i, i + 0x8000));
    send({ type: 'omniflow.input_video_frame.append', width: 64, height: 64, format: 'rgb24', data: btoa(bin) });
  }, 500);
}

function setMode(mode) {
  state.mode = mode;
  $('talk').disabled = mode !== 'push-to-talk';
  send({ type: 'session.update', session: { audio: { input: { turn_detection: mode === 'hands-free' ? { type: 'server_vad', silence_duration_ms: 400 } : null } } } });
}

async function connect() {
  state.ctx = new AudioContext({ sampleRate: RATE });
  await state.ctx.resume();
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/realtime`;
  state.ws = new WebSocket(url);
  state.ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  state.ws.onclose = () => ($('status').textContent = 'disconnected');
  await new Promise((resolve, reject) => {
    state.ws.onopen = resolve;
    state.ws.onerror = reject;
  });
  setMode($('mode').value);
  await startMicrophone();
  $('connect').disabled = true;
}

$('connect').onclick = () => connect().catch((e) => ($('status').textContent = `failed: ${e.message}`));
$('mode').onchange = (e) => setMode(e.target.value);
$('voice').onchange = (e) => send({ type: 'session.update', session: { audio: { output: { voice: e.target.value } } } });
$('camera').onchange = (e) => toggleCamera(e.target.checked).catch((err) => ($('status').textContent = `camera: ${err.message}`));
const talk = $('talk');
talk.onpointerdown = () => {
  // Talking over the answer: stop playback (the server learns what was heard) and cancel what is still generating.
  if (state.play.itemId) stopPlayback('push-to-talk');
  if (state.activeResponse) send({ type: 'response.cancel', response_id: state.activeResponse });
  state.talking = true;
  talk.classList.add('down');
};
talk.onpointerup = talk.onpointerleave = () => {
  if (!state.talking) return;
  state.talking = false;
  talk.classList.remove('down');
  send({ type: 'input_audio_buffer.commit' });
  send({ type: 'response.create' });
};
if (new URLSearchParams(location.search).has('autostart')) $('connect').click();
