"""The demo page at / and the docs page: served assets and headers, then a real browser (Debian's
Chromium driven by Playwright) against gunicorn on a loopback port."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import ROOT, GunicornServer, encode
from PIL import Image

from emotion_server.api.web import WEB_DIR
from emotion_server.contract import EMOTIONS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A synthetic camera, allowed without a prompt, for the webcam tests.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
SCREENSHOTS = ROOT / ".pytest_cache" / "screenshots"
RAW = {"Content-Type": "application/octet-stream"}


# ---- Served assets and headers (no browser) ------------------------------------------------


def test_page_and_assets_are_served_with_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "http" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    html = page.get_data(as_text=True)
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    local = [ref for ref in references if "//" not in ref]
    assert local == references  # nothing from another host: the page works offline
    assert "<style" not in html and " style=" not in html and "<script>" not in html
    types = {
        "palette.js": "text/javascript",
        "app.js": "text/javascript",
        "video.js": "text/javascript",
        "style.css": "text/css",
        "favicon.svg": "image/svg+xml",
    }
    for name, mimetype in types.items():
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.mimetype == mimetype, name
        assert asset.headers["X-Content-Type-Options"] == "nosniff"


def test_the_scripts_are_javascript_on_a_host_without_a_mime_table():
    """Python takes file types from the system's MIME table; a slim image may have none (and
    Python 3.11's own table says application/javascript). The page's scripts are still served
    as text/javascript, which browsers run under nosniff."""
    import subprocess
    import sys

    from conftest import BUNDLED_MODEL, ROOT

    script = (
        "import mimetypes; mimetypes.knownfiles[:] = []; mimetypes.init(files=[]); "
        "from emotion_server.api import create_app; "
        f"app = create_app({{'model_path': {str(BUNDLED_MODEL)!r}}}); "
        "print(app.test_client().get('/static/app.js').mimetype)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "text/javascript"


def test_one_palette_for_the_page_and_the_plots():
    """palette.js lists the emotions in the model's output order with a colour each; the photo
    and video parts take both from it (loaded before them), and the CLI's timeline plots use
    the same colours."""
    from emotion_server.contract import EMOTIONS
    from emotion_server.timeline_plot import COLORS

    palette = (WEB_DIR / "palette.js").read_text()
    listed = re.search(r"EMOTIONS: Object\.freeze\(\[(.*?)\]\)", palette)[1]
    assert re.findall(r'"(\w+)"', listed) == list(EMOTIONS)
    assert dict(re.findall(r'(\w+): "(#[0-9a-f]{6})"', palette)) == COLORS
    scripts = re.findall(r'<script src="static/([\w.]+)"', (WEB_DIR / "index.html").read_text())
    assert scripts[0] == "palette.js" and {"app.js", "video.js"} <= set(scripts)
    for name in ("app.js", "video.js"):
        script = (WEB_DIR / name).read_text()
        assert "window.EmotionPalette" in script, name
        assert not [colour for colour in COLORS.values() if colour in script], name


def test_api_responses_carry_the_headers_too(client):
    response = client.get("/healthz")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_web_files_are_package_data():
    """A non-editable install ships every file of web/ (pyproject's package-data glob)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["emotion_server"]
    files = [p for p in WEB_DIR.rglob("*") if p.is_file()]
    assert {"index.html", "app.js", "style.css", "docs.html", "docs.js"} <= {p.name for p in files}
    package = WEB_DIR.parent
    for path in files:
        assert any(path.relative_to(package).match(glob) for glob in globs), path


# ---- In Chromium -----------------------------------------------------------------------------


def _chromium() -> Path:
    """Debian's chromium; installed once with apt-get on CI (as root), else the test skips."""
    can_install = os.environ.get("CI") and os.geteuid() == 0 and shutil.which("apt-get")
    if not CHROMIUM.exists() and can_install:
        print("installing Debian's chromium for the browser tests")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env, timeout=900
        )
    if not CHROMIUM.exists():
        reason = (
            f"{CHROMIUM} is missing (install Debian's chromium package; on CI as root the "
            "tests install it themselves)"
        )
        print(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (the [dev] extra)"
    )
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watched:
    """A page whose requests and console errors are recorded."""

    def __init__(self, browser, server, **context):
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.origin = server.url
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on(
            "console",
            lambda message: message.type == "error" and self.errors.append(message.text),
        )
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def inference_calls(self) -> int:
        return sum(url == self.origin + "/inference" for url in self.requests)

    def assert_clean(self, allowed: str | None = None) -> None:
        """Everything came from this server; no script error, no CSP violation."""
        # blob: URLs of this origin are the user's own file, played by the page.
        local = (self.origin + "/", "blob:" + self.origin + "/")
        foreign = [url for url in self.requests if not url.startswith(local)]
        assert not foreign, foreign
        errors = [e for e in self.errors if not (allowed and allowed in e)]
        assert not errors, errors

    def close(self) -> None:
        self.context.close()


