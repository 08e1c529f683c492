"""`emotion-server classify`: a folder of real images -> CSV or JSON lines, as a user runs it."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BUNDLED_MODEL, ROOT, encode

from emotion_server.classify import CSV_COLUMNS, RowWriter, classify_files, find_images, interrupts
from emotion_server.config import Settings
from emotion_server.contract import EMOTIONS
from emotion_server.pipeline import Pipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory, astronaut):
    """astronaut.jpg (a face), crop.png (48x48), nested/deeper/astronaut.png, notes.jpg (text)."""
    root = tmp_path_factory.mktemp("photos")
    gray = np.asarray(np.dot(astronaut[..., :3], [0.299, 0.587, 0.114]), np.uint8)
    (root / "astronaut.jpg").write_bytes(encode(astronaut, "JPEG"))
    (root / "crop.png").write_bytes(encode(gray[60:108, 200:248], "PNG"))
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "astronaut.png").write_bytes(encode(astronaut, "PNG"))
    (root / "notes.jpg").write_text("not a picture\n")
    (root / "readme.txt").write_text("skipped: not an image suffix\n")
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter, which must not import Keras, TensorFlow or PyTorch."""
    code = (
        "import sys; from emotion_server.cli import main; code = main(sys.argv[1:]); "
        "heavy = [m for m in ('keras', 'tensorflow', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy; sys.exit(code)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "classify", "--model", str(BUNDLED_MODEL), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_find_images_walks_folders(folder):
    names = [p.relative_to(folder).as_posix() for p in find_images([folder])]
    assert names == ["astronaut.jpg", "crop.png", "nested/deeper/astronaut.png", "notes.jpg"]
    assert find_images([folder / "readme.txt"]) == [folder / "readme.txt"]  # named: tried


def _expected(path):
    pipeline = Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL)))
    return pipeline.analyze(path.read_bytes())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_classify_folder(folder, tmp_path, fmt):
    output = tmp_path / f"out.{fmt}"
    missing = tmp_path / "missing.jpg"
    done = _run(str(folder), str(missing), "--format", fmt, "--output", str(output))
    assert done.returncode == 1, done.stderr  # two files could not be classified

    text = output.read_text()
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    else:
        rows = [json.loads(line) for line in text.splitlines()]
    by_file = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    assert list(by_file) == [
        str(folder / "astronaut.jpg"),
        str(folder / "crop.png"),
        str(folder / "nested" / "deeper" / "astronaut.png"),
        str(folder / "notes.jpg"),
        str(missing),
    ]

    def value(row, name):
        """A row's field as JSON would have it (CSV has strings, '' for none)."""
        if fmt == "jsonl":
            if name in ("x", "y", "width", "height"):
                return row["box"][name] if row["box"] else None
            if name.startswith("p_"):
                return row["probabilities"][name[2:]] if row["probabilities"] else None
            return row[name]
        raw = row[name]
        if raw == "":
            return None
        if raw in ("True", "False"):
            return raw == "True"
        try:
            return float(raw) if "." in raw else int(raw)
        except ValueError:
            return raw

    # One face: its box, emotion and probabilities as the pipeline gives them.
    for name in ("astronaut.jpg", "nested/deeper/astronaut.png"):
        (face_row,) = by_file[str(folder / name)]
        expected = _expected(folder / name)
        (face,) = expected.faces
        assert value(face_row, "face") == 1 and value(face_row, "face_detected") is True
        assert [value(face_row, k) for k in ("x", "y", "width", "height")] == [
            face.box.x,
            face.box.y,
            face.box.width,
            face.box.height,
        ]
        assert value(face_row, "emotion") == face.classification.prediction
        assert value(face_row, "roll") == pytest.approx(face.box.roll, abs=0.051)
        if fmt == "jsonl":
            assert list(face_row["landmarks"]) == [p.name for p in face.box.landmarks]
            assert [(p["x"], p["y"]) for p in face_row["landmarks"].values()] == [
                pytest.approx((p.x, p.y), abs=0.051) for p in face.box.landmarks
            ]
        for emotion in EMOTIONS:
            assert value(face_row, f"p_{emotion}") == pytest.approx(
                face.classification.probabilities[emotion], abs=1e-5
            )

    # No face: one row for the whole image, no box, and why.
    (crop_row,) = by_file[str(folder / "crop.png")]
    assert value(crop_row, "face") is None and value(crop_row, "x") is None
    assert value(crop_row, "face_detected") is False
    assert value(crop_row, "whole_image_reason") == "image_is_face_crop"
    assert value(crop_row, "emotion") == _expected(folder / "crop.png").classification.prediction

    # Errors are rows too, and the run went on.
    (bad_row,) = by_file[str(folder / "notes.jpg")]
    assert value(bad_row, "error") == "invalid_image" and value(bad_row, "message")
    assert value(bad_row, "emotion") is None
    (missing_row,) = by_file[str(missing)]
    assert value(missing_row, "error") == "unreadable_file"

    summary = done.stderr
    assert "files: 5 (2 with errors), faces: 2, images without a face: 1" in summary
    assert "emotions: " in summary and "images/s" in summary
    counts = dict(
        part.rsplit(" ", 1) for part in summary.split("emotions: ")[1].splitlines()[0].split(", ")
    )
    assert set(counts) == set(EMOTIONS) and sum(map(int, counts.values())) == 3


