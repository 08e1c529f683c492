"""Benchmark the server side by side with the original design and with its own ceiling.

    .venv/bin/pip install -e ".[train,dev]" && apt-get install -y wrk
    .venv/bin/python bench/run.py [--duration 10] [--out bench/results]

Contenders, each on a loopback port, driven by wrk (bench/post.lua) in the same run:
- baseline: bench/baseline_server.py, Flask's built-in server + Keras `model.predict` per
  request on models/emotion_model.h5 (TensorFlow backend): the original design;
- ours: `emotion-server serve`, as the README starts it (gunicorn, ONNX Runtime);
- ceiling: the served model in-process in batches of 256 (no HTTP, no decoding), with the
  same test-time augmentation the server uses.
Workloads: a 48x48 greyscale face crop (JPEG) and a 640x480 photo with one face, both made
from scikit-image's astronaut photo; concurrency 1, 8 and 32. Writes results.json and
results.md into --out and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)


def make_workloads(folder: Path) -> dict[str, Path]:
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    crop = astronaut.crop((160, 40, 290, 190)).convert("L").resize((48, 48))
    photo = Image.new("RGB", (640, 480), (120, 120, 120))
    photo.paste(astronaut.resize((480, 480)), (80, 0))
    paths = {"face crop 48x48": folder / "crop.jpg", "photo 640x480": folder / "photo.jpg"}
    crop.save(paths["face crop 48x48"], quality=95)
    photo.save(paths["photo 640x480"], quality=90)
    return paths


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


class Contender:
    def __init__(self, name: str, command: list[str], env: dict[str, str], body: bytes):
        self.name = name
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Cold start: process start to the first 200 answer to an inference request.
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up")
            try:
                response = requests.post(
                    self.url + "/inference",
                    data=body,
                    timeout=30,
                    headers={"Content-Type": "application/octet-stream"},
                )
                if response.status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.02)
        self.cold_start_s = time.perf_counter() - started

    def worker_rss_mb(self) -> list[float]:
        workers = children(self.process.pid) or [self.process.pid]
        return [round(rss_mb(pid), 1) for pid in workers]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_wrk(url: str, body_path: Path, connections: int, duration: int) -> dict:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(ROOT / "bench" / "post.lua"),
        url + "/inference",
    ]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body_path)},
        timeout=duration + 60,
    )
    match = re.search(r"BENCH_JSON (\{.*\})", out.stdout)
    if not match:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    raw = json.loads(match.group(1))
    errors = sum(
        raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return {
        "connections": connections,
        "requests": raw["requests"],
        "throughput_rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "errors": errors,
    }


def ceiling(seconds: float = 5.0) -> dict:
    """Faces per second of the served model in-process, batches of 256, all cores."""
    from emotion_server.config import Settings
    from emotion_server.faces import NoDetector
    from emotion_server.model import EmotionModel
    from emotion_server.pipeline import Pipeline

    settings = Settings(threads=os.cpu_count() or 1, detector="none")
    pipeline = Pipeline(
        settings, EmotionModel(settings.model_path, threads=settings.threads), NoDetector()
    )
    crops = list(np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8))
    pipeline.classify_crops(crops)
    faces, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pipeline.classify_crops(crops)
        faces += len(crops)
    return {
        "faces_per_s": round(faces / (time.perf_counter() - started), 1),
        "tta": pipeline.tta,
        "threads": settings.threads,
    }


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model or platform.processor()}, {os.cpu_count()} cores, Linux {platform.release()}"


def to_markdown(result: dict) -> str:
    lines = [
        f"Benchmark of {result['date']} on {result['machine']} (`python bench/run.py "
        f"--duration {result['duration_s']}`; wrk, 1 thread, loopback).",
        "",
        "| contender | workload | conc. | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, contender in result["contenders"].items():
        for workload, rows in contender["workloads"].items():
            for row in rows:
                lines.append(
                    f"| {name} | {workload} | {row['connections']} | {row['throughput_rps']} | "
                    f"{row['p50_ms']} | {row['p99_ms']} | {row['errors']} |"
                )
    lines += ["", "| contender | cold start s | RSS per worker MB |", "|---|---|---|"]
    for name, contender in result["contenders"].items():
        lines.append(
            f"| {name} | {contender['cold_start_s']} | "
            f"{', '.join(map(str, contender['worker_rss_mb']))} |"
        )
    ceiling_row = result["ceiling"]
    lines += [
        "",
        f"Ceiling: {ceiling_row['faces_per_s']} faces/s in-process (batches of 256, "
        f"{ceiling_row['threads']} threads, TTA {ceiling_row['tta']}).",
        "",
    ]
    lines += ["| ratio | measured | goal |", "|---|---|---|"]
    for key, (value, goal) in result["ratios"].items():
        lines.append(f"| {key} | {value} | {goal} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,...",
        help="also run our server with these environment variables (layout experiments)",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    folder = Path(tempfile.mkdtemp())
    workloads = make_workloads(folder)
    crop_body = workloads["face crop 48x48"].read_bytes()
    contenders = {
        "ours": ([sys.executable, "-m", "emotion_server.cli", "serve"], {}),
    }
    for variant in args.variant:
        name, _, assignments = variant.partition(":")
        env = dict(item.split("=", 1) for item in assignments.split(",") if item)
        contenders[name] = ([sys.executable, "-m", "emotion_server.cli", "serve"], env)
    if not args.skip_baseline:
        contenders["baseline"] = ([sys.executable, str(ROOT / "bench" / "baseline_server.py")], {})
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "duration_s": args.duration,
        "contenders": {},
    }
    for name, (command, env) in contenders.items():
        port = str(free_port())
        if name == "baseline":
            command = [*command, port]
        contender = Contender(name, command, {**env, "PORT": port, "HOST": "127.0.0.1"}, crop_body)
        try:
            entry = {"cold_start_s": round(contender.cold_start_s, 2), "workloads": {}}
            for workload, path in workloads.items():
                run_wrk(contender.url, path, 8, 2)  # warm-up
                entry["workloads"][workload] = [
                    run_wrk(contender.url, path, c, args.duration) for c in CONCURRENCY
                ]
            entry["worker_rss_mb"] = contender.worker_rss_mb()
        finally:
            contender.stop()
        result["contenders"][name] = entry
        print(f"{name}: done", file=sys.stderr)
    result["ceiling"] = ceiling()

    ours = result["contenders"]["ours"]
    crop_best = max(r["throughput_rps"] for r in ours["workloads"]["face crop 48x48"])
    ratios = {
        "ours / ceiling, face-crop throughput": (
            round(crop_best / result["ceiling"]["faces_per_s"], 2),
            ">= 0.85",
        ),
        "ours cold start, s": (ours["cold_start_s"], "<= 1.5"),
    }
    if "baseline" in result["contenders"]:
        base = result["contenders"]["baseline"]
        base_best = max(r["throughput_rps"] for r in base["workloads"]["face crop 48x48"])
        ratios["ours / baseline, face-crop throughput"] = (round(crop_best / base_best, 1), ">= 30")
        p50 = {
            n: c["workloads"]["face crop 48x48"][0]["p50_ms"]
            for n, c in result["contenders"].items()
        }
        ratios["ours / baseline, p50 latency at concurrency 1"] = (
            round(p50["ours"] / p50["baseline"], 3),
            "<= 0.05",
        )
        ratios["ours / baseline, RSS per worker"] = (
            round(max(ours["worker_rss_mb"]) / max(base["worker_rss_mb"]), 2),
            "<= 0.25",
        )
    result["ratios"] = ratios

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
