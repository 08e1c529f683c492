"""POST /inference/video end to end: videos made here with PyAV, gunicorn on a loopback port,
the real model, detector and decoder."""

from __future__ import annotations

import io
import json
import time

import av
import numpy as np
import pytest
import requests
import videos
from conftest import BUNDLED_MODEL, GunicornServer, encode, metric_value, parse_metrics
from PIL import Image

from emotion_server.api import create_app
from emotion_server.config import Settings
from emotion_server.contract import EMOTIONS
from emotion_server.pipeline import Pipeline

pytestmark = pytest.mark.e2e
RAW = {"Content-Type": "application/octet-stream"}
URL = "/inference/video"


@pytest.fixture(scope="module")
def crossing(astronaut):
    """2 s at 10 fps, 640x480: the astronaut walks right along the top while a mirrored one
    walks left below; their faces pass each other in the middle."""
    top = videos.actor(astronaut, 200, (0, 60), (440, 60))
    bottom = videos.actor(astronaut, 200, (440, 140), (0, 140), mirrored=True)
    frames = videos.scene([top, bottom], 20)
    return videos.encode_video(frames), (top, bottom)


@pytest.fixture(scope="module")
def walking(astronaut):
    """1 s at 10 fps: one face walking right."""
    return videos.scene([videos.actor(astronaut, 240, (0, 100), (400, 100))], 10)


def _post(server, data, params=None, headers=RAW, **kwargs):
    return requests.post(
        server.url + URL, data=data, params=params, headers=headers, timeout=120, **kwargs
    )