@pytest.fixture()
def watched(browser, server):
    opened: list[Watched] = []

    def open_page(**context) -> Watched:
        page = Watched(browser, server, **context)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


def _screenshot(page, name: str) -> np.ndarray:
    """A full-page screenshot, kept under .pytest_cache/screenshots and checked not blank."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    png = page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert pixels.std() > 20 and len(colours) > 1000, (pixels.std(), len(colours))
    return pixels


@pytest.fixture(scope="module")
def astronaut_file(tmp_path_factory, astronaut) -> Path:
    path = tmp_path_factory.mktemp("web") / "astronaut.jpg"
    path.write_bytes(encode(astronaut, "JPEG"))
    return path


def _expected(server, path: Path) -> dict:
    response = requests.post(server.url + "/inference", data=path.read_bytes(), headers=RAW)
    assert response.status_code == 200
    return response.json()


def _label(classification: dict) -> str:
    return f"{classification['prediction']} {classification['confidence'] * 100:.1f}%"


@pytest.mark.e2e
def test_upload_shows_box_label_and_chart(watched, server, astronaut_file):
    tab = watched(viewport={"width": 1280, "height": 800})
    page = tab.page
    page.goto(server.url + "/")
    page.get_by_label("Choose a photo").set_input_files(str(astronaut_file))
    box = page.locator(".box")
    box.wait_for()

    expected = _expected(server, astronaut_file)
    (face,) = expected["faces"]
    assert box.count() == 1
    assert page.locator(".box .tag").inner_text() == _label(face)
    assert box.get_attribute("aria-label") == (
        f"Face 1: {face['prediction']}, {face['confidence'] * 100:.1f}%"
    )
    assert box.get_attribute("aria-pressed") == "true"
    # The box sits where the API says the face is, in the displayed picture's coordinates.
    canvas = page.locator("#canvas").bounding_box()
    drawn = box.bounding_box()
    scale = expected["image"]["width"] / canvas["width"]
    found = [
        (drawn["x"] - canvas["x"]) * scale,
        (drawn["y"] - canvas["y"]) * scale,
        drawn["width"] * scale,
        drawn["height"] * scale,
    ]
    wanted = [face["box"][k] for k in ("x", "y", "width", "height")]
    assert found == pytest.approx(wanted, abs=2 * scale + 1)
    # The face's points are dots where the API puts them.
    dots = page.locator(".box .point")
    assert dots.count() == len(face["landmarks"]) == 5
    for index in range(dots.count()):
        dot = dots.nth(index)
        point = face["landmarks"][dot.get_attribute("data-name")]
        middle = dot.bounding_box()
        seen = [
            (middle["x"] + middle["width"] / 2 - canvas["x"]) * scale,
            (middle["y"] + middle["height"] / 2 - canvas["y"]) * scale,
        ]
        assert seen == pytest.approx([point["x"], point["y"]], abs=2 * scale + 1)

    rows = page.locator("#chart li")
    assert rows.count() == len(EMOTIONS)
    for index, emotion in enumerate(EMOTIONS):
        percent = f"{face['probabilities'][emotion] * 100:.1f}%"
        assert rows.nth(index).inner_text().lower().split() == [emotion, percent]
    assert page.locator("#chart-caption").inner_text() == f"Face 1 of 1: {_label(face)}"
    assert page.locator("#status").inner_text().startswith("1 face found")

    _screenshot(page, "desktop")
    tab.assert_clean()


@pytest.mark.e2e
def test_phone_sized_screen(watched, server, astronaut_file):
    tab = watched(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    page = tab.page
    page.goto(server.url + "/")
    page.get_by_label("Choose a photo").set_input_files(str(astronaut_file))
    page.locator(".box").wait_for()
    # Nothing wider than the screen: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    canvas = page.locator("#canvas").bounding_box()
    assert canvas["x"] >= 0 and canvas["x"] + canvas["width"] <= 390
    for name in ("Start camera", "Choose a photo"):
        target = page.get_by_text(name, exact=True).bounding_box()
        assert target["height"] >= 40  # a finger-sized target
    _screenshot(page, "phone")
    tab.assert_clean()


@pytest.mark.e2e
def test_api_error_is_shown_in_words(watched, server, tmp_path):
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("this is not a photo\n")
    tab = watched()
    page = tab.page
    page.goto(server.url + "/")
    page.get_by_label("Choose a photo").set_input_files(str(not_a_photo))
    alert = page.get_by_role("alert")
    alert.wait_for()
    text = alert.inner_text()
    assert "not an image we can read" in text and "invalid_image" in text and "400" in text
    assert page.locator(".box").count() == 0
    # The browser logs the 400 itself; nothing else may go wrong.
    tab.assert_clean(allowed="status of 400")


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory, astronaut) -> Path:
    """Two faces side by side: the astronaut and her mirror image."""
    path = tmp_path_factory.mktemp("web") / "pair.jpg"
    path.write_bytes(encode(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1), "JPEG"))
    return path


@pytest.mark.e2e
def test_keyboard_only(watched, server, pair_file):
    tab = watched()
    page = tab.page
    # Listening from the start turns on Playwright's file chooser interception before any key.
    choosers = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.goto(server.url + "/")
    reached = []
    for _ in range(8):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.text"))
        if reached[-1] == "file":
            break
    assert reached[-1] == "file", reached  # the photo picker is reached by Tab
    # Enter (or Space) opens the file chooser; the photo is analysed as with a mouse.
    page.keyboard.press("Enter")
    for _ in range(100):
        if choosers:
            break
        page.wait_for_timeout(100)
    assert choosers, "no file chooser opened"
    choosers[0].set_files(str(pair_file))
    page.locator(".box").first.wait_for()
    assert page.locator(".box").count() == 2
    page.keyboard.press("Tab")  # on to the camera's start button
    assert page.evaluate("document.activeElement.id") == "camera-start"
    # On by Tab to the faces' boxes: the second one, selected by Enter, shows its chart.
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('box')"):
            break
    page.keyboard.press("Tab")
    second = page.locator(".box").nth(1)
    assert second.evaluate("box => box === document.activeElement")
    assert second.get_attribute("aria-pressed") == "false"
    page.keyboard.press("Enter")
    assert second.get_attribute("aria-pressed") == "true"
    assert page.locator(".box").first.get_attribute("aria-pressed") == "false"
    assert page.locator("#chart-caption").inner_text().startswith("Face 2 of 2: ")
    # Every control has a name a screen reader can say.
    for name in ("Start camera", "Take photo", "Live", "Stop camera"):
        assert page.get_by_role("button", name=name, exact=True).count() == 1
    assert page.get_by_role("img", name=re.compile("analysed picture")).count() == 1
    tab.assert_clean()


@pytest.mark.e2e
def test_webcam_photo_and_live_mode(watched, server):
    tab = watched(viewport={"width": 1280, "height": 800})
    tab.context.grant_permissions(["camera"], origin=server.url)
    page = tab.page
    page.goto(server.url + "/")
    page.get_by_role("button", name="Start camera").click()
    page.locator("#video").wait_for()  # the preview shows once the stream plays
    shot = page.get_by_role("button", name="Take photo")
    assert shot.is_enabled()

    with page.expect_response(server.url + "/inference") as answer:
        shot.click()
    assert answer.value.status == 200
    body = answer.value.json()
    page.locator("#chart li").first.wait_for()
    # Chromium's synthetic camera shows no face: the whole frame is classified.
    assert page.locator("#canvas").evaluate("c => [c.width, c.height]") == [
        body["image"]["width"],
        body["image"]["height"],
    ]
    assert page.locator("#chart li").count() == len(EMOTIONS)

    live = page.get_by_role("button", name="Live")
    before = tab.inference_calls()
    live.click()
    assert live.get_attribute("aria-pressed") == "true" and not shot.is_enabled()
    page.wait_for_function(
        f"() => performance.getEntriesByName('{server.url}/inference').length >= {before + 3}",
        timeout=30_000,
    )
    live.click()
    assert live.get_attribute("aria-pressed") == "false"
    page.get_by_role("button", name="Stop camera").click()
    assert page.locator("#video").is_hidden()
    assert tab.inference_calls() >= before + 3
    tab.assert_clean()


# Page-side instruments (not stand-ins): every camera stream the page opens is kept, every
# request the page sends is counted while in flight; `window.slowNetwork` ms are added to each
# request, and `window.decodeDelays` (ms, one per call) to the browser's decoding of photos.
INSTRUMENTS = """
window.decodeDelays = [];
const realCreateImageBitmap = window.createImageBitmap.bind(window);
window.createImageBitmap = async (...args) => {
  const delay = window.decodeDelays.shift() || 0;
  await new Promise((resolve) => setTimeout(resolve, delay));
  return realCreateImageBitmap(...args);
};
window.openedStreams = [];
const realGetUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const opened = await realGetUserMedia(constraints);
  window.openedStreams.push(opened);
  return opened;
};
window.inFlight = 0;
window.mostInFlight = 0;
window.slowNetwork = 0;
const realFetch = window.fetch.bind(window);
window.fetch = async (...args) => {
  window.inFlight += 1;
  window.mostInFlight = Math.max(window.mostInFlight, window.inFlight);
  try {
    await new Promise((resolve) => setTimeout(resolve, window.slowNetwork));
    return await realFetch(...args);
  } finally {
    window.inFlight -= 1;
  }
};
"""


def _instrumented(watched, server, camera: bool = False, **context) -> Watched:
    """A fresh tab on the page with INSTRUMENTS installed (and the camera allowed)."""
    tab = watched(**context)
    if camera:
        tab.context.grant_permissions(["camera"], origin=server.url)
    tab.page.add_init_script(INSTRUMENTS)
    tab.page.goto(server.url + "/")
    return tab


@pytest.mark.e2e
def test_camera_started_twice_quickly_opens_one_stream_and_stops_it(watched, server):
    tab = _instrumented(watched, server, camera=True)
    page = tab.page
    page.evaluate(
        "() => { const b = document.getElementById('camera-start'); b.click(); b.click(); }"
    )
    page.locator("#video").wait_for()
    page.get_by_role("button", name="Stop camera").click()
    states = page.evaluate(
        "() => window.openedStreams.map((s) => s.getTracks().map((t) => t.readyState))"
    )
    assert states == [["ended"]]  # one stream, and the camera is off
    assert page.get_by_role("button", name="Start camera").is_enabled()
    tab.assert_clean()


@pytest.mark.e2e
def test_live_turned_off_and_on_quickly_never_sends_two_requests(watched, server):
    tab = _instrumented(watched, server, camera=True)
    page = tab.page
    page.get_by_role("button", name="Start camera").click()
    page.locator("#video").wait_for()
    page.evaluate("() => { window.slowNetwork = 600; }")  # longer than the live interval
    live = page.get_by_role("button", name="Live")
    live.click()
    page.wait_for_function("() => window.inFlight === 1")
    # Off and on while the first loop's request is on its way.
    page.evaluate(
        "() => { const b = document.getElementById('camera-live'); b.click(); b.click(); }"
    )
    assert live.get_attribute("aria-pressed") == "true"
    before = tab.inference_calls()
    page.wait_for_function(
        f"() => performance.getEntriesByName('{server.url}/inference').length >= {before + 3}",
        timeout=30_000,
    )
    live.click()
    page.get_by_role("button", name="Stop camera").click()
    assert page.evaluate("window.mostInFlight") == 1
    tab.assert_clean()


@pytest.mark.e2e
def test_the_newest_photo_wins(watched, server, astronaut, tmp_path):
    """Two photos chosen one after the other, the first slower for the browser to decode (a
    large photo): the second one's answer stays on screen, whichever answer comes last."""
    first, second = tmp_path / "first.jpg", tmp_path / "second.png"
    first.write_bytes(encode(np.asarray(Image.fromarray(astronaut).resize((400, 400)))))
    second.write_bytes(encode(np.asarray(Image.fromarray(astronaut).resize((300, 300))), "PNG"))
    tab = _instrumented(watched, server, viewport={"width": 1280, "height": 800})
    page = tab.page
    page.evaluate("() => { window.decodeDelays = [800, 0]; }")
    picker = page.get_by_label("Choose a photo")
    picker.set_input_files(str(first))
    picker.set_input_files(str(second))
    page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('1 face found')"
    )
    page.wait_for_function("() => window.decodeDelays.length === 0")
    page.wait_for_timeout(2000)  # the first photo's decoding ends, and an answer would come
    assert page.locator("#canvas").evaluate("c => [c.width, c.height]") == [300, 300]
    assert page.locator("#status").inner_text().startswith("1 face found")
    # The first photo, overtaken while the browser decoded it, was not even sent.
    assert tab.inference_calls() == 1
    tab.assert_clean()


