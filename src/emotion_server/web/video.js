// The demo page's video part: a chosen video goes to POST /inference/video, streamed back as
// NDJSON; the player shows each face's box and label as it plays, and the selected face's
// emotion timeline is drawn under it.
"use strict";

(() => {
  const { EMOTIONS, COLORS } = window.EmotionPalette; // palette.js
  const SAMPLE_FPS = 5; // frames analysed per second of video

  const $ = (id) => document.getElementById(id);
  const input = $("video-file");
  const panel = $("video-panel");
  const player = $("player");
  const boxes = $("video-boxes");
  const statusLine = $("video-status");
  const errorLine = $("video-error");
  const trackButtons = $("tracks");
  const caption = $("timeline-caption");
  const canvas = $("timeline");
  const legend = $("legend");
  const note = $("video-note");

  let frames = []; // NDJSON frame lines, in time order
  let series = new Map(); // track id -> [{time, probabilities}]
  let summaries = new Map(); // track id -> its summary
  let selected = null;
  let objectUrl = null;
  let latest = 0; // number of the newest upload: an older stream's lines are dropped
  let upload = null; // the newest upload's AbortController: a newer one cancels it
  let finished = false; // the stream's summary or error line has come
  let shown = new Map(); // track id -> its box over the player, kept while the video plays

  const percent = (p) => `${(p * 100).toFixed(1)}%`;

  function showError(text) {
    errorLine.textContent = text;
    errorLine.hidden = !text;
    if (text) note.hidden = true; // "the analysis is below" would not be true
  }

  // ---- Sending the video and reading the stream ----------------------------------------

  async function analyse(file) {
    if (!file) return;
    const number = ++latest;
    if (upload) upload.abort(); // the server stops reading it; its answer is not wanted
    upload = new AbortController();
    frames = [];
    series = new Map();
    summaries = new Map();
    selected = null;
    finished = false;
    shown = new Map();
    boxes.replaceChildren();
    note.hidden = true;
    trackButtons.replaceChildren();
    caption.textContent = "No face selected.";
    clearTimeline();
    showError("");
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(file);
    player.src = objectUrl;
    panel.hidden = false;
    statusLine.textContent = "Analysing the video…";
    let response;
    try {
      response = await fetch(`inference/video?fps=${SAMPLE_FPS}`, {
        method: "POST",
        headers: {
          "Content-Type": file.type || "application/octet-stream",
          Accept: "application/x-ndjson",
          ...window.emotionServerKey.headers(), // app.js: the key this tab was given
        },
        body: file,
        signal: upload.signal,
      });
    } catch (error) {
      if (number === latest && error.name !== "AbortError") {
        statusLine.textContent = "";
        showError(`Could not reach the server (${error.message}).`);
      }
      return;
    }
    if (!response.ok) {
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      if (number !== latest) return;
      statusLine.textContent = "";
      if (response.status === 401) window.emotionServerKey.ask();
      showError(
        body && body.message
          ? `${body.message} (${body.error}, HTTP ${response.status})`
          : `The server answered HTTP ${response.status} ${response.statusText}.`,
      );
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (number !== latest) {
          reader.cancel();
          return;
        }
        buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).trim();
          buffer = buffer.slice(newline + 1);
          if (line) handle(JSON.parse(line));
        }
        if (done) break;
      }
    } catch (error) {
      if (number !== latest || finished) return; // the summary or the error line came first
      stopped();
      showError(
        `The answer broke off (${error.name}: ${error.message}); the frames before it are shown.`,
      );
      return;
    }
    if (!finished) {
      stopped();
      showError("The answer ended before its summary; the frames before it are shown.");
    }
  }

  function stopped() {
    const count = frames.length;
    statusLine.textContent = `Stopped after ${count} analysed frame${count === 1 ? "" : "s"}.`;
  }

  function handle(line) {
    if (line.type === "frame") {
      frames.push(line);
      for (const face of line.faces) {
        if (!series.has(face.track_id)) series.set(face.track_id, []);
        series.get(face.track_id).push({ time: line.time, probabilities: face.probabilities });
      }
      statusLine.textContent = `Analysing the video… ${frames.length} frames so far.`;
      drawBoxes();
    } else if (line.type === "summary") {
      for (const track of line.tracks) summaries.set(track.track_id, track);
      const count = line.tracks.length;
      statusLine.textContent =
        `${count} face${count === 1 ? "" : "s"} followed over ${line.sampling.frames_analysed} ` +
        `analysed frames (${line.sampling.fps} a second). Play the video, or select a face.`;
      renderTrackButtons();
      if (count) select(line.tracks[0].track_id);
      finished = true;
    } else if (line.type === "error") {
      finished = true;
      stopped();
      showError(`${line.message} (${line.error}; the frames before it are shown)`);
    }
  }

  // ---- Boxes over the player -------------------------------------------------------------

  function frameAt(time) {
    // The last analysed frame at or before `time` (frames are in time order).
    let low = 0;
    let high = frames.length - 1;
    let found = null;
    while (low <= high) {
      const middle = (low + high) >> 1;
      if (frames[middle].time <= time + 1e-3) {
        found = frames[middle];
        low = middle + 1;
      } else {
        high = middle - 1;
      }
    }
    return found;
  }

  // One box per track, made when its face first shows and then only moved and relabelled: a
  // box replaced on every displayed frame would lose the keyboard focus and the mouse's click.
  function boxFor(trackId) {
    let box = shown.get(trackId);
    if (!box) {
      box = document.createElement("button");
      box.type = "button";
      box.className = "box";
      box.dataset.track = String(trackId);
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.setAttribute("aria-hidden", "true");
      box.append(tag);
      box.addEventListener("click", () => select(trackId));
      shown.set(trackId, box);
      boxes.append(box);
    }
    return box;
  }

  function drawBoxes() {
    const frame = frameAt(player.currentTime);
    const width = player.videoWidth;
    const height = player.videoHeight;
    const present = new Set();
    if (frame && width && height) {
      for (const face of frame.faces) {
        present.add(face.track_id);
        const box = boxFor(face.track_id);
        box.hidden = false;
        box.style.left = `${(100 * face.box.x) / width}%`;
        box.style.top = `${(100 * face.box.y) / height}%`;
        box.style.width = `${(100 * face.box.width) / width}%`;
        box.style.height = `${(100 * face.box.height) / height}%`;
        box.style.setProperty("--box", COLORS[face.prediction] || "#2755c9");
        box.setAttribute(
          "aria-label",
          `Face ${face.track_id}: ${face.prediction}, ${percent(face.confidence)}`,
        );
        box.setAttribute("aria-pressed", String(face.track_id === selected));
        box.firstChild.textContent =
          `${face.track_id}: ${face.prediction} ${percent(face.confidence)}`;
        window.emotionServerPoints(box, face); // the dots, as on the photo page (app.js)
      }
    }
    for (const [trackId, box] of shown) {
      if (!present.has(trackId)) box.hidden = true;
    }
  }

  // ---- The selected face's timeline -------------------------------------------------------

  function renderTrackButtons() {
    trackButtons.replaceChildren(
      ...[...summaries.values()].map((track) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "button";
        button.dataset.track = String(track.track_id);
        button.textContent = `Face ${track.track_id}: ${track.dominant_emotion}`;
        button.setAttribute("aria-pressed", "false");
        button.addEventListener("click", () => select(track.track_id));
        return button;
      }),
    );
    legend.replaceChildren(
      ...EMOTIONS.map((emotion) => {
        const item = document.createElement("li");
        item.textContent = emotion;
        item.style.setProperty("--line-colour", COLORS[emotion]);
        return item;
      }),
    );
  }

  function select(trackId) {
    selected = trackId;
    const track = summaries.get(trackId);
    trackButtons.querySelectorAll("button").forEach((button) => {
      button.setAttribute("aria-pressed", String(button.dataset.track === String(trackId)));
    });
    if (track) {
      const share = track.time_share[track.dominant_emotion];
      caption.textContent =
        `Face ${trackId}: mostly ${track.dominant_emotion} (${percent(share)} of its time), ` +
        `seen in ${track.frames} frames from ${track.first_seen.toFixed(1)} s ` +
        `to ${track.last_seen.toFixed(1)} s.`;
      canvas.setAttribute(
        "aria-label",
        `Emotion timeline of face ${trackId}: mostly ${track.dominant_emotion}`,
      );
    }
    drawBoxes();
    drawTimeline();
  }

  function clearTimeline() {
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
  }

  function drawTimeline() {
    clearTimeline();
    const points = series.get(selected);
    if (!points || !points.length) return;
    const context = canvas.getContext("2d");
    const left = 44;
    const right = canvas.width - 12;
    const top = 12;
    const bottom = canvas.height - 30;
    // A WebM recorded in a browser states no duration: Infinity until it has played through.
    const duration = Number.isFinite(player.duration) ? player.duration : 0;
    const end = Math.max(duration, points[points.length - 1].time, 0.001);
    const x = (time) => left + (time / end) * (right - left);
    const y = (p) => bottom - p * (bottom - top);
    context.font = "13px system-ui, sans-serif";
    context.fillStyle = "#566074";
    context.strokeStyle = "#e3e6ec";
    context.lineWidth = 1;
    for (const p of [0, 0.5, 1]) {
      context.beginPath();
      context.moveTo(left, y(p));
      context.lineTo(right, y(p));
      context.stroke();
      context.fillText(String(p), 8, y(p) + 4);
    }
    context.fillText("0 s", left, canvas.height - 10);
    context.fillText(`${end.toFixed(1)} s`, right - 40, canvas.height - 10);
    context.lineWidth = 3;
    context.lineJoin = "round";
    for (const emotion of EMOTIONS) {
      context.strokeStyle = COLORS[emotion];
      context.beginPath();
      points.forEach((point, index) => {
        const method = index ? "lineTo" : "moveTo";
        context[method](x(point.time), y(point.probabilities[emotion]));
      });
      context.stroke();
    }
    // Where the player is.
    context.strokeStyle = "#1d2330";
    context.lineWidth = 1;
    context.beginPath();
    context.moveTo(x(player.currentTime), top);
    context.lineTo(x(player.currentTime), bottom);
    context.stroke();
  }

  function onTime() {
    drawBoxes();
    drawTimeline();
  }

  // Boxes follow every displayed frame where the browser says when one is shown.
  function followFrames() {
    if (!player.requestVideoFrameCallback) return;
    player.requestVideoFrameCallback(() => {
      drawBoxes();
      followFrames();
    });
  }

  for (const event of ["timeupdate", "seeked", "loadedmetadata"]) {
    player.addEventListener(event, onTime);
  }
  followFrames();
  // The server reads more formats than a browser plays (AVI, GIF, HEVC in some): the analysis
  // is still shown, without the boxes over the picture.
  player.addEventListener("error", () => {
    if (player.src && errorLine.hidden) note.hidden = false; // not when the server refused it
  });

  // A video dropped anywhere on the page (app.js takes the drop).
  document.addEventListener("emotion:video-file", (event) => analyse(event.detail));

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    analyse(input.files[0]);
    input.value = "";
  });
})();
