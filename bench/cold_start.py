"""Start and stop of `emotion-server serve` (2 workers), this working tree against a git
revision, in alternating rounds so that the host's drift falls on both alike.

Cold start: process start to `/readyz` answering 200 with both workers up (as bench/run.py
measures it). Stop: SIGTERM to the master's exit, the server idle after one inference.

    python bench/cold_start.py --against d77e687 --rounds 4 --starts 5

The revision is checked out in a temporary git worktree and run with this environment's
packages, its own `src` first on the path and its own `models/`. Leave the CPU to it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from emotion_server.launcher import Server

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "samples" / "astronaut.jpg"


def one_start(tree: Path) -> tuple[float, float]:
    """(cold start s, stop s) of one server run from `tree`."""
    env = {"PYTHONPATH": str(tree / "src"), "EMOTION_MODEL_PATH": None, "MODEL_PATH": None}
    server = Server(env=env, workers=2, cwd=tree)
    answer = requests.post(server.url + "/inference", data=PHOTO.read_bytes(), timeout=30)
    if answer.status_code != 200:
        server.stop()
        raise SystemExit(f"{tree}: /inference answered {answer.status_code}")
    started = time.monotonic()
    server.stop(timeout=60)
    return server.ready_s, time.monotonic() - started


@contextlib.contextmanager
def worktree(revision: str):
    with tempfile.TemporaryDirectory(prefix="bench-tree-") as parent:
        path = Path(parent) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(path), revision], cwd=ROOT, check=True
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--starts", type=int, default=5, help="starts per side per round")
    args = parser.parse_args()
    with worktree(args.against) as other:
        sides = {"this tree": ROOT, args.against: other}
        starts: dict[str, list[float]] = {name: [] for name in sides}
        stops: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                for _ in range(args.starts):
                    start_s, stop_s = one_start(sides[name])
                    starts[name].append(start_s)
                    stops[name].append(stop_s)
                print(
                    f"round {round_ + 1}, {name}: cold start median "
                    f"{statistics.median(starts[name][-args.starts :]):.2f} s",
                    flush=True,
                )
    print("\n| tree | starts | cold start median s | stop median s |")
    print("|---|---|---|---|")
    for name in sides:
        print(
            f"| {name} | {len(starts[name])} | {statistics.median(starts[name]):.2f} | "
            f"{statistics.median(stops[name]):.2f} |"
        )
    mine, theirs = (statistics.median(starts[name]) for name in sides)
    print(f"\ncold start, this tree / {args.against}: {mine / theirs:.2f}")


if __name__ == "__main__":
    main()
