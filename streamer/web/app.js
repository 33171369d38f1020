// streamer browser client: microphone -> AudioWorklet (16-bit PCM frames) -> websocket,
// turn events -> live speaker timeline. Protocol: docs/PROTOCOL.md.
// Page URL options: ?token=T (sent as ?token= on the websocket), ?server=ws://host:port/v1/stream,
// ?config={"latency":2} (stream config overrides, JSON).
// Everything the page received is in window.streamerState (read by the end-to-end test).
"use strict";

(() => {
  const COLOURS = ["#2f6fde", "#e0882b", "#2ea36b", "#c94ba8", "#8d5bd6",
                   "#d0453b", "#1a9fb0", "#9a7b2f", "#5a6b8c", "#6fa52f"];
  const WINDOW_SECONDS = 60;   // visible span of the timeline
  const FRAME_SECONDS = 0.1;   // audio per websocket frame
  const LISTED_TURNS = 12;     // final turns shown in the list
  const STOP_FALLBACK_MS = 1000;
  const RESEND_SECONDS = 60;   // audio kept to send again after a server drain
  const RESUME_CONTEXT_SECONDS = 15;  // of it sent before the resume point (start.context)
  const LOST_RETRY_MS = 250;   // wait before reopening a stream whose connection was lost

  const state = {
    phase: "idle",             // idle | connecting | live | resuming | stopping | done | error
    status: "idle",
    sampleRate: null,
    ready: null,               // the ready event
    end: null,                 // the end event
    error: null,               // {code, message}
    closeCode: null,
    events: [],                // every event received, in order
    finals: [],                // final turns
    interim: null,             // the open turn, if any
    warnings: [],
    audioSeconds: 0,           // audio sent so far (the stream's clock)
    capturedSeconds: 0,        // audio captured so far
    stopSent: false,
    resumeId: null,            // where the server saves this stream's state (ready.resume_id)
    reconnects: 0,             // streams resumed after a server drain or a lost connection
    attempt: 0,                // Start presses so far
  };
  window.streamerState = state;

  const $ = (id) => document.getElementById(id);
  const colours = new Map();   // speaker label -> colour, in order of first appearance
  let ws = null;
  let audio = null;            // {stream, context, source, node}
  let renderTimer = null;
  let renderPending = false;
  let stopTimer = null;        // sends stop if the worklet never confirms its flush
  // Captured audio, kept so that a stream resumed after a drain gets again what the
  // drained server had not processed: [{start (sample), data (Int16 ArrayBuffer)}].
  let captured = [];
  let capturedSamples = 0;
  let cursor = 0;              // next sample to send on the current connection
  let streaming = false;       // the current connection is ready for audio
  let resuming = null;         // the end event of the drained stream being resumed

  function pageParams() { return new URLSearchParams(location.search); }

  function streamUrl() {
    const params = pageParams();
    let url = params.get("server");
    if (!url) {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      url = `${scheme}//${location.host}/v1/stream`;
    }
    const token = params.get("token");
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    return url;
  }

  function streamConfig() {
    const raw = pageParams().get("config");
    if (!raw) return null;
    const config = JSON.parse(raw);   // a bad value fails start() with a clear message
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      throw new Error("?config= must be a JSON object");
    }
    return config;
  }

  function colourOf(label) {
    if (!colours.has(label)) colours.set(label, COLOURS[colours.size % COLOURS.length]);
    return colours.get(label);
  }

  function setPhase(phase, text) {
    state.phase = phase;
    state.status = text;
    const status = $("status");
    status.textContent = text;
    status.className = phase === "error" ? "error" : phase === "live" ? "live" : "";
    $("start").disabled = ["connecting", "live", "resuming", "stopping"].includes(phase);
    $("stop").disabled = phase !== "live" && phase !== "resuming";
  }

  function fmt(seconds) { return Number(seconds).toFixed(1); }

  // ---- audio -------------------------------------------------------------------------

  async function openMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("no microphone access here (the page must be served over https or from localhost)");
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    let context = null;
    try {
      context = new AudioContext({ latencyHint: "interactive" });
      if (context.sampleRate < 8000 || context.sampleRate > 48000) {   // the server takes 8-48 kHz
        await context.close();
        context = new AudioContext({ latencyHint: "interactive", sampleRate: 48000 });
      }
      await context.audioWorklet.addModule("worklet.js");
      await context.resume();
      const source = context.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(context, "pcm-writer", {
        numberOfInputs: 1, numberOfOutputs: 0,
        channelCount: 1, channelCountMode: "explicit", channelInterpretation: "speakers",
        processorOptions: { frameSeconds: FRAME_SECONDS },
      });
      node.port.onmessage = onWorkletMessage;
      return { stream, context, source, node };
    } catch (err) {
      stream.getTracks().forEach((track) => track.stop());
      if (context) context.close();
      throw err;
    }
  }

  function closeAudio() {
    if (!audio) return;
    const { stream, context, source, node } = audio;
    audio = null;
    node.port.onmessage = null;
    try { source.disconnect(); } catch (err) { /* not connected */ }
    stream.getTracks().forEach((track) => track.stop());
    context.close();
  }

  function onWorkletMessage(message) {
    const data = message.data;
    if (data instanceof ArrayBuffer) {
      if (state.stopSent) return;
      captured.push({ start: capturedSamples, data });
      capturedSamples += data.byteLength / 2;
      state.capturedSeconds = capturedSamples / state.sampleRate;
      const keep = RESEND_SECONDS * state.sampleRate;
      while (captured.length > 1 && captured[1].start < capturedSamples - keep) captured.shift();
      sendCaptured();
    } else if (data && data.flushed) {
      sendStop();
    }
  }

  function sendCaptured() {
    if (!streaming || !ws || ws.readyState !== WebSocket.OPEN) return;
    for (const frame of captured) {
      const samples = frame.data.byteLength / 2;
      if (frame.start + samples <= cursor) continue;
      const skip = Math.max(0, cursor - frame.start);
      ws.send(skip ? frame.data.slice(skip * 2) : frame.data);
      cursor = frame.start + samples;
      state.audioSeconds = cursor / state.sampleRate;
    }
  }

  // ---- stream ------------------------------------------------------------------------

  async function start() {
    if (["connecting", "live", "resuming", "stopping"].includes(state.phase)) return;
    resetState();
    let config;
    try {
      config = streamConfig();
    } catch (err) {
      return fail("bad_config", `?config=: ${err.message}`);
    }
    setPhase("connecting", "requesting microphone…");
    try {
      audio = await openMicrophone();
    } catch (err) {
      return fail("microphone", `${err.name || "Error"}: ${err.message}`);
    }
    state.sampleRate = audio.context.sampleRate;
    state.config = config;
    setPhase("connecting", "connecting to the server…");
    connect(null);
  }

  // One websocket of the stream: the first, or one resuming it after a server drain
  // (resume: {resume_id} or {resume, offset}, fields of its start message).
  function connect(resume) {
    streaming = false;
    const socket = new WebSocket(streamUrl());
    ws = socket;
    socket.binaryType = "arraybuffer";
    let opened = false;          // a close before this is a refused handshake
    socket.onopen = () => {
      opened = true;
      const message = { type: "start", sample_rate: Math.round(state.sampleRate), encoding: "pcm_s16le", channels: 1 };
      if (state.config) message.config = state.config;
      if (resume) Object.assign(message, resume);
      socket.send(JSON.stringify(message));
    };
    socket.onmessage = (message) => {
      if (socket !== ws || typeof message.data !== "string") return;
      let event;
      try { event = JSON.parse(message.data); } catch (err) { return; }
      handleEvent(event);
    };
    socket.onclose = (event) => { if (socket === ws) onClose(event, opened); };
  }

  function stop() {
    if (state.phase !== "live" && state.phase !== "resuming") return;
    setPhase("stopping", "finishing: waiting for the last turns…");
    if (!audio) return sendStop();
    try { audio.source.disconnect(); } catch (err) { /* already */ }
    audio.stream.getTracks().forEach((track) => track.stop());
    audio.node.port.postMessage("flush");       // the worklet posts its partial frame, then {flushed}
    stopTimer = setTimeout(sendStop, STOP_FALLBACK_MS);
  }

  function sendStop() {
    clearTimeout(stopTimer);
    stopTimer = null;
    if (state.stopSent) return;
    state.stopSent = true;
    if (streaming && ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" }));
    closeAudio();
  }

  function handleEvent(event) {
    state.events.push(event);
    switch (event.type) {
      case "ready":
        state.ready = event;
        state.resumeId = event.resume_id || null;
        if (resuming) {
          // Go on from the audio the drained server had processed.
          resuming = null;
          cursor = Math.round(((event.offset || 0) - (event.context || 0)) * state.sampleRate);
          streaming = true;
          setPhase(state.stopSent ? "stopping" : "live",
                   `listening · resumed on another server · session ${event.session || "?"}`);
          sendCaptured();
          if (state.stopSent) ws.send(JSON.stringify({ type: "stop" }));
          break;
        }
        streaming = true;
        setPhase("live", `listening · ${Math.round(state.sampleRate)} Hz · session ${event.session || "?"}`);
        if (audio) audio.source.connect(audio.node);   // time 0 of the stream is now
        renderTimer = setInterval(render, 250);
        break;
      case "turn":
        colourOf(event.speaker);
        if (event.final) {
          // A turn sent again after a lost connection may have come before it was lost.
          if (event.replayed && state.finals.some((t) => t.start === event.start
              && t.end === event.end && t.speaker === event.speaker)) break;
          state.finals.push(event);
          // the interim view of the next turn may come before this final one: keep it
          if (!(state.interim && state.interim.id > event.id)) state.interim = null;
          listTurn(event);
        } else {
          state.interim = event;
        }
        scheduleRender();
        break;
      case "warning":
        state.warnings.push(event);
        if (state.phase === "live") {
          const behind = event.behind != null ? ` (${fmt(event.behind)} s behind)` : "";
          $("status").textContent = `${state.status} · server ${event.code || "warning"}${behind}`;
        }
        break;
      case "error":
        if (resuming && !resuming.byState && resuming.state
            && ["bad_state", "store_unavailable"].includes(event.code)) {
          // No server has the saved state (no shared store): resume with our own copy,
          // and send the seconds before its position first (start.context), so that the
          // new server analyses them as the drained one did.
          resuming.byState = true;
          const oldest = captured.length ? captured[0].start / state.sampleRate : 0;
          const context = Math.max(0, Math.floor(Math.min(RESUME_CONTEXT_SECONDS,
                                                          resuming.position - oldest) * 1000) / 1000);
          connect({ resume: resuming.state, offset: resuming.position, context });
          break;
        }
        fail(event.code || "error", event.message || "");
        break;
      case "end":
        if (event.reconnect && state.resumeId && (audio || state.stopSent)) {
          // The server was drained (a restart): resume on another one, capture going on.
          streaming = false;
          resuming = { state: event.state, position: event.position, byState: false };
          state.interim = null;
          state.reconnects += 1;
          setPhase("resuming", "the server is restarting: resuming the stream…");
          connect({ resume_id: state.resumeId });
          break;
        }
        state.end = event;
        state.interim = null;
        (event.speakers || []).forEach((speaker) => colourOf(speaker.label));
        renderSummary(event);
        setPhase("done", `done · ${fmt(event.duration || state.audioSeconds)} s of audio · `
                         + `${(event.speakers || []).length} speaker(s)`);
        render();
        break;
      default:
        break;   // unknown event types are ignored (forward compatibility)
    }
  }

  function onClose(event, opened) {
    state.closeCode = event.code;
    if (event.code === 1006 && state.ready && state.resumeId && !resuming
        && (state.phase === "live" || state.phase === "stopping")) {
      // The connection was lost (no close handshake): the server saves the stream when it
      // notices; resume it by id, capture going on, and send again from its offset.
      streaming = false;
      ws = null;
      resuming = { state: null, position: 0, byState: false };
      state.interim = null;
      state.reconnects += 1;
      setPhase(state.stopSent ? "stopping" : "resuming", "connection lost: resuming the stream…");
      // The seconds before the resume point go first (start.context; ready.context says
      // how many), in case the server could keep only a periodic save.
      setTimeout(() => connect({ resume_id: state.resumeId, context: RESUME_CONTEXT_SECONDS }),
                 LOST_RETRY_MS);
      return;
    }
    closeAudio();
    clearInterval(renderTimer);
    renderTimer = null;
    ws = null;
    if (state.phase === "done" || state.phase === "error") return;
    const detail = event.reason ? `: ${event.reason}` : "";
    if (state.ready || opened) {
      fail("closed", `connection closed (code ${event.code}${detail})`);
      return;
    }
    // A refused handshake (full server, wrong token) shows the page no HTTP status:
    // the server's /readyz tells whether it is refusing new streams, and why.
    const attempt = state.attempt;
    refusalReason().then((why) => {
      if (state.attempt === attempt && !state.error) fail("refused", `${why} (code ${event.code}${detail})`);
    });
  }

  async function refusalReason() {
    let reply;
    try {
      const url = new URL(streamUrl());
      url.protocol = url.protocol === "wss:" ? "https:" : "http:";
      url.pathname = "/readyz";
      url.search = "";
      reply = await fetch(url, { cache: "no-store" });
    } catch (err) {
      return "could not open a stream: is the server up? (a server on another origin may also "
        + "refuse this page: see --allowed-origins)";
    }
    if (reply.status === 503) {
      const why = (await reply.text()).trim().replace(/^not ready: /, "");
      return `the server refused a new stream: ${why}; try again in a few seconds`;
    }
    return "could not open a stream: the server is up and takes new streams, so check ?token= "
      + "in the page URL (or it was briefly busy: try again)";
  }

  function fail(code, message) {
    if (!state.error) state.error = { code, message };
    setPhase("error", `error: ${code}${message ? ": " + message : ""}`);
    closeAudio();
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
  }

  function resetState() {
    clearTimeout(stopTimer);
    stopTimer = null;
    Object.assign(state, {
      attempt: state.attempt + 1,   // a late answer about an earlier stream is dropped
      ready: null, end: null, error: null, closeCode: null, events: [], finals: [], interim: null,
      warnings: [], audioSeconds: 0, capturedSeconds: 0, stopSent: false, sampleRate: null,
      resumeId: null, reconnects: 0, config: null,
    });
    captured = [];
    capturedSamples = 0;
    cursor = 0;
    streaming = false;
    resuming = null;
    colours.clear();
    $("turns").replaceChildren();
    $("summary").textContent = "Press Stop to see each speaker's total speech.";
    render();
  }

  // ---- drawing -----------------------------------------------------------------------

  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(() => { renderPending = false; render(); }, 50);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function turnBox(turn, t0, span, cls) {
    const left = Math.max(turn.start, t0);
    const box = element("div", `turn ${cls}`);
    box.style.left = `${((left - t0) / span) * 100}%`;
    box.style.width = `${(Math.max(turn.end - left, 0) / span) * 100}%`;
    box.style.background = colourOf(turn.speaker);
    box.title = `${turn.speaker} ${fmt(turn.start)}–${fmt(turn.end)} s${cls === "interim" ? " (interim)" : ""}`;
    return box;
  }

  function render() {
    const timeline = $("timeline");
    const visible = [...state.finals];
    if (state.interim) visible.push(state.interim);
    const speakers = [...colours.keys()].filter(
      (label) => visible.some((turn) => turn.speaker === label)
                 || (state.end && (state.end.speakers || []).some((s) => s.label === label)));
    if (speakers.length === 0) {
      timeline.replaceChildren(element("div", "empty", state.phase === "live" ? "Listening…" : "No speech yet."));
      return;
    }
    const lastEnd = visible.reduce((m, turn) => Math.max(m, turn.end), 0);
    const now = Math.max(state.audioSeconds, lastEnd, state.end ? state.end.duration || 0 : 0);
    const t1 = Math.max(WINDOW_SECONDS, now);
    const t0 = t1 - WINDOW_SECONDS;
    const rows = [];
    for (const label of speakers) {
      const row = element("div", "row");
      row.dataset.speaker = label;
      const name = element("div", "label");
      const swatch = element("span", "swatch");
      swatch.style.background = colourOf(label);
      name.append(swatch, element("span", null, label));
      const lane = element("div", "lane");
      for (const turn of state.finals) {
        if (turn.speaker === label && turn.end > t0) lane.append(turnBox(turn, t0, WINDOW_SECONDS, "final"));
      }
      if (state.interim && state.interim.speaker === label && state.interim.end > t0) {
        lane.append(turnBox(state.interim, t0, WINDOW_SECONDS, "interim"));
      }
      const cursor = element("div", "now");
      cursor.style.left = `${((now - t0) / WINDOW_SECONDS) * 100}%`;
      lane.append(cursor);
      row.append(name, lane);
      rows.push(row);
    }
    const axis = element("div", "axis");
    for (let t = Math.ceil(t0 / 10) * 10; t <= t1; t += 10) {
      const tick = element("span", "tick", `${t}s`);
      tick.style.left = `${((t - t0) / WINDOW_SECONDS) * 100}%`;
      axis.append(tick);
    }
    timeline.replaceChildren(...rows, axis);
  }

  function listTurn(turn) {
    const list = $("turns");
    const item = element("li");
    const speaker = element("span", "spk", turn.speaker);
    speaker.style.color = colourOf(turn.speaker);
    item.append(`${fmt(turn.start).padStart(6)}–${fmt(turn.end).padEnd(6)} `, speaker,
                ` (${fmt(turn.end - turn.start)} s)`);
    list.prepend(item);
    while (list.children.length > LISTED_TURNS) list.lastChild.remove();
  }

  function renderSummary(end) {
    const speakers = end.speakers || [];
    const box = $("summary");
    if (speakers.length === 0) {
      box.textContent = `No speakers in ${fmt(end.duration || 0)} s of audio.`;
      return;
    }
    const total = speakers.reduce((sum, s) => sum + (s.speech || 0), 0) || 1;
    const table = element("table");
    const head = element("tr");
    ["Speaker", "Speech", "Share"].forEach((title) => head.append(element("th", null, title)));
    table.append(head);
    for (const speaker of speakers) {
      const row = element("tr");
      const name = element("td");
      const swatch = element("span", "swatch");
      Object.assign(swatch.style, { display: "inline-block", width: "10px", height: "10px",
                                    borderRadius: "2px", marginRight: "8px", background: colourOf(speaker.label) });
      name.append(swatch, speaker.label);
      row.append(name, element("td", null, `${fmt(speaker.speech || 0)} s`),
                 element("td", null, `${Math.round(((speaker.speech || 0) / total) * 100)} %`));
      table.append(row);
    }
    box.replaceChildren(element("div", null, `${fmt(end.duration || 0)} s of audio`), table);
  }

  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  window.streamerApp = { start, stop };
  render();
})();
