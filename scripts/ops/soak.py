"""Soak test: full load on a gunicorn server on loopback for a bounded time; reports the error
count, throughput, latency and every worker's resident memory at the start and the end.

    python scripts/ops/soak.py                      # 600 s, 2 workers, 4 clients, synthetic photo
    python scripts/ops/soak.py --seconds 60 --json soak.json
    python scripts/ops/soak.py --url http://127.0.0.1:5000 --seconds 120  # a running server

Exit status 1 if any request failed (anything but a 200).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import loadlib  # beside this script


def soak(
    seconds: float,
    workers: int = 2,
    concurrency: int | None = None,
    url: str | None = None,
    image: str | None = None,
    interval: float = 10.0,
    log_path: str | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = False,
) -> dict:
    """Run the soak; the report as a dict (see `main` for its fields)."""
    server = None if url else loadlib.Server(workers=workers, log_path=log_path, env=env)
    target = url or server.url
    loadlib.check_loopback(target)
    concurrency = concurrency or 2 * workers
    bodies = [loadlib.load_photo(image), loadlib.face_crop()]
    rss_start = server.worker_rss() if server else {}
    stop = threading.Event()
    reports: list[loadlib.LoadReport] = []
    samples: list[dict] = []

    def load() -> None:
        reports.append(loadlib.run_load(target, bodies, concurrency, seconds, stop=stop))

    thread = threading.Thread(target=load)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(timeout=interval)
        if thread.is_alive() and server:
            rss = server.worker_rss()
            samples.append({"t": round(time.monotonic() - started), "rss_mb": _mb(rss)})
            if not quiet:
                print(f"  t={samples[-1]['t']:>4}s worker RSS MB {samples[-1]['rss_mb']}")
    rss_end = server.worker_rss() if server else {}
    workers_end = server.worker_pids() if server else []
    exit_code = server.stop() if server else None
    summary = reports[0].summary()
    report = {
        "url": target,
        "seconds": seconds,
        "workers": workers,
        "concurrency": concurrency,
        **summary,
        "worker_rss_mb_start": _mb(rss_start),
        "worker_rss_mb_end": _mb(rss_end),
        "workers_replaced": sorted(set(rss_start) - set(workers_end)) if server else None,
        "rss_samples": samples,
        "server_exit_code": exit_code,
    }
    return report


def _mb(sizes: dict[int, int]) -> dict[str, float]:
    return {str(pid): round(size / 2**20, 1) for pid, size in sorted(sizes.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="load duration (default 600)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--concurrency", type=int, help="clients (default: 2 per worker)")
    parser.add_argument("--url", help="a loopback server already running (default: start one)")
    parser.add_argument("--image", help="photo to send (default: a synthetic face photo)")
    parser.add_argument("--interval", type=float, default=10, help="RSS sampling period, s")
    parser.add_argument("--log", help="gunicorn's log file (default: discarded)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    print(f"soak: {args.seconds:.0f} s against {args.url or 'a new gunicorn'}")
    report = soak(
        args.seconds,
        workers=args.workers,
        concurrency=args.concurrency,
        url=args.url,
        image=args.image,
        interval=args.interval,
        log_path=args.log,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