def _two_faces_webm(folder: Path, astronaut, name: str, top: tuple, bottom: tuple) -> Path:
    """2 s of two astronauts (the lower one mirrored) moving from each (start, end), as
    WebM/VP8 (which every Chromium plays)."""
    import videos

    actors = [
        videos.actor(astronaut, 200, *top),
        videos.actor(astronaut, 200, *bottom, mirrored=True),
    ]
    path = folder / name
    path.write_bytes(
        videos.encode_video(videos.scene(actors, 20), container="webm", codec="libvpx")
    )
    return path


@pytest.fixture(scope="module")
def crossing_webm(tmp_path_factory, astronaut) -> Path:
    """Two faces passing each other."""
    folder = tmp_path_factory.mktemp("web-video")
    return _two_faces_webm(
        folder, astronaut, "crossing.webm", ((0, 60), (440, 60)), ((440, 140), (0, 140))
    )


def _seek(page, seconds: float) -> None:
    page.evaluate(
        """(t) => new Promise((done) => {
            const player = document.getElementById("player");
            player.addEventListener("seeked", () => requestAnimationFrame(() => done()),
                                    { once: true });
            player.currentTime = t;
        })""",
        seconds,
    )


def _drawn_boxes(page) -> dict[int, list[float]]:
    """Each drawn box in the video's pixels, by track id."""
    player = page.locator("#player").bounding_box()
    width = page.locator("#player").evaluate("v => v.videoWidth")
    scale = width / player["width"]
    found = {}
    for box in page.locator("#video-boxes .box:not([hidden])").all():
        drawn = box.bounding_box()
        found[int(box.get_attribute("data-track"))] = [
            (drawn["x"] - player["x"]) * scale,
            (drawn["y"] - player["y"]) * scale,
            drawn["width"] * scale,
            drawn["height"] * scale,
        ]
    return found