def _centre(box):
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_two_crossing_faces_keep_their_tracks_and_boxes_follow(server, crossing):
    data, actors = crossing
    response = _post(server, data, {"fps": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["video"] == {
        "container": "mp4",
        "codec": "h264",
        "width": 640,
        "height": 480,
        "frame_rate": 10.0,
        "duration": 2.0,
        "rotation": 0,
    }
    assert body["sampling"] == {"fps": 10.0, "smoothing": 0.0, "frames_analysed": 20}
    assert [track["track_id"] for track in body["tracks"]] == [1, 2]
    followed = set()
    for track in body["tracks"]:
        frames = track["frames"]
        assert [f["frame"] for f in frames] == list(range(20))  # seen in every frame
        assert [f["time"] for f in frames] == pytest.approx([i / 10 for i in range(20)])
        # The track's box stays on one actor's face from the first frame to the last.
        first = _centre(frames[0]["box"])
        actor = min(actors, key=lambda a: np.hypot(*np.subtract(a.face_centre(0), first)))
        followed.add(id(actor))
        for f in frames:
            expected = actor.face_centre(f["frame"] / 19)
            assert np.hypot(*np.subtract(_centre(f["box"]), expected)) < 15, (track, f)
        summary = track["summary"]
        assert summary["frames"] == 20 and summary["first_seen"] == 0 and summary["last_seen"] > 1.8
        assert sum(summary["time_share"].values()) == pytest.approx(1)
        assert summary["mean_probabilities"] == pytest.approx(
            {e: np.mean([f["probabilities"][e] for f in frames]) for e in EMOTIONS}, abs=1e-5
        )
        counts = {e: sum(f["prediction"] == e for f in frames) / 20 for e in EMOTIONS}
        assert summary["time_share"] == pytest.approx(counts)
        assert summary["dominant_emotion"] == max(counts, key=counts.get)
    assert len(followed) == 2  # one track per person


def test_each_frame_equals_inference_on_that_frame(server, crossing):
    """A sampled frame's faces get what POST /inference gives for the same decoded picture."""
    data, _ = crossing
    body = _post(server, data, {"fps": 2}).json()
    decoded = videos.decode_frames(data)
    by_frame: dict[int, list[dict]] = {}
    for track in body["tracks"]:
        for face in track["frames"]:
            by_frame.setdefault(face["frame"], []).append(face)
    assert sorted(by_frame) == [0, 5, 10, 15]  # 2 per second of a 10 fps video
    for index, faces in by_frame.items():
        png = encode(decoded[index], "PNG")
        expected = requests.post(server.url + "/inference", data=png, headers=RAW, timeout=30)
        expected_faces = {json.dumps(f["box"]): f for f in expected.json()["faces"]}
        assert len(expected_faces) == len(faces) == 2
        for face in faces:
            wanted = expected_faces[json.dumps(face["box"])]
            assert face["prediction"] == wanted["prediction"]
            assert face["probabilities"] == pytest.approx(wanted["probabilities"], abs=1e-5)
            assert face["score"] == pytest.approx(wanted["score"], abs=1e-4)
            assert face["roll"] == pytest.approx(wanted["roll"], abs=0.15)
            assert face["landmarks"] == wanted["landmarks"]


def test_a_large_frame_gets_what_inference_gives_for_that_picture(server, astronaut):
    """A 1920x1080 frame is reduced for the analysis as a photo of that size is, so its faces,
    boxes (in the frame's pixels) and probabilities are those of POST /inference on it."""
    person = videos.actor(astronaut, 600, (0, 0), (0, 0))
    frames = []
    for x in (300, 900):
        canvas = np.full((1080, 1920, 3), 96, np.uint8)
        canvas[200:800, x : x + 600] = person.picture
        frames.append(canvas)
    data = videos.encode_video(frames, fps=1)
    body = _post(server, data, {"fps": 1}).json()
    assert body["video"]["width"] == 1920 and body["video"]["height"] == 1080
    faces = {face["frame"]: face for track in body["tracks"] for face in track["frames"]}
    assert sorted(faces) == [0, 1]
    for index, picture in enumerate(videos.decode_frames(data)):
        answer = requests.post(
            server.url + "/inference", data=encode(picture, "PNG"), headers=RAW, timeout=30
        ).json()
        assert answer["image"] == {"width": 1920, "height": 1080}
        (expected,) = answer["faces"]
        assert faces[index]["box"] == expected["box"]
        assert faces[index]["box"]["x"] > (300 if index == 0 else 900)  # full-frame pixels
        assert faces[index]["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def test_ndjson_streams_one_line_per_frame_then_the_summary(server, crossing):
    data, _ = crossing
    whole = _post(server, data, {"fps": 5}).json()
    headers = {**RAW, "Accept": "application/x-ndjson"}
    response = _post(server, data, {"fps": 5}, headers=headers, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.iter_lines() if line]
    *frames, summary = lines
    assert [line["type"] for line in frames] == ["frame"] * 10
    assert [line["frame"] for line in frames] == list(range(0, 20, 2))
    assert summary["type"] == "summary"
    assert summary["video"] == whole["video"] and summary["sampling"] == whole["sampling"]
    assert summary["tracks"] == [track["summary"] for track in whole["tracks"]]
    # The same faces, frame by frame, as the JSON document's tracks.
    for track in whole["tracks"]:
        streamed = [
            {k: v for k, v in face.items() if k != "track_id"} | {"frame": line["frame"]}
            for line in frames
            for face in line["faces"]
            if face["track_id"] == track["track_id"]
        ]
        assert streamed == [{k: v for k, v in f.items() if k != "time"} for f in track["frames"]]


@pytest.mark.parametrize(
    ("container", "codec", "pix_fmt"),
    [
        ("webm", "libvpx", "yuv420p"),
        ("webm", "libvpx-vp9", "yuv420p"),
        ("mov", "libx264", "yuv420p"),
        ("avi", "mjpeg", "yuvj420p"),
        ("gif", "gif", "rgb8"),
    ],
)
def test_containers_and_codecs_as_multipart(server, walking, container, codec, pix_fmt):
    data = videos.encode_video(walking, container=container, codec=codec, pix_fmt=pix_fmt)
    files = {"video": (f"clip.{container}", data, "application/octet-stream")}
    response = requests.post(server.url + URL, files=files, params={"fps": 10}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sampling"]["frames_analysed"] == 10
    (track,) = body["tracks"]
    assert len(track["frames"]) >= 9  # the GIF's 256 colours may hide a face once
    xs = [_centre(f["box"])[0] for f in track["frames"]]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 300  # the box walks right with the face


def test_smoothing_averages_each_track_over_time(server, crossing):
    data, _ = crossing
    raw = _post(server, data, {"fps": 10}).json()
    smooth = _post(server, data, {"fps": 10, "smoothing": "0.9"}).json()
    assert smooth["sampling"]["smoothing"] == 0.9
    for plain, smoothed in zip(raw["tracks"], smooth["tracks"], strict=True):
        first_raw, first_smooth = plain["frames"][0], smoothed["frames"][0]
        assert first_smooth["probabilities"] == first_raw["probabilities"]  # nothing before it
        state = np.array([first_raw["probabilities"][e] for e in EMOTIONS])
        for a, b in zip(plain["frames"][1:], smoothed["frames"][1:], strict=True):
            state = 0.9 * state + 0.1 * np.array([a["probabilities"][e] for e in EMOTIONS])
            assert [b["probabilities"][e] for e in EMOTIONS] == pytest.approx(state, abs=2e-5)


BAD_VIDEOS = {
    "empty": (lambda c: b"", RAW, 400, "empty_body"),
    "text": (lambda c: b"just some text\n" * 50, RAW, 400, "invalid_video"),
    "truncated_mp4": (lambda c: c[: len(c) // 2], RAW, 400, "corrupt_video"),
    "audio_only": (lambda c: videos.audio_only(), RAW, 400, "no_video_stream"),
    "zero_frames": (lambda c: videos.zero_frames(), RAW, 400, "empty_video"),
    "photo": (
        lambda c: encode(np.full((64, 64, 3), 90, np.uint8)),
        RAW,
        415,
        "unsupported_video_format",
    ),
    "ffv1_codec": (
        lambda c: videos.encode_video(
            [np.zeros((32, 32, 3), np.uint8)] * 2, container="matroska", codec="ffv1"
        ),
        RAW,
        415,
        "unsupported_video_codec",
    ),
    "json": (lambda c: b"{}", {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("name", list(BAD_VIDEOS))
def test_bad_video_gets_json_error_and_server_keeps_serving(server, crossing, name):
    make, headers, status, code = BAD_VIDEOS[name]
    data, _ = crossing
    response = _post(server, make(data), headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["message"]
    assert _post(server, data, {"fps": 1}).status_code == 200


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"fps": "0"}, "fps"),
        ({"fps": "100"}, "fps"),
        ({"fps": "fast"}, "fps"),
        ({"smoothing": "1"}, "smoothing"),
        ({"fps": "nan"}, "fps"),
    ],
)
def test_bad_parameters(server, crossing, params, fragment):
    response = _post(server, crossing[0], params)
    assert response.status_code == 400
    assert (
        response.json()["error"] == "invalid_parameter" and fragment in response.json()["message"]
    )


def test_multipart_without_the_video_field(server, crossing):
    files = {"image": ("clip.mp4", crossing[0], "video/mp4")}
    response = requests.post(server.url + URL, files=files, timeout=60)
    assert response.status_code == 400 and response.json()["error"] == "missing_file"


@pytest.fixture(scope="module")
def limited_server():
    running = GunicornServer(
        env={"EMOTION_VIDEO_MAX_SECONDS": "1.5", "EMOTION_VIDEO_MAX_BYTES": "30000"}
    )
    yield running
    running.stop()


def test_limits_of_length_and_size(limited_server, walking):
    short = videos.encode_video(walking)  # 1 s
    too_long = videos.encode_video([frame[::4, ::4] for frame in walking * 2])  # 2 s, 160x120
    assert len(short) < 30_000 and len(too_long) < 30_000
    assert _post(limited_server, short).status_code == 200
    response = _post(limited_server, too_long)
    assert response.status_code == 413 and response.json()["error"] == "video_too_long"
    assert "1.5 s" in response.json()["message"]
    big = short + bytes(30_001 - len(short))
    response = _post(limited_server, big)
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
    files = {"video": ("big.mp4", big, "video/mp4")}
    response = requests.post(limited_server.url + URL, files=files, timeout=60)
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
    assert _post(limited_server, short).status_code == 200  # still serving


def test_stream_that_runs_out_of_time_ends_with_an_error_line(crossing):
    """Past its share of the worker timeout a video stops; streamed, the status was already 200,
    so the last line says why."""
    # Each frame's analysis made 0.1 s longer than it is, so 20 frames are well past the 0.8 s
    # share on any CPU, however fast (a frame's real work alone once took 25-45 ms).

    class SlowPipeline(Pipeline):
        def analyze_image(self, image):
            time.sleep(0.1)
            return super().analyze_image(image)

    settings = {"model_path": str(BUNDLED_MODEL), "timeout": 1}
    slow = SlowPipeline.from_settings(Settings(**settings))
    app = create_app(settings, pipeline=slow)
    data = crossing[0]
    before = parse_metrics(app.test_client().get("/metrics").get_data(as_text=True))
    response = app.test_client().post(
        URL + "?fps=10", data=data, headers={**RAW, "Accept": "application/x-ndjson"}
    )
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert lines[0]["type"] == "frame" and 1 <= len(lines) < 20
    assert lines[-1]["type"] == "error" and lines[-1]["error"] == "video_too_long"
    response.close()  # what a WSGI server does once the last byte is sent
    after = parse_metrics(app.test_client().get("/metrics").get_data(as_text=True))

    def change(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    # The error line is counted by its code, and the request timed to its end: it ran past
    # its 0.8 s share of the 1 s timeout, where its first frame came much sooner.
    assert change("emotion_http_errors_total", endpoint=URL, code="video_too_long") == 1
    timed = {"endpoint": URL, "method": "POST"}
    assert change("emotion_http_request_duration_seconds_count", **timed) == 1
    assert change("emotion_http_request_duration_seconds_sum", **timed) >= 0.8
    plain = app.test_client().post(URL + "?fps=10", data=data, headers=RAW)
    assert plain.status_code == 413 and plain.get_json()["error"] == "video_too_long"


def test_a_video_as_small_as_a_face_crop_is_one_face(server, astronaut):
    """As with photos, a video of at most 96x96 pixels is taken as one face filling the frame."""
    face = astronaut[40:200, 145:305]  # the face, square
    small = np.asarray(Image.fromarray(face).resize((80, 80)))
    data = videos.encode_video([small] * 5, fps=5)
    response = _post(server, data, {"fps": 5}, headers={"Content-Type": "video/mp4"})
    assert response.status_code == 200, response.text
    (track,) = response.json()["tracks"]
    assert len(track["frames"]) == 5
    for frame in track["frames"]:
        assert frame["box"] == {"x": 0, "y": 0, "width": 80, "height": 80}
    whole = requests.post(
        server.url + "/inference",
        data=encode(videos.decode_frames(data)[0], "PNG"),
        headers=RAW,
        timeout=30,
    ).json()
    assert whole["whole_image_reason"] == "image_is_face_crop"
    assert track["frames"][0]["probabilities"] == pytest.approx(whole["probabilities"], abs=1e-5)


def test_multipart_upload_streamed_to_the_end(server):
    """Werkzeug closes a multipart upload when the view returns, before a streamed answer has
    read past its first frame: the video must still be read to its summary."""
    rng = np.random.default_rng(0)
    # Noise does not compress: 1 MB and more, read by the decoder long after the first frame.
    frames = [rng.integers(0, 256, (240, 320, 3), np.uint8) for _ in range(30)]
    data = videos.encode_video(frames, fps=10, options={"preset": "ultrafast"})
    assert len(data) > 1_000_000
    response = requests.post(
        server.url + URL + "?fps=2",
        files={"video": ("noise.mp4", data, "video/mp4")},
        headers={"Accept": "application/x-ndjson"},
        timeout=120,
    )
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["type"] for line in lines] == ["frame"] * 6 + ["summary"], lines[-1]
    assert [line["time"] for line in lines[:-1]] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_video_to_be_turned_is_analysed_upright(server, astronaut, rotation):
    """A phone's portrait video: frames stored sideways, with a display matrix that turns them.
    Faces are found and classified in the upright picture, and boxes are in its pixels."""
    upright = np.full((400, 300, 3), 96, np.uint8)  # portrait: 300 wide, 400 tall
    face = np.asarray(Image.fromarray(astronaut).resize((240, 240)))
    upright[100:340, 30:270] = face
    turns = {90: -1, -90: 1, 180: 2}[rotation]  # stored = upright turned the other way
    stored = np.ascontiguousarray(np.rot90(upright, k=turns))
    data = videos.encode_video([stored] * 4, fps=4, rotation=rotation)
    response = _post(server, data, {"fps": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["video"]["rotation"] == rotation
    assert (body["video"]["width"], body["video"]["height"]) == (300, 400)
    (track,) = body["tracks"]
    x1, y1, x2, y2 = (v * 240 / 512 for v in videos.FACE)
    expected = (30 + (x1 + x2) / 2, 100 + (y1 + y2) / 2)
    photo = requests.post(
        server.url + "/inference", data=encode(upright, "PNG"), headers=RAW, timeout=60
    ).json()
    assert [frame["time"] for frame in track["frames"]] == [0.0, 0.25, 0.5, 0.75]
    for frame in track["frames"]:
        centre = _centre(frame["box"])
        assert abs(centre[0] - expected[0]) < 25 and abs(centre[1] - expected[1]) < 25, centre
        # The decoded frame is the upright picture, so /inference on it answers the same
        # (up to the video codec's loss).
        assert frame["prediction"] == photo["prediction"]


def test_low_fps_keeps_one_track_for_a_still_face(server, astronaut):
    """At fps 0.5 the sampled frames are 2 s apart, more than the tracker's usual 1.5 s gap."""
    still = videos.scene([videos.actor(astronaut, 240, (200, 100), (200, 100))], 1)[0]
    data = videos.encode_video([still] * 14, fps=2)  # 7 s
    response = _post(server, data, {"fps": 0.5})
    assert response.status_code == 200, response.text
    (track,) = response.json()["tracks"]
    assert [frame["time"] for frame in track["frames"]] == [0.0, 2.0, 4.0, 6.0]


def test_tags_that_are_not_utf8_do_not_fail_the_video(server, walking):
    """A Latin-1 title (old cameras, some editors) is no reason to refuse the pictures."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska", metadata_encoding="latin-1") as output:
        output.metadata["title"] = "caf\u00e9 \u00e0 Montr\u00e9al"
        stream = output.add_stream("mjpeg", rate=10)
        stream.height, stream.width = walking[0].shape[:2]
        stream.pix_fmt = "yuvj420p"
        for rgb in walking[:3]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    response = _post(server, buffer.getvalue(), {"fps": 10})
    assert response.status_code == 200, response.text
    assert len(response.json()["tracks"][0]["frames"]) == 3


def test_no_room_for_an_upload_is_507_and_the_server_serves_on(cramped_server, walking):
    short = videos.encode_video(walking)
    big = short + bytes(9_000_000)  # past the 8 MB held in memory: spooled to TMPDIR
    response = _post(cramped_server, big)
    assert response.status_code == 507, response.text
    assert response.json()["error"] == "insufficient_storage"
    files = {"video": ("big.mp4", short + bytes(2_000_000), "video/mp4")}
    response = requests.post(cramped_server.url + URL, files=files, timeout=60)
    assert response.status_code == 507, response.text  # Werkzeug's own spooling
    assert _post(cramped_server, short).status_code == 200
