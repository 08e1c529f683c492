// The demo page: a photo (chosen, dropped or taken with the camera) goes to POST /inference;
// each face gets a box with its emotion, and the selected face's 7 probabilities a bar chart.
"use strict";

(() => {
  const { EMOTIONS, COLORS } = window.EmotionPalette; // palette.js
  const LIVE_INTERVAL_MS = 333; // about 3 frames a second, never two requests at once
  const MAX_CANVAS_SIDE = 2048;
  // The video files `emotion-server classify` takes by name (classify_video.VIDEO_SUFFIXES).
  const VIDEO_SUFFIX = /\.(mp4|m4v|mov|webm|mkv|avi)$/i;

  const $ = (id) => document.getElementById(id);
  const fileInput = $("file");
  const drop = $("drop");
  const video = $("video");
  const startButton = $("camera-start");
  const shotButton = $("camera-shot");
  const liveButton = $("camera-live");
  const stopButton = $("camera-stop");
  const statusLine = $("status");
  const errorLine = $("error");
  const stage = $("stage");
  const canvas = $("canvas");
  const boxes = $("boxes");
  const chart = $("chart");
  const chartCaption = $("chart-caption");
  const keyForm = $("key-form");
  const keyInput = $("api-key");

  let stream = null;
  let starting = false; // the camera is being opened
  let live = false;
  let liveRun = 0; // number of the live loop that may run: a stopped one ends at its next turn
  let liveDone = Promise.resolve(); // the last live loop's end: a new one waits for it
  let latest = 0; // number of the newest photo, taken when it was chosen: older answers are dropped
  let result = null;
  let selected = 0;

  const percent = (p) => `${(p * 100).toFixed(1)}%`;

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function showError(text) {
    errorLine.textContent = text;
    errorLine.hidden = !text;
  }

  // ---- The API key ------------------------------------------------------------------------
  // With EMOTION_API_KEYS set the API answers 401 without a key: the page then asks for one,
  // keeps it in this tab (sessionStorage) and sends it with each request. video.js reads the
  // same stored key and shows the same form (emotionServerKey below).

  const KEY_ITEM = "emotion-server-api-key";
  // A header value must be printable ASCII here (fetch refuses other characters outright).
  const KEY_FORM = /^[\x21-\x7e]+$/;
  let keptKey = null; // the key given on this page (sessionStorage may block or refuse it)

  function storedKey() {
    // The key given on this page first: storage may have refused it (full) and still hold an
    // older one. A reload finds it in storage.
    if (keptKey) return keptKey;
    try {
      return sessionStorage.getItem(KEY_ITEM);
    } catch {
      return null;
    }
  }

  function keyHeaders() {
    const key = storedKey();
    return key ? { "X-API-Key": key } : {};
  }

  function askForKey() {
    keyForm.hidden = false;
    keyInput.focus();
  }

  keyInput.addEventListener("input", () => keyInput.setCustomValidity(""));
  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!KEY_FORM.test(key)) {
      keyInput.setCustomValidity("An API key is letters, digits and ASCII signs, no spaces.");
      keyInput.reportValidity();
      return;
    }
    keptKey = key;
    try {
      sessionStorage.setItem(KEY_ITEM, key);
    } catch {
      // kept in keptKey
    }
    keyInput.value = "";
    keyForm.hidden = true;
    showError("");
    setStatus("Key saved for this tab: choose the photo or video again.");
    fileInput.focus(); // the hidden form's button had it
  });

  window.emotionServerKey = { headers: keyHeaders, ask: askForKey };

  // The detector's points (eyes, nose, mouth), where it gives them, as dots in a face's box
  // (made again each time: the video part moves its boxes frame by frame).
  function placePoints(box, face) {
    for (const dot of box.querySelectorAll(".point")) dot.remove();
    if (!face.box.width || !face.box.height) return;
    for (const [name, point] of Object.entries(face.landmarks || {})) {
      const dot = document.createElement("span");
      dot.className = "point";
      dot.dataset.name = name;
      dot.style.left = `${(100 * (point.x - face.box.x)) / face.box.width}%`;
      dot.style.top = `${(100 * (point.y - face.box.y)) / face.box.height}%`;
      dot.setAttribute("aria-hidden", "true");
      box.append(dot);
    }
  }
  window.emotionServerPoints = placePoints;

  // ---- Sending an image -------------------------------------------------------------------

  // `number`: the photo's, from ++latest when it was chosen or taken.
  async function classify(blob, number) {
    if (number !== latest) return null; // a newer photo came while this one was decoded
    showError("");
    setStatus("Analysing…");
    let response;
    try {
      response = await fetch("inference", {
        method: "POST",
        headers: { "Content-Type": blob.type || "application/octet-stream", ...keyHeaders() },
        body: blob,
      });
    } catch (error) {
      if (number === latest) {
        setStatus("");
        showError(`Could not reach the server (${error.message}).`);
      }
      return null;
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (number !== latest) return null;
    if (!response.ok) {
      setStatus("");
      if (response.status === 401) {
        stopLive();
        askForKey();
      }
      if (body && body.message) {
        showError(`${body.message} (${body.error}, HTTP ${response.status})`);
      } else {
        showError(`The server answered HTTP ${response.status} ${response.statusText}.`);
      }
      return null;
    }
    if (!body) {
      setStatus("");
      showError("The server's answer could not be read (it is not JSON).");
      return null;
    }
    return body;
  }

  // ---- Showing the picture and the faces -------------------------------------------------

  function drawSource(source, width, height) {
    const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(width, height));
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    const context = canvas.getContext("2d");
    if (source) {
      context.drawImage(source, 0, 0, canvas.width, canvas.height);
    } else {
      context.fillStyle = "#d5dae5";
      context.fillRect(0, 0, canvas.width, canvas.height);
    }
    stage.hidden = false;
  }

  function describe(classification) {
    return `${classification.prediction} ${percent(classification.confidence)}`;
  }

  function render(body) {
    result = body;
    selected = 0;
    boxes.replaceChildren();
    const { width, height } = body.image;
    body.faces.forEach((face, index) => {
      const box = document.createElement("button");
      box.type = "button";
      box.className = "box";
      box.style.left = `${(100 * face.box.x) / width}%`;
      box.style.top = `${(100 * face.box.y) / height}%`;
      box.style.width = `${(100 * face.box.width) / width}%`;
      box.style.height = `${(100 * face.box.height) / height}%`;
      box.style.setProperty("--box", COLORS[face.prediction] || "#2755c9");
      box.setAttribute("aria-label", `Face ${index + 1}: ${face.prediction}, ${percent(face.confidence)}`);
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = describe(face);
      tag.setAttribute("aria-hidden", "true");
      box.append(tag);
      placePoints(box, face);
      box.addEventListener("click", () => select(index));
      boxes.append(box);
    });
    const count = body.faces.length;
    if (count) {
      setStatus(`${count} face${count > 1 ? "s" : ""} found. Select a box to see its probabilities.`);
      canvas.setAttribute(
        "aria-label",
        `The analysed picture with ${count} face${count > 1 ? "s" : ""} marked`,
      );
    } else {
      const why =
        body.whole_image_reason === "image_is_face_crop"
          ? "The picture is small enough to be a face crop"
          : "No face was found";
      setStatus(`${why}: the whole picture was classified as ${describe(body)}.`);
      canvas.setAttribute("aria-label", `The analysed picture: ${describe(body)}`);
    }
    select(0);
  }

  function select(index) {
    if (!result) return;
    selected = index;
    const face = result.faces[index];
    boxes.querySelectorAll(".box").forEach((box, i) => {
      box.setAttribute("aria-pressed", String(i === index));
    });
    const classification = face || result;
    chartCaption.textContent = face
      ? `Face ${index + 1} of ${result.faces.length}: ${describe(face)}`
      : `Whole picture: ${describe(result)}`;
    chart.replaceChildren(
      ...EMOTIONS.map((emotion) => {
        const p = classification.probabilities[emotion];
        const row = document.createElement("li");
        if (emotion === classification.prediction) row.className = "best";
        const name = document.createElement("span");
        name.className = "name";
        name.textContent = emotion;
        const track = document.createElement("span");
        track.className = "track";
        track.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.className = "fill";
        fill.style.width = percent(p);
        fill.style.setProperty("--bar", COLORS[emotion]);
        track.append(fill);
        const value = document.createElement("span");
        value.className = "value";
        value.textContent = percent(p);
        row.append(name, track, value);
        return row;
      }),
    );
  }

  // ---- A chosen or dropped file ------------------------------------------------------------

  async function analyseFile(file) {
    if (!file) return;
    stopLive();
    const number = ++latest;
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      bitmap = null; // e.g. TIFF: the server reads it, this browser cannot show it
    }
    try {
      const body = await classify(file, number);
      if (!body || number !== latest) return;
      const shown = showAnswer(body, () => {
        drawSource(bitmap, body.image.width, body.image.height);
        render(body);
      });
      if (!shown) return;
      if (!bitmap) {
        setStatus(`${statusLine.textContent} (This browser cannot display the picture itself.)`);
      }
      // On a narrow screen the result is below the controls: bring it into view.
      if (stage.getBoundingClientRect().top > window.innerHeight) {
        $("picture-title").scrollIntoView({ block: "start" });
      }
    } finally {
      bitmap?.close(); // its pixels are on the canvas now, or not wanted (a newer photo won)
    }
  }

  // An answer of a shape this page does not know (a proxy's own 200, say) is said, before
  // anything is drawn, not left as an exception with "Analysing..." on the screen.
  function showAnswer(body, draw) {
    const image = body.image;
    const known =
      image && image.width > 0 && image.height > 0 && Array.isArray(body.faces) &&
      typeof body.prediction === "string" && body.probabilities;
    if (known) {
      try {
        draw();
        return true;
      } catch (error) {
        console.error(error); // a fault of the page's own: for its tests to see
      }
    }
    setStatus("");
    showError("The server's answer could not be shown: it is not the answer this page knows.");
    return false;
  }

  // Space opens the file chooser natively; Enter does too, as on the buttons beside it.
  fileInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      fileInput.click();
    }
  });

  fileInput.addEventListener("change", () => {
    analyseFile(fileInput.files[0]);
    fileInput.value = "";
  });

  for (const target of [drop, stage]) {
    target.addEventListener("dragover", () => drop.classList.add("dragging"));
    target.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  }
  // A file dropped anywhere on the page is taken (the browser would otherwise open it in the
  // page's place): a photo here, a video by the video part (video.js).
  document.addEventListener("dragover", (event) => event.preventDefault());
  let drops = 0; // a drop still reading its GIFs gives way to a later one
  document.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    const files = [...event.dataTransfer.files];
    const dropped = ++drops;
    // Some systems give no type to .mkv or .avi files: their name says it then. An animated
    // GIF is a video here (each face followed over its frames); a still one a photo.
    const animated = new Set();
    for (const f of files) {
      if ((f.type === "image/gif" || /\.gif$/i.test(f.name)) && (await isAnimatedGif(f))) {
        animated.add(f);
      }
    }
    if (dropped !== drops) return;
    const isVideo = (f) =>
      animated.has(f) || (f.type ? f.type.startsWith("video/") : VIDEO_SUFFIX.test(f.name));
    const photo = files.find((f) => !isVideo(f) && (!f.type || f.type.startsWith("image/")));
    const clip = files.find(isVideo);
    if (photo) {
      analyseFile(photo);
    } else if (clip) {
      document.dispatchEvent(new CustomEvent("emotion:video-file", { detail: clip }));
    } else {
      showError("Drop a photo (JPEG, PNG, WebP, BMP, GIF or TIFF) or a video.");
    }
  });

  // Whether a GIF holds more than one frame: its blocks walked from the header (extensions
  // and frames, each a run of length-prefixed sub-blocks) until a second frame or the end. A
  // file that cannot be read or walked counts as still; the photo path says what is wrong.
  async function isAnimatedGif(file) {
    let bytes;
    try {
      bytes = new Uint8Array(await file.arrayBuffer());
    } catch {
      return false;
    }
    const colourTable = (flags) => (flags & 0x80 ? 3 * 2 ** ((flags & 0x07) + 1) : 0);
    const skipSubBlocks = (at) => {
      while (at < bytes.length && bytes[at] !== 0) at += bytes[at] + 1;
      return at + 1;
    };
    if (bytes.length < 13 || String.fromCharCode(...bytes.subarray(0, 3)) !== "GIF") return false;
    let at = 13 + colourTable(bytes[10]);
    let frames = 0;
    while (at < bytes.length) {
      if (bytes[at] === 0x21) {
        at = skipSubBlocks(at + 2); // extension: introducer, label, then its sub-blocks
      } else if (bytes[at] === 0x2c) {
        if (++frames > 1) return true;
        at += 10 + colourTable(bytes[at + 9]); // image descriptor and its colour table
        at = skipSubBlocks(at + 1); // the LZW code size, then the image data
      } else {
        return false; // the trailer (3B), or something that is not a GIF block
      }
    }
    return false;
  }

  // ---- The camera --------------------------------------------------------------------------

  function setCameraButtons() {
    startButton.disabled = Boolean(stream) || starting;
    shotButton.disabled = !stream || live;
    liveButton.disabled = !stream;
    stopButton.disabled = !stream;
    liveButton.setAttribute("aria-pressed", String(live));
    video.hidden = !stream;
  }

  async function startCamera() {
    if (stream || starting) return; // one camera stream at a time, however fast the clicks
    showError("");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser gives no camera access here (it needs HTTPS or localhost).");
      return;
    }
    starting = true;
    setCameraButtons();
    try {
      const opened = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 720 } },
        audio: false,
      });
      stream = opened;
      video.srcObject = opened;
      await video.play();
      setStatus("Camera on: take a photo, or turn on Live.");
    } catch (error) {
      stopCamera();
      showError(`The camera could not be started (${error.name}: ${error.message}).`);
    } finally {
      starting = false;
      setCameraButtons();
    }
  }

  function stopLive() {
    live = false;
    liveRun += 1;
    setCameraButtons();
  }

  function stopCamera() {
    stopLive();
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
    setCameraButtons();
  }

  async function captureFrame() {
    if (!stream || !video.videoWidth) return;
    const number = ++latest;
    const frame = document.createElement("canvas");
    frame.width = video.videoWidth;
    frame.height = video.videoHeight;
    frame.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((resolve) => frame.toBlob(resolve, "image/jpeg", 0.9));
    if (!blob || number !== latest) return;
    const body = await classify(blob, number);
    if (!body || number !== latest) return;
    const shown = showAnswer(body, () => {
      drawSource(frame, frame.width, frame.height);
      render(body);
    });
    if (!shown) stopLive();
  }

  async function liveLoop(run) {
    while (live && stream && run === liveRun) {
      const started = performance.now();
      await captureFrame();
      const rest = LIVE_INTERVAL_MS - (performance.now() - started);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, rest)));
    }
  }

  startButton.addEventListener("click", startCamera);
  stopButton.addEventListener("click", stopCamera);
  shotButton.addEventListener("click", captureFrame);
  liveButton.addEventListener("click", () => {
    if (live) {
      stopLive();
      return;
    }
    live = true;
    setCameraButtons();
    // Turned off and on again while a frame was on its way: that loop ends first, so there
    // are never two requests at once.
    const run = ++liveRun;
    const previous = liveDone;
    liveDone = previous
      .then(() => liveLoop(run))
      .catch((error) => {
        // A loop that failed ends Live (shown), and the next one may start.
        if (run === liveRun) stopLive();
        showError(`Live mode stopped (${error.message}).`);
      });
  });
})();