def _drawn_points(page, track_id: int) -> dict[str, list[float]]:
    """The centres of a track's drawn landmark dots in the video's pixels, by name."""
    player = page.locator("#player").bounding_box()
    scale = page.locator("#player").evaluate("v => v.videoWidth") / player["width"]
    found = {}
    for dot in page.locator(f"#video-boxes .box[data-track='{track_id}'] .point").all():
        drawn = dot.bounding_box()
        found[dot.get_attribute("data-name")] = [
            (drawn["x"] + drawn["width"] / 2 - player["x"]) * scale,
            (drawn["y"] + drawn["height"] / 2 - player["y"]) * scale,
        ]
    return found


@pytest.mark.e2e
def test_video_boxes_follow_faces_and_timeline_is_drawn(watched, server, crossing_webm):
    tab = watched(viewport={"width": 1280, "height": 1000})
    page = tab.page
    page.goto(server.url + "/")
    with page.expect_response(lambda r: "/inference/video" in r.url) as answer:
        page.get_by_label("Choose a video").set_input_files(str(crossing_webm))
    assert answer.value.status == 200
    assert answer.value.headers["content-type"].startswith("application/x-ndjson")
    status = page.locator("#video-status")
    page.wait_for_function(
        "() => document.getElementById('video-status').textContent.includes('followed')"
    )
    assert status.inner_text().startswith("2 faces followed over 10 analysed frames")

    expected = requests.post(
        server.url + "/inference/video?fps=5", data=crossing_webm.read_bytes(), headers=RAW
    ).json()
    boxes = {
        (track["track_id"], face["frame"]): face
        for track in expected["tracks"]
        for face in track["frames"]
    }
    for seconds, frame in ((0.0, 0), (1.0, 10), (1.85, 18)):
        _seek(page, seconds)
        drawn = _drawn_boxes(page)
        assert sorted(drawn) == [1, 2], (seconds, drawn)
        for track_id, found in drawn.items():
            face = boxes[(track_id, frame)]
            wanted = [face["box"][k] for k in ("x", "y", "width", "height")]
            assert found == pytest.approx(wanted, abs=3), (seconds, track_id)
            label = page.locator(f"#video-boxes .box[data-track='{track_id}'] .tag").inner_text()
            assert label == f"{track_id}: {face['prediction']} {face['confidence'] * 100:.1f}%"
            # The face's points are dots where this frame's answer puts them.
            dots = _drawn_points(page, track_id)
            assert sorted(dots) == sorted(face["landmarks"]) and len(dots) == 5
            for name, seen in dots.items():
                point = face["landmarks"][name]
                assert seen == pytest.approx([point["x"], point["y"]], abs=3), (seconds, name)
    # The boxes moved with the faces between the first and the last frame.
    assert boxes[(1, 18)]["box"]["x"] != boxes[(1, 0)]["box"]["x"]

    # Selecting face 2 (its box) shows its timeline: caption, pressed state, drawn lines.
    page.locator("#video-boxes .box[data-track='2']").click()
    summary = expected["tracks"][1]["summary"]
    caption = page.locator("#timeline-caption").inner_text()
    assert caption.startswith(f"Face 2: mostly {summary['dominant_emotion']}")
    assert (
        page.get_by_role(
            "button", name=f"Face 2: {summary['dominant_emotion']}", exact=True
        ).get_attribute("aria-pressed")
        == "true"
    )
    assert page.get_by_role("img", name="Emotion timeline of face 2", exact=False).count() == 1
    pixels = np.asarray(
        Image.open(io.BytesIO(page.locator("#timeline").screenshot())).convert("RGB")
    )
    dominant = COLOURS_RGB[summary["dominant_emotion"]]
    near = np.abs(pixels.astype(int) - dominant).sum(axis=2) < 30
    assert near.sum() > 200  # the dominant emotion's line is drawn
    _screenshot(page, "video")
    tab.assert_clean()


