"""Load FER2013 from the Kaggle folder layout (folder or .tar.gz) or the original fer2013.csv.

Every source yields the same `Fer2013` arrays: uint8 images [N, 48, 48] and int labels in
FER2013's order (see `emotion_server.contract.EMOTIONS`), split into Training, PublicTest and
PrivateTest by the file-name prefix (folders) or the `Usage` column (csv).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from emotion_server.contract import EMOTIONS, INPUT_SIZE

SPLITS = ("Training", "PublicTest", "PrivateTest")
DATA_ENV = "FER2013_PATH"
DEFAULT_LOCATIONS = ("../shared/data/fer2013.tar.gz", ".data/fer2013.tar.gz", ".data/fer2013")


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, 48, 48]
    labels: np.ndarray  # int64 [N], FER2013 label order
    names: tuple[str, ...]  # source file names (or csv row numbers), for reporting


@dataclass(frozen=True)
class Fer2013:
    splits: dict[str, Split]
    source: str
    sha256: str | None

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]


def find_dataset(explicit: str | os.PathLike | None = None) -> Path | None:
    """Return the FER2013 location: the argument, $FER2013_PATH, or a known default; else None."""
    candidates = [explicit] if explicit else []
    if os.environ.get(DATA_ENV):
        candidates.append(os.environ[DATA_ENV])
    candidates.extend(DEFAULT_LOCATIONS)
    for candidate in candidates:
        path = Path(candidate)
        if path.exists():
            return path
    return None


def _label_from_folder(folder: str) -> int:
    name = folder.lower()
    if name not in EMOTIONS:
        raise ValueError(f"unknown FER2013 class folder {folder!r}")
    return EMOTIONS.index(name)


def _split_from_filename(filename: str) -> str | None:
    for split in SPLITS:
        if filename.startswith(split + "_"):
            return split
    return None


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L")
        if image.size != (INPUT_SIZE, INPUT_SIZE):
            image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _iter_tar(path: Path) -> Iterator[tuple[str, str, bytes]]:
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            if not member.isfile() or not member.name.lower().endswith((".jpg", ".png")):
                continue
            parts = Path(member.name).parts
            handle = archive.extractfile(member)
            if handle is None:
                continue
            yield parts[-2], parts[-1], handle.read()


def _iter_folder(path: Path) -> Iterator[tuple[str, str, bytes]]:
    for file in sorted(path.rglob("*")):
        if file.suffix.lower() in (".jpg", ".png") and file.is_file():
            yield file.parent.name, file.name, file.read_bytes()


def _load_images(items: Iterator[tuple[str, str, bytes]]) -> dict[str, Split]:
    grouped: dict[str, list[tuple[str, np.ndarray, int]]] = {split: [] for split in SPLITS}
    for folder, filename, data in items:
        split = _split_from_filename(filename)
        if split is None:
            continue
        grouped[split].append((filename, _decode(data), _label_from_folder(folder)))
    splits = {}
    for split, rows in grouped.items():
        rows.sort(key=lambda row: row[0])  # deterministic order whatever the archive order
        splits[split] = Split(
            images=np.stack([row[1] for row in rows])
            if rows
            else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8),
            labels=np.array([row[2] for row in rows], dtype=np.int64),
            names=tuple(row[0] for row in rows),
        )
    return splits


def _load_csv(path: Path) -> dict[str, Split]:
    grouped: dict[str, list[tuple[str, np.ndarray, int]]] = {split: [] for split in SPLITS}
    with path.open(newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            pixels = np.array(row["pixels"].split(), dtype=np.uint8).reshape(INPUT_SIZE, INPUT_SIZE)
            grouped[row["Usage"]].append((f"row{index}", pixels, int(row["emotion"])))
    return {
        split: Split(
            images=np.stack([r[1] for r in rows])
            if rows
            else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8),
            labels=np.array([r[2] for r in rows], dtype=np.int64),
            names=tuple(r[0] for r in rows),
        )
        for split, rows in grouped.items()
    }


def file_sha256(path: Path) -> str | None:
    """The file's sha256 (hex); None where there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_fer2013(path: str | os.PathLike | None = None) -> Fer2013:
    """Load FER2013 from a .tar.gz, a Kaggle-layout folder, or fer2013.csv."""
    location = find_dataset(path)
    if location is None:
        raise FileNotFoundError(
            f"FER2013 not found: pass a path or set ${DATA_ENV} "
            f"(looked in {', '.join(DEFAULT_LOCATIONS)})"
        )
    if location.is_dir():
        splits = _load_images(_iter_folder(location))
    elif location.suffix == ".csv":
        splits = _load_csv(location)
    else:
        splits = _load_images(_iter_tar(location))
    if not len(splits["Training"].labels):
        raise ValueError(f"no Training images found in {location}")
    return Fer2013(splits=splits, source=str(location), sha256=file_sha256(location))


def encoded_files(
    split: str, path: str | os.PathLike | None = None
) -> list[tuple[str, int, bytes]]:
    """A split's images as the files a client would send: (name, label, encoded bytes), by file
    name. Folders and archives give their JPEG files untouched; fer2013.csv's pixel rows are
    written as lossless PNGs (the same pixels `load_fer2013` gives), in the file's order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    location = find_dataset(path)
    if location is None:
        raise FileNotFoundError(f"FER2013 not found: pass a path or set ${DATA_ENV}")
    if location.suffix == ".csv":
        rows = _load_csv(location)[split]
        found = []
        for name, pixels, label in zip(rows.names, rows.images, rows.labels, strict=True):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            found.append((name, int(label), buffer.getvalue()))
        return found
    items = _iter_folder(location) if location.is_dir() else _iter_tar(location)
    found = [
        (filename, _label_from_folder(folder), data)
        for folder, filename, data in items
        if _split_from_filename(filename) == split
    ]
    return sorted(found)


def load_cached(path: str | os.PathLike | None = None) -> Fer2013:
    """`load_fer2013` with a decoded .npz cache in .data/ (decoding 35k JPEGs takes ~20 s)."""
    location = find_dataset(path)
    if location is None or not location.is_file():
        return load_fer2013(path)  # folders are not cached: their content can change
    digest = file_sha256(location)
    cache = Path(".data") / f"fer2013-{digest[:16]}.npz"
    if cache.exists():
        with np.load(cache) as arrays:
            splits = {
                split: Split(
                    arrays[f"{split}_x"], arrays[f"{split}_y"], tuple(arrays[f"{split}_n"])
                )
                for split in SPLITS
            }
        return Fer2013(splits=splits, source=str(location), sha256=digest)
    data = load_fer2013(location)
    cache.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}_x"] = data[split].images
        arrays[f"{split}_y"] = data[split].labels
        arrays[f"{split}_n"] = np.array(data[split].names)
    # Written whole, then renamed: runs started side by side each write it, and none may
    # read a half-written one.
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            np.savez(file, **arrays)
        os.replace(partial, cache)
    finally:
        partial.unlink(missing_ok=True)
    return data
