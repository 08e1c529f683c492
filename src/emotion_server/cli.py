"""`emotion-server serve | classify | train | export | quantize | ensemble | recover | evaluate`.

Training commands import PyTorch and Keras lazily, so a serving install without them still
runs `serve` and `classify`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import MutableMapping
from pathlib import Path

from emotion_server.config import MAX_WORKERS

DEFAULT_RECIPE = "configs/default.toml"  # `train` without --config or --resume
# glibc's malloc settings for gunicorn and its workers (docs/performance.md, detector memory).
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.mmap_threshold=2097152")


def use_huge_pages_for_large_buffers(environ: MutableMapping[str, str]) -> None:
    """Ask glibc (read when gunicorn starts) to back large allocations with transparent huge
    pages, and to map every buffer of 2 MiB or more on its own. The detector hands its
    full-size activations back after each photo; mapping them again in 2 MB pages instead of
    4 kB ones makes that cheap (66 -> 46 ms per 640x480 photo). glibc would otherwise raise its
    mapping threshold to the largest buffer freed, after which mid-sized buffers come from the
    heap and stay resident (about 100 MB more per worker). Below 2 MiB (a 640x480 photo's
    pixels, the detector's first-pass input) buffers come from the heap and are reused instead
    of faulted in again for every photo (bench/detector_memory.py). A tunable the operator set
    is left as it is; kernels or C libraries without one ignore it."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    missing = [t for t in MALLOC_TUNABLES if t.split("=")[0] not in tunables]
    if missing:
        environ["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, *missing]))


def _serve(args: argparse.Namespace) -> int:
    if args.port is not None:
        os.environ["PORT"] = str(args.port)
    if args.model:
        os.environ["EMOTION_MODEL_PATH"] = args.model
    if args.mode:
        os.environ["EMOTION_MODE"] = args.mode
    if args.workers is not None:
        os.environ["WEB_CONCURRENCY"] = str(args.workers)
    # The settings and the model are checked as gunicorn's master reads its config, in a
    # child of the master (gunicorn_conf.py, ops.startup_problem_in_child), before it forks
    # workers that would each fail: a bad setting still ends `serve` with status 2 and the
    # message. Nothing is checked here, so nothing is loaded twice across the exec.
    # Prometheus' multiprocess folder, fresh for this run, inherited by gunicorn and its workers.
    from emotion_server.ops import prepare_metrics_dir

    prepare_metrics_dir()
    use_huge_pages_for_large_buffers(os.environ)
    argv = [
        "gunicorn",
        "--config",
        "python:emotion_server.gunicorn_conf",
        "emotion_server.api:create_app()",
    ]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])
    return 0  # not reached


