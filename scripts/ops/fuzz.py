"""Coverage-guided fuzzing of the decode-and-classify path (Pipeline.analyze) with atheris.

Every input must give a result or one of the server's own errors (EmotionServerError, a 4xx);
anything else is a crash: libFuzzer prints the traceback, saves the input as
runs/fuzz/crash-<sha1> and the script exits non-zero. Bounded by --seconds.

    python scripts/ops/fuzz.py --seconds 30
    python scripts/ops/fuzz.py --seconds 600    # the corpus grows in runs/fuzz/corpus
    python scripts/ops/fuzz.py --reproduce runs/fuzz/crash-<sha1>       # run one saved input again

Seeds: small images in every supported format and the bad-input corpus of the tests.
"""

from __future__ import annotations

import argparse
import io
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_seeds(folder: Path) -> int:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    count = 0
    for fmt, mode in [
        ("JPEG", "RGB"),
        ("JPEG", "CMYK"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("PNG", "I;16"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("GIF", "P"),
        ("TIFF", "RGB"),
    ]:
        image = Image.fromarray(pixels).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        (folder / f"seed-{fmt.lower()}-{mode.replace(';', '')}").write_bytes(buffer.getvalue())
        count += 1
    source = ROOT / "tests" / "bad_inputs.py"  # read from its file: tests/ is not a package
    if not source.is_file():
        return count
    corpus = runpy.run_path(str(source))["corpus"]
    for index, case in enumerate(corpus(max_upload_bytes=100_000)):
        if case.data and len(case.data) <= 100_000:
            (folder / f"case-{index:02d}").write_bytes(case.data)
            count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="fuzzing time (default 30)")
    parser.add_argument(
        "--corpus", default="runs/fuzz/corpus", help="corpus folder, kept between runs"
    )
    parser.add_argument(
        "--artifacts", default="runs/fuzz", help="where crashing inputs are saved (runs/fuzz)"
    )
    parser.add_argument("--max-len", type=int, default=65536, help="longest input, bytes")
    parser.add_argument("--max-pixels", type=int, default=4_000_000, help="EMOTION_MAX_PIXELS")
    parser.add_argument("--reproduce", help="run this one input and exit")
    args = parser.parse_args()

    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris; Linux x86_64 wheels)")
        return 3

    with atheris.instrument_imports(include=["PIL", "emotion_server"]):
        from emotion_server.config import Settings
        from emotion_server.errors import EmotionServerError
        from emotion_server.pipeline import Pipeline

    model = ROOT / "models" / "emotion_model.int8.onnx"
    pipeline = Pipeline.from_settings(
        Settings.from_env(model_path=str(model), max_pixels=args.max_pixels)
    )

    def one_input(data: bytes) -> None:
        try:
            pipeline.analyze(data)
        except EmotionServerError as error:
            if not 400 <= error.status < 500:
                raise

    if args.reproduce:
        one_input(Path(args.reproduce).read_bytes())
        print("no crash")
        return 0

    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    seeds = write_seeds(corpus)
    print(f"fuzzing Pipeline.analyze for {args.seconds} s from {seeds} seeds in {corpus}")
    libfuzzer_args = [
        sys.argv[0],
        f"-max_total_time={args.seconds}",
        f"-max_len={args.max_len}",
        "-timeout=20",
        "-rss_limit_mb=3072",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(libfuzzer_args, one_input)
    atheris.Fuzz()  # exits the process: 0 when the time is up with no crash
    return 0


if __name__ == "__main__":
    sys.exit(main())