def test_classify_writes_to_stdout_in_small_batches(folder):
    paths = [folder / "astronaut.jpg", folder / "crop.png"]
    done = _run(*map(str, paths), "--batch-size", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS) and len(lines) == 3
    # Each file's own answer, in order, though each batch held one file.
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [row["file"] for row in rows] == list(map(str, paths))
    for row, path in zip(rows, paths, strict=True):
        expected = _expected(path).classification
        assert row["emotion"] == expected.prediction
        for emotion, probability in expected.probabilities.items():
            assert float(row[f"p_{emotion}"]) == pytest.approx(probability, abs=1e-3)


def test_classify_with_no_images(tmp_path):
    done = _run(str(tmp_path))
    assert done.returncode == 1 and "no image files" in done.stderr


def test_names_that_are_not_utf8_and_an_output_replaced_whole(folder, tmp_path):
    """A file name in Latin-1 is written back as its bytes; the output appears whole, in place
    of an earlier one, with the permissions open() would give it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    latin1 = os.fsencode(photos) + b"/caf\xe9.jpg"
    with open(latin1, "wb") as handle:
        handle.write((folder / "astronaut.jpg").read_bytes())
    output = tmp_path / "out.csv"
    output.write_text("an earlier run's rows\n")
    done = _run(str(photos), "--output", str(output))
    assert done.returncode == 0, done.stderr
    rows = output.read_bytes().splitlines()
    assert rows[0].startswith(b"file,") and rows[1].startswith(latin1 + b",")
    assert os.stat(output).st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "photos"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_interrupted_run_leaves_the_earlier_output_and_its_rows_beside(folder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(200):
        (photos / f"{index:03}.jpg").write_bytes((folder / "astronaut.jpg").read_bytes())
    output = tmp_path / "out.csv"
    output.write_text("an earlier run's rows\n")
    code = "import sys; from emotion_server.cli import main; sys.exit(main(sys.argv[1:]))"
    options = ["--batch-size", "1", "--output", str(output)]
    running = subprocess.Popen(
        [sys.executable, "-c", code, "classify", str(photos), *options],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while not any(b"\n" in p.read_bytes() for p in tmp_path.glob(".out.csv.*")):
        assert time.monotonic() < deadline and running.poll() is None
        time.sleep(0.05)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    assert running.returncode == 130, stderr
    assert "Traceback" not in stderr and "out.csv.partial" in stderr
    assert output.read_text() == "an earlier run's rows\n"
    rows = (tmp_path / "out.csv.partial").read_text().splitlines()
    assert rows[0].split(",") == list(CSV_COLUMNS) and 1 < len(rows) < 201
    assert not list(tmp_path.glob(".out.csv.*"))


class _DropsAnInterrupt:
    """Ctrl-C while a finalizer runs: Python reports the KeyboardInterrupt as ignored and drops
    it (what let a classify run go on to its end after a SIGINT)."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_a_finalizer_dropped_still_stops_the_run(folder):
    pipeline = Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL)))
    stream = io.StringIO()
    with interrupts() as interrupted:
        _DropsAnInterrupt()  # no reference kept: finalized here, its interrupt dropped
        assert interrupted()
        with pytest.raises(KeyboardInterrupt):
            photos = [folder / "astronaut.jpg"] * 3
            classify_files(pipeline, photos, RowWriter(stream, "csv"), 1, interrupted=interrupted)
    assert stream.getvalue().splitlines() == [",".join(CSV_COLUMNS)]  # no file classified
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back