def _train(args: argparse.Namespace) -> int:
    from emotion_server.training.train import load_recipe, parse_duration, resolve_run, train

    if args.resume and args.init:
        print(
            "emotion-server: --init starts a new run; a resumed run goes on from its own "
            "checkpoint",
            file=sys.stderr,
        )
        return 2
    if args.resume:
        # What a recipe says is fixed when its run starts: a resumed run takes its own.
        given = [
            option
            for option, value in (
                ("--config", args.config),
                ("--name", args.name),
                ("--seed", args.seed),
                ("--teachers", args.teachers),
            )
            if value is not None
        ]
        if given:
            print(
                f"emotion-server: {', '.join(given)} cannot change a resumed run, which "
                "goes on with its own recipe (recipe.toml in its folder); --epochs and "
                "--time-budget can",
                file=sys.stderr,
            )
            return 2
        run, recipe = args.resume, None
    else:
        config = args.config or DEFAULT_RECIPE
        try:
            recipe = load_recipe(
                config,
                epochs=args.epochs,
                seed=args.seed,
                teachers=args.teachers,
                init_from=args.init,
            )
        except tomllib.TOMLDecodeError as exc:
            print(f"emotion-server: {config} is not valid TOML: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:  # unknown keys, a file that is not UTF-8
            print(f"emotion-server: {config}: {exc}", file=sys.stderr)
            return 2
        run = args.name or recipe.name
    try:
        summary = train(
            recipe,
            run,
            data_path=args.data,
            resume=bool(args.resume),
            epochs=args.epochs if args.resume else None,
            time_budget_s=parse_duration(args.time_budget) if args.time_budget else None,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"emotion-server: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary['run']}: {summary['epochs_done']} epochs done, best PublicTest "
        f"{summary['public_test_flip']:.4f} (flip) at epoch {summary['best_epoch']}"
    )
    print(f"export it with: emotion-server export --run {resolve_run(run)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from emotion_server.training.export import export_onnx, export_run

    if args.run:
        if not args.output:
            print("emotion-server: export --run needs --output (a .h5 file)", file=sys.stderr)
            return 2
        report = export_run(
            args.run, args.output, views=args.views, balance=args.balance, data_path=args.data
        )
        print(
            f"wrote {report['h5']} and {report['onnx']} (PyTorch vs .h5 max abs diff "
            f"{report['torch_vs_keras']:.1e}, vs ONNX {report['torch_vs_onnx']:.1e}); "
            f"score it with: emotion-server evaluate --model {report['onnx']} "
            f"--train-info {report['train_info']}"
        )
        return 0
    if not args.model:
        print("emotion-server: export needs a Keras model file or --run", file=sys.stderr)
        return 2
    output = export_onnx(args.model, args.output)
    print(f"wrote {output}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from emotion_server.training.quantize import quantize_model

    output = quantize_model(
        args.model, args.output, data_path=args.data, images=args.images, seed=args.seed
    )
    print(f"wrote {output}; score it with: emotion-server evaluate --model {output}")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from emotion_server.training.ensemble import build_ensemble

    report = build_ensemble(
        args.runs, args.output, views=args.views, data_path=args.data, balance=args.balance
    )
    for member in report["members"]:
        print(
            f"{member['run']}: PublicTest {member['public_test_accuracy']:.4f}, "
            f"weight {member['weight']}"
        )
    if report["h5_parts"]:  # too large for one file: one per member (ensemble.py)
        from emotion_server.training.ensemble import part_path

        parts = [part_path(Path(args.output), key) for key in report["h5_parts"]]
        saved = ", ".join(map(str, parts)) + " (one .h5 per member)"
    else:
        saved = args.output
    print(
        f"ensemble PublicTest {report['public_test_accuracy']:.4f} with {report['views']} "
        f"views (unadjusted {report['public_test_accuracy_unadjusted']:.4f}); saved {saved}"
    )
    return 0


def _recover(args: argparse.Namespace) -> int:
    from emotion_server.training.recover import recover_run

    try:
        reports = recover_run(
            args.model, args.name, card=args.card, skip_existing=args.skip_existing
        )
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"emotion-server: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        if report.get("skipped"):
            print(f"kept {report['run']}: its {report['kept']} holds these weights")
            continue
        print(
            f"wrote {report['run']} ({report['views']} views match the .h5 within "
            f"{report['parity_max_abs_diff']:.1e})"
        )
    print("use them in `emotion-server ensemble`, or as teachers (`train --teachers`)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from emotion_server.training.evaluate import evaluate

    evaluate(
        model_path=args.model,
        data_path=args.data,
        train_info=args.train_info,
        tta=args.tta,
        plots_dir=args.plots,
        name=args.name,
        version=args.version,
        public_only=args.public_only,
    )
    return 0


def _classify(args: argparse.Namespace) -> int:
    """Exit status: 0 every file classified; 1 a file could not be (its row says why) or no
    file was found; 2 a setting, an option or the model is wrong (nothing classified);
    130 interrupted; 141 the reader of standard output went away (`| head`)."""
    import tempfile
    from pathlib import Path

    from emotion_server.classify import (
        RowWriter,
        Summary,
        classify_files,
        find_images,
        interrupts,
    )
    from emotion_server.classify_video import VideoOptions
    from emotion_server.config import Settings
    from emotion_server.errors import InvalidParameter, ModelLoadError
    from emotion_server.pipeline import Pipeline

    def refuse(message: str) -> int:
        print(f"emotion-server: {message}", file=sys.stderr)
        return 2

    output = Path(args.output) if args.output else None
    if output is not None:
        if output.is_dir():
            return refuse(f"--output {output} is a folder: name a file")
        if not Path(os.path.realpath(output)).parent.is_dir():
            return refuse(f"--output {output}: the folder {output.parent} does not exist")
    plots = Path(args.plots) if args.plots else None
    if plots is not None:
        try:
            plots.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return refuse(f"--plots {plots}: {exc.strerror or exc}")
    overrides = {"model_path": args.model} if args.model else {}
    try:
        settings = Settings.from_env(**overrides)
        problem = settings.out_of_range(serving=False)
        if problem:
            return refuse(problem)
        video = VideoOptions(
            fps=settings.video_fps if args.fps is None else args.fps,
            smoothing=args.smoothing,
            plots=plots,
        )
        video.sampling()  # checked before the model loads
        pipeline = Pipeline.from_settings(settings)
    except (ModelLoadError, InvalidParameter, ValueError) as exc:  # ValueError: a setting
        return refuse(str(exc))
    files = find_images(args.paths)
    if not files:
        print(
            "emotion-server: no image files or videos found in " + " ".join(args.paths),
            file=sys.stderr,
        )
        return 1
    progress = False if args.no_progress else None
    # File names that are not UTF-8 are written back as the bytes they are (Python holds them
    # as surrogates): in strict mode the first one stopped the run.
    partial = None

    def run(stream) -> Summary:
        return classify_files(
            pipeline,
            files,
            RowWriter(stream, args.format),
            args.batch_size,
            progress,
            video,
            interrupted,
        )

    with interrupts() as interrupted:
        try:
            if output is None:
                sys.stdout.reconfigure(errors="surrogateescape")
                summary = run(sys.stdout)
            elif output.exists() and not output.is_file():  # /dev/stdout, a named pipe
                with open(
                    output, "w", encoding="utf-8", errors="surrogateescape", newline=""
                ) as stream:
                    summary = run(stream)
            else:
                # Written beside the output (a link's target) and renamed over it once complete:
                # an interrupted run leaves an earlier output as it was, its own rows in
                # OUTPUT.partial.
                target = Path(os.path.realpath(output))
                partial = target.with_name(target.name + ".partial")
                handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
                scratch = Path(name)
                try:
                    umask = os.umask(0)
                    os.umask(umask)
                    os.fchmod(handle, 0o666 & ~umask)  # as open() would make it, not 0600
                    with open(
                        handle, "w", encoding="utf-8", errors="surrogateescape", newline=""
                    ) as stream:
                        try:
                            summary = run(stream)
                        finally:
                            stream.flush()
                            os.replace(scratch, partial)  # complete or not, the rows are there
                    os.replace(partial, target)
                finally:
                    scratch.unlink(missing_ok=True)
        except KeyboardInterrupt:
            kept = f"; the rows so far are in {partial}" if partial else ""
            print(f"emotion-server: interrupted{kept}", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # Standard output's reader has gone (`| head`): stop quietly, as a command killed by
            # SIGPIPE would, and point stdout at nothing so Python's last flush cannot fail too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141
    print(summary.text(), file=sys.stderr)
    return 1 if summary.errors else 0


def _whole_number(low: int, high: int):
    """An argparse type: a whole number from `low` to `high`, or argparse's usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emotion-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the model over HTTP with gunicorn")
    serve.add_argument("--port", type=_whole_number(1, 65535), help="port (default: $PORT or 5000)")
    serve.add_argument(
        "--model", help="ONNX model (default: $EMOTION_MODEL_PATH or the bundled one)"
    )
    serve.add_argument(
        "--mode",
        choices=["default", "accurate"],
        help="which bundled model serves (default: $EMOTION_MODE or default)",
    )
    serve.add_argument(
        "--workers",
        type=_whole_number(1, MAX_WORKERS),
        help="worker processes (default: $WEB_CONCURRENCY or 2)",
    )
    serve.set_defaults(func=_serve)

    classify = commands.add_parser(
        "classify",
        help="classify image and video files and folders (recursively): one CSV or JSON line "
        "per face (per sampled frame for videos)",
    )
    classify.add_argument(
        "paths", nargs="+", metavar="PATH", help="image or video files, or folders"
    )
    classify.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    classify.add_argument("--output", help="file to write (default: standard output)")
    classify.add_argument(
        "--model", help="ONNX model (default: $EMOTION_MODEL_PATH or the bundled one)"
    )
    classify.add_argument(
        "--batch-size",
        type=_whole_number(1, 4096),
        default=16,
        help="images per model call (default: 16)",
    )
    classify.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: on a terminal)"
    )
    classify.add_argument(
        "--fps",
        type=float,
        help="video frames analysed per second of video (default: $EMOTION_VIDEO_FPS or 2)",
    )
    classify.add_argument(
        "--smoothing",
        type=float,
        default=0.0,
        help="videos: smoothing of each track's probabilities over time, 0 (off) to below 1",
    )
    classify.add_argument(
        "--plots", metavar="DIR", help="videos: write a PNG emotion timeline per track to DIR"
    )
    classify.set_defaults(func=_classify)

    train = commands.add_parser(
        "train",
        help="train a network on FER2013 with PyTorch (needs the [train] extra); resumable",
    )
    train.add_argument("--config", help=f"recipe TOML file (default: {DEFAULT_RECIPE})")
    train.add_argument(
        "--name",
        help="run name (default: the recipe's); the run folder is "
        "$EMOTION_RUNS_DIR/NAME, by default ~/.cache/emotion-server/runs/NAME",
    )
    train.add_argument(
        "--resume", metavar="RUN", help="continue a stopped run (its name or folder)"
    )
    train.add_argument("--data", help="FER2013 .tar.gz, Kaggle folder or fer2013.csv")
    train.add_argument(
        "--epochs",
        type=int,
        help="override the recipe's epochs; with --resume, a new length for the run (the "
        "cosine schedule follows it from where it is)",
    )
    train.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="end within this long from now (2.5h, 90m, 600s), the schedule complete: the run "
        "is shortened to the epochs that fit, measured as it goes",
    )
    train.add_argument("--seed", type=int, help="override the recipe's seed")
    train.add_argument(
        "--teachers",
        nargs="+",
        metavar="RUN",
        help="override the recipe's teachers: runs, or (with fixed targets) ONNX model files "
        "such as models/emotion_model.onnx",
    )
    train.add_argument(
        "--init",
        metavar="RUN",
        help="start from that run's best weights (same network) with a fresh optimizer and "
        "schedule: a warm restart, for example of a run recovered from a shipped .h5",
    )
    train.set_defaults(func=_train)

    export = commands.add_parser(
        "export",
        help="a training run -> Keras .h5 + ONNX, or a Keras .h5/.keras model -> ONNX",
    )
    export.add_argument(
        "model", nargs="?", help="Keras model file (input 48x48x1, 7 softmax outputs)"
    )
    export.add_argument("--run", help="a training run's name or folder (its best epoch)")
    export.add_argument(
        "--views",
        choices=["centre", "flip", "tencrop"],
        default="flip",
        help="with --run: test-time views built into the model (default: flip)",
    )
    export.add_argument(
        "--balance",
        choices=["auto", "none"],
        default="auto",
        help="with --run: fit a logit adjustment for the rare classes on PublicTest "
        "(auto; it may choose none) or leave the network as trained",
    )
    export.add_argument("--data", help="with --run: FER2013 .tar.gz, Kaggle folder or csv")
    export.add_argument(
        "--output", help="file to write (default: next to the model; with --run: required .h5)"
    )
    export.set_defaults(func=_export)

    quantize = commands.add_parser(
        "quantize", help="write an INT8 copy of an ONNX model, calibrated on FER2013 Training"
    )
    quantize.add_argument("model", help="float32 ONNX model (from `export`)")
    quantize.add_argument("--output", help="file to write (default: <model>.int8.onnx)")
    quantize.add_argument("--data", help="FER2013 .tar.gz, Kaggle folder or fer2013.csv")
    quantize.add_argument(
        "--images", type=int, default=1000, help="Training images to calibrate on"
    )
    quantize.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    quantize.set_defaults(func=_quantize)

    ensemble = commands.add_parser(
        "ensemble", help="weight training runs on PublicTest and ship them as one model"
    )
    ensemble.add_argument("runs", nargs="+", help="training runs (names or folders)")
    ensemble.add_argument("--output", required=True, help=".h5 file to write (and its .onnx)")
    ensemble.add_argument(
        "--views",
        choices=["auto", "centre", "flip", "tencrop"],
        default="auto",
        help="test-time views of each member (auto: the better of flip and tencrop on "
        "PublicTest; centre: one view, the cheapest)",
    )
    ensemble.add_argument(
        "--balance",
        choices=["auto", "none"],
        default="none",
        help="auto: fit a logit adjustment for the rare classes on PublicTest (as export's)",
    )
    ensemble.add_argument("--data", help="FER2013 .tar.gz, Kaggle folder or fer2013.csv")
    ensemble.set_defaults(func=_ensemble)

    recover = commands.add_parser(
        "recover",
        help="rebuild finished runs' folders from an .h5 and card that `export --run` or "
        "`ensemble` wrote",
    )
    recover.add_argument("model", help="the .h5 (for example models/emotion_model.h5)")
    recover.add_argument(
        "--name",
        help="run name (or folder) to write for one network (default: the name its card "
        "records); an ensemble's members take the names its card records",
    )
    recover.add_argument(
        "--card",
        help="its model card (default: the .json, .int8.json or .train.json beside the .h5)",
    )
    recover.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep a run folder that already holds the same weights (a member the default "
        "and the accurate mode share) instead of refusing; other weights are still refused",
    )
    recover.set_defaults(func=_recover)

    evaluate = commands.add_parser(
        "evaluate", help="score an ONNX model on PrivateTest and write its model card"
    )
    evaluate.add_argument("--model", default="models/emotion_model.int8.onnx")
    evaluate.add_argument("--data", help="FER2013 .tar.gz, Kaggle folder or fer2013.csv")
    evaluate.add_argument(
        "--train-info",
        help="train_info.json from the training run, or the model card of the model this one "
        "was quantized from",
    )
    evaluate.add_argument(
        "--tta",
        choices=["auto", "none", "flip"],
        default="auto",
        help="test-time augmentation the server will use (auto: none where the training "
        "info records the views in the model's graph, else the better on PublicTest)",
    )
    evaluate.add_argument(
        "--public-only",
        action="store_true",
        help="score PublicTest alone and write nothing: to choose between candidate models",
    )
    evaluate.add_argument("--plots", default="docs", help="folder for the PNG plots")
    evaluate.add_argument("--name", default="emotion-classifier")
    evaluate.add_argument(
        "--version", default=None, help="model version (default: package version)"
    )
    evaluate.set_defaults(func=_evaluate)
    return parser


# Imported only by the training commands: missing, the `train` extra is not installed.
TRAINING_MODULES = frozenset({"torch", "keras", "h5py", "onnx", "sklearn", "matplotlib"})


def main(argv: list[str] | None = None) -> int:
    """Exit status 2 with a message, not a traceback, for what a user can put right: a
    missing training extra, a file that cannot be read or written, a recipe that is wrong."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        if exc.name not in TRAINING_MODULES:
            raise
        print(
            f"emotion-server: this command needs the training extra ({exc.name} is missing): "
            'pip install -e ".[train]"',
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:
        # Standard output's reader has gone (`| head`): quietly, as a command killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(f"emotion-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
