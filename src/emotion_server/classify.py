"""`emotion-server classify`: image and video files and folders -> one row per face, as CSV or
JSON lines.

Images go through the serving pipeline in batches (the faces of a batch in one model call);
videos frame by frame (classify_video.py), one row per face per sampled frame. A file that cannot
be read or decoded gets a row with its error code and message, and the run goes on. So does a
file that meets a fault of our own (a bug): its row says `internal_error`, its traceback goes to
standard error, and the other files of its batch are classified alone.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from emotion_server.classify_video import VIDEO_SUFFIXES, VideoOptions, classify_video, is_video
from emotion_server.contract import EMOTIONS
from emotion_server.errors import EmotionServerError, UnreadableFile
from emotion_server.pipeline import Pipeline
from emotion_server.results import InferenceResult, face_points
from emotion_server.timeline import FrameResult

# Suffixes picked up when walking a folder; files named on the command line are always tried.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo"}
)
FORMATS = ("csv", "jsonl")
CSV_COLUMNS = (
    "file",
    "frame",
    "time",
    "track",
    "face",
    "x",
    "y",
    "width",
    "height",
    "face_score",
    "roll",
    "face_detected",
    "whole_image_reason",
    "emotion",
    "confidence",
    *(f"p_{emotion}" for emotion in EMOTIONS),
    "error",
    "message",
)


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as named; folders walked recursively for image and video files, in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and not p.is_dir()
                )
            )
        else:
            found.append(path)  # missing or unreadable: reported as a row of its own
    return found


@dataclass(frozen=True)
class Row:
    """One output row: a face, a whole image (no face found), or a file's error; for a video,
    a face (or the absence of any) in one sampled frame."""

    file: str
    frame: int | None = None  # video: the frame's 0-based place in the decoded stream
    time: float | None = None  # video: seconds since the first frame
    track: int | None = None  # video: the face's track id, the same person across frames
    face: int | None = None  # 1-based, largest face first; None for a whole image or an error
    box: dict[str, int] | None = None
    face_score: float | None = None
    landmarks: dict[str, dict[str, float]] | None = None  # JSON lines only
    roll: float | None = None
    face_detected: bool | None = None
    whole_image_reason: str | None = None
    emotion: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "frame": self.frame,
            "time": self.time,
            "track": self.track,
            "face": self.face,
            "box": self.box,
            "face_score": self.face_score,
            "landmarks": self.landmarks,
            "roll": self.roll,
            "face_detected": self.face_detected,
            "whole_image_reason": self.whole_image_reason,
            "emotion": self.emotion,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "error": self.error,
            "message": self.message,
        }

    def as_csv(self) -> dict[str, Any]:
        box = self.box or {}
        probabilities = self.probabilities or {}
        return {
            "file": self.file,
            "frame": self.frame,
            "time": self.time,
            "track": self.track,
            "face": self.face,
            "x": box.get("x"),
            "y": box.get("y"),
            "width": box.get("width"),
            "height": box.get("height"),
            "face_score": self.face_score,
            "roll": self.roll,
            "face_detected": self.face_detected,
            "whole_image_reason": self.whole_image_reason,
            "emotion": self.emotion,
            "confidence": self.confidence,
            **{f"p_{e}": probabilities.get(e) for e in EMOTIONS},
            "error": self.error,
            "message": self.message,
        }


def _round(values: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 6) for name, value in values.items()}


def rows_for(file: str, outcome: InferenceResult | EmotionServerError) -> list[Row]:
    """A file's rows: one per face, one for the whole image when none was found, or its error."""
    if isinstance(outcome, EmotionServerError):
        return [Row(file=file, error=outcome.code, message=outcome.message)]
    if not outcome.faces:
        c = outcome.classification
        return [
            Row(
                file=file,
                face_detected=False,
                whole_image_reason=outcome.whole_image_reason,
                emotion=c.prediction,
                confidence=round(c.confidence, 6),
                probabilities=_round(c.probabilities),
            )
        ]
    return [
        Row(
            file=file,
            face=index,
            **_face_fields(f),
        )
        for index, f in enumerate(outcome.faces, 1)
    ]


