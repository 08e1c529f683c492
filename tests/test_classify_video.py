"""`emotion-server classify` on videos: per-frame rows, a progress bar over frames, a PNG
timeline per track; the video made here with PyAV."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import videos
from conftest import BUNDLED_MODEL, encode
from PIL import Image, ImageColor
from test_classify import _run

from emotion_server.classify import RowWriter, classify_files
from emotion_server.classify_video import VideoOptions, plot_name
from emotion_server.config import Settings
from emotion_server.contract import EMOTIONS
from emotion_server.pipeline import Pipeline
from emotion_server.timeline_plot import COLORS


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, astronaut):
    """clip.mp4 (two faces crossing, 2 s at 10 fps), astronaut.jpg, broken.webm (text)."""
    root = tmp_path_factory.mktemp("media")
    top = videos.actor(astronaut, 200, (0, 60), (440, 60))
    bottom = videos.actor(astronaut, 200, (440, 140), (0, 140), mirrored=True)
    (root / "clip.mp4").write_bytes(videos.encode_video(videos.scene([top, bottom], 20)))
    (root / "astronaut.jpg").write_bytes(encode(astronaut))
    (root / "broken.webm").write_text("not a video\n")
    return root


def test_classify_video_rows_and_plots(folder, tmp_path, pipeline):
    output, plots = tmp_path / "out.jsonl", tmp_path / "plots"
    done = _run(
        str(folder),
        "--format",
        "jsonl",
        "--output",
        str(output),
        "--fps",
        "5",
        "--plots",
        str(plots),
    )
    assert done.returncode == 1, done.stderr  # broken.webm
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(row["file"].rsplit("/", 1)[-1], []).append(row)
    assert list(by_file) == ["astronaut.jpg", "broken.webm", "clip.mp4"]
    assert by_file["astronaut.jpg"][0]["frame"] is None  # images keep their rows
    (broken,) = by_file["broken.webm"]
    assert broken["error"] == "invalid_video" and broken["message"]

    clip = by_file["clip.mp4"]
    assert [row["frame"] for row in clip] == [f for f in range(0, 20, 2) for _ in (1, 2)]
    assert {row["track"] for row in clip} == {1, 2}
    # Each frame's rows are what the pipeline gives for that decoded picture.
    decoded = videos.decode_frames((folder / "clip.mp4").read_bytes())
    for index in (0, 10, 18):
        expected = pipeline.analyze(encode(decoded[index], "PNG"))
        got = [row for row in clip if row["frame"] == index]
        assert [row["box"] for row in got] == [
            {"x": f.box.x, "y": f.box.y, "width": f.box.width, "height": f.box.height}
            for f in expected.faces
        ]
        for row, face in zip(got, expected.faces, strict=True):
            assert row["probabilities"] == pytest.approx(
                face.classification.probabilities, abs=1e-5
            )
    # The same person keeps the same track: track 1's box moves one way only.
    for track in (1, 2):
        xs = [row["box"]["x"] for row in clip if row["track"] == track]
        assert len(xs) == 10 and (xs == sorted(xs) or xs == sorted(xs, reverse=True))

    assert "videos: 2, sampled frames: 10, timeline plots: 2" in done.stderr
    for track in (1, 2):
        png = plots / plot_name(folder / "clip.mp4", track)
        picture = np.asarray(Image.open(png).convert("RGB"))
        assert picture.shape == (400, 960, 3)
        colours = {tuple(c) for c in picture.reshape(-1, 3)}
        for emotion in EMOTIONS:  # every emotion's line (or its legend) is drawn
            assert ImageColor.getrgb(COLORS[emotion]) in colours, emotion
        # The track's strongest emotion is a line across the plot area (x 64-810, y 48-348
        # for p 1-0; the legend is right of it), at the height of its mean probability.
        mean = {
            e: np.mean([r["probabilities"][e] for r in clip if r["track"] == track])
            for e in EMOTIONS
        }
        strongest = max(mean, key=mean.get)
        rgb = ImageColor.getrgb(COLORS[strongest])
        ys, xs = np.nonzero((picture[:, :810] == rgb).all(-1))
        assert len(ys) > 300 and xs.min() < 100 and xs.max() > 770, strongest
        assert (348 - ys.mean()) / 300 == pytest.approx(mean[strongest], abs=0.1), strongest


def test_csv_has_the_video_columns(folder, tmp_path):
    output = tmp_path / "out.csv"
    done = _run(str(folder / "clip.mp4"), "--output", str(output), "--fps", "1")
    assert done.returncode == 0, done.stderr
    header, first, *_ = output.read_text().splitlines()
    assert header.split(",")[:5] == ["file", "frame", "time", "track", "face"]
    assert first.split(",")[1:5] == ["0", "0.0", "1", "1"]


def test_progress_bar_counts_frames(folder, pipeline, capsys):
    stream = io.StringIO()
    options = VideoOptions(fps=5)
    summary = classify_files(
        pipeline, [folder / "clip.mp4"], RowWriter(stream, "jsonl"), progress=True, video=options
    )
    assert summary.frames == 10 and summary.faces == 20
    bars = capsys.readouterr().err
    assert "10/10" in bars and "frame" in bars


def test_an_interrupt_stops_a_video_after_the_frame_in_hand(folder, pipeline):
    stream = io.StringIO()
    frames = []

    def interrupted() -> bool:  # asked before the video, then after each frame's rows
        frames.append(1)
        return len(frames) == 3  # after the second frame

    with pytest.raises(KeyboardInterrupt):
        classify_files(
            pipeline,
            [folder / "clip.mp4", folder / "astronaut.jpg"],
            RowWriter(stream, "jsonl"),
            video=VideoOptions(fps=5),
            interrupted=interrupted,
        )
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len({row["frame"] for row in rows}) == 2 and len(rows) == 4  # two faces a frame
    assert {row["file"] for row in rows} == {str(folder / "clip.mp4")}


def test_bad_fps_is_refused_before_loading(folder):
    done = _run(str(folder / "clip.mp4"), "--fps", "0")
    assert done.returncode == 2 and "fps" in done.stderr


def test_plot_names_stay_apart_for_videos_of_one_name(tmp_path):
    stems: dict = {}
    first, second = tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"
    assert plot_name(first, 1, stems) == "clip.mp4.track1.png"
    assert plot_name(first, 2, stems) == "clip.mp4.track2.png"  # the same video
    assert plot_name(second, 1, stems) == "clip.mp4-2.track1.png"
    # Names that differ only in characters replaced by the same "_" are told apart too.
    assert plot_name(tmp_path / "caf\u00e9.mp4", 1, stems) == "caf_.mp4.track1.png"
    assert plot_name(tmp_path / "caf\u00e8.mp4", 1, stems) == "caf_.mp4-2.track1.png"
    assert plot_name(first, 3, stems) == "clip.mp4.track3.png"


class _FaultAfterTwoFrames(Pipeline):
    """The real pipeline with a fault of ours planted: the third video frame it analyses
    raises, as a bug would (photos are not counted)."""

    frames = 0

    def analyze_image(self, image):
        if image.width == 640:  # the clip's frames; the astronaut is 512 wide
            self.frames += 1
            if self.frames == 3:
                raise ZeroDivisionError("planted fault")
        return super().analyze_image(image)


def test_a_fault_of_ours_in_a_video_keeps_its_rows_and_goes_on(folder, capsys):
    pipeline = _FaultAfterTwoFrames.from_settings(Settings(model_path=str(BUNDLED_MODEL)))
    stream = io.StringIO()
    paths = [folder / "clip.mp4", folder / "astronaut.jpg"]
    summary = classify_files(pipeline, paths, RowWriter(stream, "jsonl"), video=VideoOptions(fps=5))
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    clip = [row for row in rows if row["file"] == str(paths[0])]
    assert [row["frame"] for row in clip[:4]] == [0, 0, 2, 2]  # two faces in each of two frames
    assert all(row["error"] is None for row in clip[:4])
    assert len(clip) == 5 and clip[4]["error"] == "internal_error"
    assert "ZeroDivisionError: planted fault" in clip[4]["message"]
    photo = [row for row in rows if row["file"] == str(paths[1])]
    assert len(photo) == 1 and photo[0]["error"] is None and photo[0]["emotion"]
    assert summary.errors == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_plot_of_enormous_timestamps_ends(tmp_path):
    """A crafted file's timestamps can be 1e15 s and more, where adding the axis's 0.2 s step to
    a tick no longer changes it: the chart is still drawn, in bounded time."""
    import threading

    from emotion_server.timeline_plot import draw_timeline

    flat = dict.fromkeys(EMOTIONS, 1 / len(EMOTIONS))
    path = tmp_path / "far.png"
    drawing = threading.Thread(
        target=draw_timeline, args=([3e15, 3e15 + 0.5], [flat, flat], "far", path), daemon=True
    )
    drawing.start()
    drawing.join(30)
    assert not drawing.is_alive() and path.stat().st_size > 0
    # One sample so far out that a second added to it is lost in rounding: still drawn.
    draw_timeline([1e16], [flat], "farther", tmp_path / "farther.png")
    assert (tmp_path / "farther.png").stat().st_size > 0