def test_an_ignored_interrupt_stays_ignored():
    """A classify started in the background by a script has SIGINT ignored: it stays so."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts() as interrupted:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # ignored: nothing raised, nothing remembered
            assert not interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGINT) is previous


def test_output_to_a_device_and_through_a_link(folder, tmp_path):
    """--output /dev/stdout writes there; a link to a file keeps its place, its file gets the
    rows; a server's settings (PORT=0) do not concern classify."""
    photo = str(folder / "astronaut.jpg")
    done = _run(photo, "--output", "/dev/stdout", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith(photo + ",")
    target = tmp_path / "rows.csv"
    target.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(target)
    code = "import sys; from emotion_server.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "classify", photo, "--output", str(link)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PORT": "0", "WEB_CONCURRENCY": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and target.read_text().splitlines()[1].startswith(photo + ",")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.csv", "rows.csv"]


def test_bad_settings_and_options_are_refused_before_the_model_loads(folder, tmp_path):
    photo = str(folder / "astronaut.jpg")
    for args, env, fragment in [
        ((photo, "--output", str(tmp_path)), {}, "is a folder"),
        ((photo,), {"EMOTION_MODE": "fast"}, "EMOTION_MODE"),
        ((photo,), {"EMOTION_VIDEO_FPS": "abc"}, "EMOTION_VIDEO_FPS"),
        ((photo, "--output", str(tmp_path / "absent" / "out.csv")), {}, "does not exist"),
        ((photo, "--plots", str(folder / "astronaut.jpg")), {}, "--plots"),
        ((photo, "--model", str(tmp_path / "absent.onnx")), {}, "not found"),
    ]:
        code = "import sys; from emotion_server.cli import main; sys.exit(main(sys.argv[1:]))"
        done = subprocess.run(
            [sys.executable, "-c", code, "classify", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **env},
        )
        assert done.returncode == 2, (args, env, done.stderr)
        assert fragment in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stdout == ""


def test_a_reader_that_goes_away_ends_the_run_quietly(folder):
    code = "import sys; from emotion_server.cli import main; sys.exit(main(sys.argv[1:]))"
    running = subprocess.Popen(
        [sys.executable, "-c", code, "classify", "--model", str(BUNDLED_MODEL)]
        + [str(folder / "astronaut.jpg")] * 50
        + ["--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    running.stdout.readline()  # the header: the run has begun
    running.stdout.close()  # as `| head -n 1` does
    _, stderr = running.communicate(timeout=120)
    assert running.returncode == 141 and b"Traceback" not in stderr, stderr


class _FaultOnSmallImages(Pipeline):
    """The real pipeline with a fault of ours planted where no input can put one: locating the
    faces of a 48x48 image raises, as a bug would."""

    def locate_faces(self, image):
        if image.width == 48:
            raise IndexError("planted fault")
        return super().locate_faces(image)


def test_a_fault_of_ours_on_one_file_spares_the_others_of_its_batch(folder, capsys):
    pipeline = _FaultOnSmallImages.from_settings(Settings(model_path=str(BUNDLED_MODEL)))
    paths = [folder / "astronaut.jpg", folder / "crop.png", folder / "nested/deeper/astronaut.png"]
    stream = io.StringIO()
    summary = classify_files(pipeline, paths, RowWriter(stream, "csv"), batch_size=16)

    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert [row["file"] for row in rows] == list(map(str, paths))
    fault = rows[1]
    assert fault["error"] == "internal_error" and fault["emotion"] == ""
    assert "IndexError: planted fault" in fault["message"]
    for index in (0, 2):  # the same batch, classified on their own
        row, expected = rows[index], _expected(paths[index]).classification
        assert row["error"] == "" and row["face_detected"] == "True"
        assert row["emotion"] == expected.prediction
        assert float(row["confidence"]) == pytest.approx(expected.confidence, abs=1e-3)
    assert summary.errors == 1 and summary.files == 3
    stderr = capsys.readouterr().err
    assert f"internal error on {paths[1]}" in stderr
    assert "Traceback" in stderr and "IndexError: planted fault" in stderr