def _face_fields(face) -> dict:
    """The columns one detected face fills, in an image's rows and a video frame's alike."""
    box = face.box
    return {
        "box": {"x": box.x, "y": box.y, "width": box.width, "height": box.height},
        "face_score": round(face.score, 4),
        **face_points(box),
        "face_detected": True,
        "emotion": face.classification.prediction,
        "confidence": round(face.classification.confidence, 6),
        "probabilities": _round(face.classification.probabilities),
    }


def rows_for_frame(file: str, frame: FrameResult) -> list[Row]:
    """A sampled video frame's rows: one per face (largest first), or one saying none was found."""
    if not frame.faces:
        return [
            Row(
                file=file,
                frame=frame.index,
                time=frame.time,
                face_detected=False,
                whole_image_reason="no_face_found",
            )
        ]
    return [
        Row(
            file=file,
            frame=frame.index,
            time=frame.time,
            track=f.track_id,
            face=index,
            **_face_fields(f),
        )
        for index, f in enumerate(frame.faces, 1)
    ]


class RowWriter:
    """Writes rows as CSV (a header, then one line per row) or as JSON lines."""

    def __init__(self, stream: IO[str], fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: use one of {FORMATS}")
        self.stream = stream
        self.fmt = fmt
        self.csv = None
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
            self.csv.writeheader()

    def write(self, row: Row) -> None:
        if self.csv is not None:
            self.csv.writerow(row.as_csv())
        else:
            self.stream.write(json.dumps(row.as_json()) + "\n")
        self.stream.flush()


@dataclass
class Summary:
    files: int = 0
    errors: int = 0
    faces: int = 0
    whole_images: int = 0
    videos: int = 0
    frames: int = 0  # sampled video frames
    plots: int = 0
    emotions: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, rows: Sequence[Row]) -> None:
        """One image file's rows."""
        self.files += 1
        self.count(rows)

    def count(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.error:
                self.errors += 1
            elif row.face_detected:
                self.faces += 1
            elif row.frame is None:
                self.whole_images += 1
            if row.emotion:
                self.emotions[row.emotion] += 1

    def text(self) -> str:
        rate = self.files / self.seconds if self.seconds > 0 else 0.0
        counts = ", ".join(f"{e} {self.emotions[e]}" for e in EMOTIONS)
        return (
            f"files: {self.files} ({self.errors} with errors), faces: {self.faces}, "
            f"images without a face: {self.whole_images}\n"
            f"emotions: {counts}\n"
            f"{rate:.1f} images/s ({self.seconds:.1f} s)"
        ) + (
            f"\nvideos: {self.videos}, sampled frames: {self.frames}, timeline plots: {self.plots}"
            if self.videos
            else ""
        )


def _runs(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    """Consecutive images in batches of at most `size`; each video on its own."""
    batch: list[Path] = []
    for path in items:
        if is_video(path):
            if batch:
                yield batch
                batch = []
            yield [path]
            continue
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _read(path: Path) -> bytes | UnreadableFile:
    try:
        return path.read_bytes()
    except OSError as exc:
        return UnreadableFile(f"{path}: {exc.strerror or exc}")


def _internal_error(path: Path, exc: Exception) -> EmotionServerError:
    """A fault of ours on one file: its traceback to stderr, an `internal_error` for its row."""
    print(f"emotion-server: internal error on {path} (a bug; please report it):", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    return EmotionServerError(f"{path}: internal error ({type(exc).__name__}: {exc})")


def _analyze_alone(
    pipeline: Pipeline, path: Path, item: bytes | EmotionServerError
) -> InferenceResult | EmotionServerError:
    try:
        return pipeline.analyze_batch([item])[0]
    except Exception as exc:
        return _internal_error(path, exc)


def _classify_images(
    pipeline: Pipeline, batch: Sequence[Path], writer: RowWriter, summary: Summary
) -> None:
    items = [_read(path) for path in batch]
    try:
        outcomes = pipeline.analyze_batch(items)
    except Exception:
        # One file's fault would lose the whole batch: each file again on its own, so only the
        # one at fault gets an error row.
        pairs = zip(batch, items, strict=True)
        outcomes = [_analyze_alone(pipeline, path, item) for path, item in pairs]
    for path, outcome in zip(batch, outcomes, strict=True):
        rows = rows_for(str(path), outcome)
        for row in rows:
            writer.write(row)
        summary.add(rows)


def _classify_video(
    pipeline: Pipeline,
    path: Path,
    writer: RowWriter,
    summary: Summary,
    options: VideoOptions,
    progress: bool | None,
    interrupted: Callable[[], bool],
) -> None:
    summary.files += 1
    summary.videos += 1

    def on_frame(frame: FrameResult) -> None:
        rows = rows_for_frame(str(path), frame)
        for row in rows:
            writer.write(row)
        summary.count(rows)
        summary.frames += 1
        if interrupted():
            raise KeyboardInterrupt

    try:
        if not path.is_file():
            raise UnreadableFile(f"{path}: not a readable file")
        summary.plots += len(classify_video(pipeline, path, options, on_frame, progress))
        return
    except EmotionServerError as exc:
        error = exc
    except OSError as exc:
        error = UnreadableFile(f"{path}: {exc.strerror or exc}")
    except Exception as exc:  # a fault of ours: this video's rows so far stay, the run goes on
        error = _internal_error(path, exc)
    rows = rows_for(str(path), error)
    writer.write(rows[0])
    summary.count(rows)


@contextlib.contextmanager
def interrupts() -> Iterator[Callable[[], bool]]:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt at once, as Python's own handler does, and is
    also remembered: the callable given returns True once one came.

    Python's handler alone can lose an interrupt: when it fires while a finalizer (`__del__`, a
    weak reference's callback) runs, the exception is reported as "ignored" and dropped, and the
    run went on to the end. classify_files asks the callable between files and frames and stops
    there. In the main thread only, and only in place of Python's own handler: where SIGINT is
    ignored (a job started in the background by a script) or handled otherwise, it stays so and
    the callable stays False.
    """
    came = threading.Event()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield came.is_set
        return

    def on_interrupt(signum, frame) -> None:
        came.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield came.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def classify_files(
    pipeline: Pipeline,
    files: Sequence[Path],
    writer: RowWriter,
    batch_size: int = 16,
    progress: bool | None = None,
    video: VideoOptions | None = None,
    interrupted: Callable[[], bool] = lambda: False,
) -> Summary:
    """Classify `files` in order (images in batches, videos frame by frame), writing rows as
    they come; returns the run's summary.

    `progress`: True shows a bar on stderr (files, and a video's frames), False hides it, None
    shows it on a terminal only. `interrupted` (see `interrupts`) is asked before each batch and
    after each video frame: True raises KeyboardInterrupt there.
    """
    from tqdm import tqdm

    options = video or VideoOptions()
    summary = Summary()
    started = time.perf_counter()
    # tqdm's disable=None: shown on a terminal only.
    disable = None if progress is None else not progress
    with tqdm(total=len(files), unit="file", file=sys.stderr, disable=disable) as bar:
        for run in _runs(files, max(1, batch_size)):
            if interrupted():
                raise KeyboardInterrupt
            if len(run) == 1 and is_video(run[0]):
                _classify_video(pipeline, run[0], writer, summary, options, progress, interrupted)
            else:
                _classify_images(pipeline, run, writer, summary)
            bar.update(len(run))
    summary.seconds = time.perf_counter() - started
    return summary
