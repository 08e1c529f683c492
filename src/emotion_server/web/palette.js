// The 7 emotions in the model's output order (emotion_server.contract.EMOTIONS) and a colour
// for each, dark enough for white label text: one list for the photo part (app.js) and the
// video part (video.js); the CLI's timeline plots (timeline_plot.py) use the same colours, and
// a test holds the three to this file.
"use strict";

window.EmotionPalette = Object.freeze({
  EMOTIONS: Object.freeze(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]),
  COLORS: Object.freeze({
    angry: "#c1121f",
    disgust: "#4f772d",
    fear: "#6a4c93",
    happy: "#b35c00",
    sad: "#1d5f8a",
    surprise: "#b8336a",
    neutral: "#495867",
  }),
});
