"""A track's emotion probabilities over time -> a PNG line chart, drawn with Pillow.

Pillow is already a serving dependency; matplotlib is only in the [train] extra, and
`emotion-server classify` is part of the serving install, so the chart is drawn here: one line
per emotion in the demo page's colours, time on the x axis, a legend, and the dominant emotion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from emotion_server.contract import EMOTIONS

# The demo page's colours (web/palette.js, which a test holds this to), one per emotion.
COLORS = {
    "angry": "#c1121f",
    "disgust": "#4f772d",
    "fear": "#6a4c93",
    "happy": "#b35c00",
    "sad": "#1d5f8a",
    "surprise": "#b8336a",
    "neutral": "#495867",
}
WIDTH, HEIGHT = 960, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 48, 52  # margins around the plot area


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _step(span: float) -> float:
    """A round tick spacing giving about 8 ticks over `span` seconds."""
    raw = max(span, 1e-3) / 8
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def draw_timeline(
    times: Sequence[float],
    probabilities: Sequence[dict[str, float]],
    title: str,
    path: str | Path,
) -> Path:
    """Writes the chart of one track to `path` (PNG) and returns the path."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)
    x0, y0, x1, y1 = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    start, end = (times[0], times[-1]) if times else (0.0, 1.0)
    if end <= start:
        # At least a second, and wide enough to tell apart from `start` at any magnitude.
        end = start + max(1.0, 8 * math.ulp(start))

    def x_of(t: float) -> float:
        return x0 + (t - start) / (end - start) * (x1 - x0)

    def y_of(p: float) -> float:
        return y1 - p * (y1 - y0)

    draw.text((x0, 14), title, fill="black", font=font)
    for p in (0, 0.25, 0.5, 0.75, 1):
        y = y_of(p)
        draw.line([(x0, y), (x1, y)], fill="#e3e6ec")
        draw.text((x0 - 8, y), f"{p:g}", fill="#333", font=small, anchor="rm")
    step = _step(end - start)
    first = math.ceil(start / step)
    # Counted, not summed: at times of 1e15 s and more (a crafted file's timestamps) adding a
    # 0.2 s step to a tick no longer changes it, and a summing loop never ended.
    for index in range(int((end - start) / step) + 2):
        tick = (first + index) * step
        if tick > end + 1e-9:
            break
        x = x_of(tick)
        draw.line([(x, y1), (x, y1 + 5)], fill="#333")
        draw.text((x, y1 + 8), f"{tick:g}", fill="#333", font=small, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline="#333")
    draw.text(((x0 + x1) / 2, HEIGHT - 8), "time (s)", fill="#333", font=small, anchor="mb")
    draw.text((14, (y0 + y1) / 2), "p", fill="#333", font=small, anchor="mm")
    for index, emotion in enumerate(EMOTIONS):
        points = [(x_of(t), y_of(p[emotion])) for t, p in zip(times, probabilities, strict=True)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=COLORS[emotion])
        elif points:
            draw.line(points, fill=COLORS[emotion], width=3, joint="curve")
        legend_y = y0 + 8 + index * 24
        draw.line([(x1 + 16, legend_y), (x1 + 40, legend_y)], fill=COLORS[emotion], width=4)
        draw.text((x1 + 48, legend_y), emotion, fill="black", font=small, anchor="lm")
    path = Path(path)
    image.save(path, format="PNG")
    return path
