"""A finished run in one small file, and back: how runs trained on a lent GPU machine come home.

That machine hands back at most 8 files of 16 MiB each (the device tool's limits), and a run
folder holds a checkpoint with the optimizer state and two copies of the weights (75 MB for
the 64-wide VGG). What is needed here afterwards (`export --run`, `ensemble`, a teacher) is
the best epoch's weights alone. `pack` keeps those in float16 (half the bytes: 12.6 MB for the
64-wide VGG) with the recipe, the best epoch and the per-epoch log; `unpack` writes a run
folder from that file, not resumable, as `recover` does from a shipped `.h5`.

    python -m emotion_server.training.transfer pack RUN... --out DIR
    python -m emotion_server.training.transfer unpack DIR/NAME.run.pt... [--name NAME]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import torch

from emotion_server.training.recover import write_finished_run
from emotion_server.training.train import BEST, CHECKPOINT, resolve_run

SUFFIX = ".run.pt"


def pack_run(run: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """`out_dir`/NAME.run.pt from the run folder `run`: its best weights in float16 (integer
    buffers as they are), recipe, architecture, best epoch and log."""
    folder = resolve_run(run)
    best = torch.load(folder / BEST, map_location="cpu", weights_only=False)
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    packed = {
        "format": 1,
        "run": folder.name,
        "arch": best["arch"],
        "recipe": state["recipe"],
        "epochs_done": state["epoch"],
        # From best.pt itself: the checkpoint may be a save behind it.
        "best": {"epoch": best["epoch"], "accuracy": best["public_test_flip"]},
        "log": state["log"],
        "weights": {
            key: value.half() if value.is_floating_point() else value
            for key, value in best["weights"].items()
        },
    }
    out = Path(out_dir) / f"{folder.name}{SUFFIX}"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(packed, out)
    return out


def unpack_run(path: str | os.PathLike, name: str | None = None) -> Path:
    """A run folder (under `name`, else the packed run's own) from a `pack_run` file: its
    best.pt in float32 and a finished checkpoint without optimizer state."""
    path = Path(path)
    # Tensors and plain values only: a file from another machine runs no pickled code here.
    try:
        packed = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        packed = None
    if not isinstance(packed, dict) or packed.get("format") != 1 or "weights" not in packed:
        raise ValueError(f"{path} is not a packed run (from `transfer pack`)")
    folder = resolve_run(name or packed["run"])
    if (folder / CHECKPOINT).exists():  # what makes a folder a run (written last)
        raise FileExistsError(f"{folder} already holds a run: choose another name")
    weights = {
        key: value.float() if value.is_floating_point() else value
        for key, value in packed["weights"].items()
    }
    write_finished_run(
        folder,
        arch=packed["arch"],
        recipe=packed["recipe"],
        best=packed["best"],
        weights=weights,
        epochs_done=packed["epochs_done"],
        log=packed["log"],
        source=f"{path.name} (transfer pack of run {packed['run']})",
    )
    return folder


def _unfinished(packed_file: Path) -> str:
    """', stopped at epoch N of M' for a packed run that did not finish its schedule, else ''."""
    packed = torch.load(packed_file, map_location="cpu", weights_only=True)
    done, planned = packed["epochs_done"], packed["recipe"]["epochs"]
    return f", stopped at epoch {done} of {planned}" if done < planned else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="runs -> one small file each")
    pack.add_argument("runs", nargs="+", metavar="RUN")
    pack.add_argument("--out", required=True, help="folder for the NAME.run.pt files")
    unpack = commands.add_parser("unpack", help="packed files -> run folders")
    unpack.add_argument("files", nargs="+", metavar="FILE")
    unpack.add_argument("--name", help="run name (one file only; default: the packed run's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            for run in args.runs:
                out = pack_run(run, args.out)
                print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB){_unfinished(out)}")
        else:
            if args.name and len(args.files) > 1:
                raise ValueError("--name names one run: give one file")
            for file in args.files:
                folder = unpack_run(file, args.name)
                print(f"{folder}: not resumable{_unfinished(Path(file)) or ', finished'}")
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"transfer: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
