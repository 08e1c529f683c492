"""Take the README's picture: the demo page with samples/astronaut.jpg analysed.

    python scripts/screenshot.py [--out docs/web-page.png]

Starts the server on a loopback port (emotion_server.launcher), opens the page in Debian's Chromium
through Playwright (as tests/test_web.py does), uploads the public-domain sample photo, waits
for the face's box and its probability chart, and writes a palette PNG small enough to commit.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from emotion_server.launcher import Server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
SAMPLE = ROOT / "samples" / "astronaut.jpg"


def capture(url: str, width: int, height: int) -> bytes:
    """A screenshot of the page at `url` once the sample photo's result is drawn."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url + "/")
            page.get_by_label("Choose a photo").set_input_files(str(SAMPLE))
            page.locator(".box").wait_for()
            page.wait_for_timeout(500)  # let the chart's bars finish drawing
            return page.screenshot(full_page=True)
        finally:
            browser.close()


def shrink(png: bytes, colours: int = 128) -> bytes:
    """The screenshot as an adaptive-palette PNG: the page is mostly flat colour."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "web-page.png")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=700)
    args = parser.parse_args()
    server = Server(workers=1, cwd=ROOT)
    try:
        png = shrink(capture(server.url, args.width, args.height))
    finally:
        server.stop()
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) // 1024} KB)")


if __name__ == "__main__":
    main()