@pytest.mark.e2e
def test_a_photo_answer_of_an_unknown_shape_is_said(watched, server, astronaut_file):
    """A 200 JSON answer that is not the server's (a proxy's, say): the page says it could
    not show it, instead of an exception with "Analysing..." left on the screen."""
    tab = watched()
    page = tab.page
    page.route(
        "**/inference",
        lambda route: route.fulfill(status=200, content_type="application/json", body="{}"),
    )
    page.goto(server.url + "/")
    page.get_by_label("Choose a photo").set_input_files(str(astronaut_file))
    alert = page.locator("#error")
    alert.wait_for()
    assert "could not be shown" in alert.inner_text()
    assert page.locator("#status").inner_text() == ""
    tab.assert_clean()


@pytest.mark.e2e
def test_video_error_is_shown_in_words(watched, server, tmp_path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is not a video\n")
    tab = watched()
    page = tab.page
    page.goto(server.url + "/")
    page.get_by_label("Choose a video").set_input_files(str(not_a_video))
    alert = page.locator("#video-error")
    alert.wait_for()
    text = alert.inner_text()
    assert "not a video we can read" in text and "invalid_video" in text and "400" in text
    # The player cannot play it either, but no note says its analysis is below: there is none.
    page.wait_for_function("document.getElementById('player').error !== null")
    assert page.locator("#video-note").is_hidden()
    tab.assert_clean(allowed="status of 400")


@pytest.fixture(scope="module")
def apart_webm(tmp_path_factory, astronaut) -> Path:
    """Two faces that never come close (both found in every frame)."""
    folder = tmp_path_factory.mktemp("web-video")
    return _two_faces_webm(
        folder, astronaut, "apart.webm", ((0, 20), (300, 20)), ((440, 270), (140, 270))
    )


@pytest.mark.e2e
def test_video_boxes_keep_focus_and_take_clicks_while_playing(watched, server, apart_webm):
    """Boxes over a playing video are moved, not made anew on each frame: the keyboard's focus
    stays on the box that Enter selects, and a click lands."""
    tab = watched(viewport={"width": 1280, "height": 1000})
    page = tab.page
    page.goto(server.url + "/")
    page.get_by_label("Choose a video").set_input_files(str(apart_webm))
    page.wait_for_function(
        "() => document.getElementById('video-status').textContent.includes('followed')"
    )
    page.evaluate("() => { const p = document.getElementById('player'); p.loop = true; p.play(); }")
    page.wait_for_function("() => document.getElementById('player').currentTime > 0.2")
    box = page.locator("#video-boxes .box[data-track='2']")
    box.focus()
    page.wait_for_timeout(300)  # frames go by
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.dataset.track") == "2"
    assert box.get_attribute("aria-pressed") == "true"
    assert page.locator("#timeline-caption").inner_text().startswith("Face 2: mostly")
    page.locator("#video-boxes .box[data-track='1']").click()
    assert page.locator("#timeline-caption").inner_text().startswith("Face 1: mostly")
    assert not page.evaluate("document.getElementById('player').paused")
    tab.assert_clean()


@pytest.mark.e2e
def test_files_dropped_anywhere_on_the_page(
    watched, server, astronaut_file, crossing_webm, tmp_path
):
    tab = watched(viewport={"width": 1280, "height": 1000})
    page = tab.page
    page.goto(server.url + "/")

    def drop(path: Path, mime: str, where: str) -> bool:
        """Drops the file on `where`; True where the page took it (the browser won't open it)."""
        return page.evaluate(
            """([bytes, name, type, where]) => {
                const data = new DataTransfer();
                data.items.add(new File([new Uint8Array(bytes)], name, { type }));
                const event = new DragEvent("drop", { dataTransfer: data, bubbles: true,
                                                      cancelable: true });
                document.querySelector(where).dispatchEvent(event);
                return event.defaultPrevented;
            }""",
            [list(path.read_bytes()), path.name, mime, where],
        )

    assert drop(astronaut_file, "image/jpeg", "header")
    page.locator("#boxes .box").wait_for()
    # A video the system gave no type (as some do for .mkv): its name says it is one.
    assert drop(crossing_webm, "", "#chart-title")
    page.wait_for_function(
        "() => document.getElementById('video-status').textContent.includes('followed')"
    )
    # A GIF of several frames is followed as a video; a GIF of one frame is a photo.
    picture = Image.open(astronaut_file).convert("RGB")
    still, moving = tmp_path / "still.gif", tmp_path / "moving.gif"
    picture.save(still)
    frames = [picture.rotate(angle) for angle in (0, 4, 8, 4)]
    frames[0].save(moving, save_all=True, append_images=frames[1:], duration=250, loop=0)
    page.evaluate("""() => {
        document.getElementById('boxes').replaceChildren();
        document.getElementById('video-status').textContent = '';
    }""")
    assert drop(still, "image/gif", "main")
    page.locator("#boxes .box").wait_for()
    assert page.locator("#video-status").inner_text() == ""
    assert drop(moving, "image/gif", "main")
    page.wait_for_function(
        "() => document.getElementById('video-status').textContent.includes('followed')"
    )
    notes = astronaut_file.with_name("notes.txt")
    notes.write_text("not a photo")
    assert drop(notes, "text/plain", "main")
    assert "Drop a photo" in page.locator("#error").inner_text()
    tab.assert_clean()


@pytest.mark.e2e
def test_video_answer_that_breaks_off_is_said(watched, server, crossing_webm):
    """A proxy or a dropped connection can end the stream before its summary line."""
    answer = requests.post(
        server.url + "/inference/video?fps=5",
        data=crossing_webm.read_bytes(),
        headers={**RAW, "Accept": "application/x-ndjson"},
        timeout=120,
    ).text
    first = answer.splitlines()[0] + "\n"
    tab = watched()
    page = tab.page
    page.route(
        "**/inference/video*",
        lambda route: route.fulfill(status=200, content_type="application/x-ndjson", body=first),
    )
    page.goto(server.url + "/")
    page.get_by_label("Choose a video").set_input_files(str(crossing_webm))
    alert = page.locator("#video-error")
    alert.wait_for()
    assert "ended before its summary" in alert.inner_text()
    # Not "Analysing..." for ever: the page says it stopped, and where.
    assert page.locator("#video-status").inner_text() == "Stopped after 1 analysed frame."
    tab.assert_clean()


COLOURS_RGB = {
    "angry": (0xC1, 0x12, 0x1F),
    "disgust": (0x4F, 0x77, 0x2D),
    "fear": (0x6A, 0x4C, 0x93),
    "happy": (0xB3, 0x5C, 0x00),
    "sad": (0x1D, 0x5F, 0x8A),
    "surprise": (0xB8, 0x33, 0x6A),
    "neutral": (0x49, 0x58, 0x67),
}


@pytest.mark.e2e
def test_docs_page_renders_offline(watched, server):
    tab = watched(viewport={"width": 1280, "height": 900})
    page = tab.page
    page.goto(server.url + "/docs")
    operations = page.locator(".opblock")
    operations.nth(7).wait_for()
    assert operations.count() == 8
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert sorted(s.strip() for s in summaries) == [
        "/",
        "/healthz",
        "/inference",
        "/inference/batch",
        "/inference/video",
        "/metrics",
        "/readyz",
        "/summary",
    ]
    _screenshot(page, "docs")
    tab.assert_clean()


@pytest.fixture(scope="module")
def keyed_server():
    running = GunicornServer(env={"EMOTION_API_KEYS": PAGE_KEY})
    yield running
    running.stop()


PAGE_KEY = "page-key-0123456789"


@pytest.mark.e2e
def test_a_server_with_api_keys_asks_the_page_for_one(browser, keyed_server, astronaut_file):
    """The page itself is open; its API calls answer 401 until the user gives a key, which
    the tab keeps and sends."""
    tab = Watched(browser, keyed_server)
    try:
        page = tab.page
        page.goto(keyed_server.url + "/")
        form = page.locator("#key-form")
        assert form.is_hidden()
        picker = page.get_by_label("Choose a photo")
        picker.set_input_files(str(astronaut_file))
        page.get_by_role("alert").wait_for()
        assert "unauthorized" in page.get_by_role("alert").inner_text()
        assert form.is_visible()
        field = page.get_by_label("This server needs an API key")
        assert field.evaluate("input => input === document.activeElement")
        # A character no HTTP header may carry is refused here (fetch would throw on it).
        field.fill("cl\u00e9")
        page.get_by_role("button", name="Use key").click()
        assert form.is_visible() and "ASCII" in field.evaluate("input => input.validationMessage")
        field.fill(PAGE_KEY)
        page.get_by_role("button", name="Use key").click()
        assert form.is_hidden() and page.get_by_role("alert").is_hidden()
        assert page.evaluate("document.activeElement.id") == "file"
        with page.expect_request(keyed_server.url + "/inference") as sent:
            picker.set_input_files(str(astronaut_file))
        assert sent.value.headers["x-api-key"] == PAGE_KEY
        page.locator("#boxes .box").wait_for()
        assert page.evaluate("Object.keys(localStorage).length") == 0  # this tab only
        tab.assert_clean(allowed="status of 401")
    finally:
        tab.close()
