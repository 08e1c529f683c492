"""Score a running server on FER2013 through HTTP, as its users reach it.

    python scripts/model/http_accuracy.py http://localhost:5000 [--split PrivateTest]
        [--data PATH] [--connections 4] [--api-key KEY] [--json FILE]

Every image of the split is POSTed to /inference as the dataset holds it (the JPEG file, raw
body), and the answers' `prediction` and `probabilities` are scored: accuracy, macro-F1, ECE,
per-class precision and recall, the confusion matrix. Beside them, the accuracy the server's
`/summary` states, and whether the two agree (within 0.0001: `evaluate` scored the same split
in-process). Exit status 1 when a request failed or they do not agree, so that the served
figure is checked, not assumed. The dataset comes from --data, $FER2013_PATH or
../shared/data (the repository holds none of it). Needs the [train] extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from emotion_server.contract import EMOTIONS
from emotion_server.training.data import SPLITS, encoded_files
from emotion_server.training.evaluate import print_report, split_metrics

AGREEMENT = 1e-4  # |HTTP accuracy - the card's| allowed: a rounding, not a model's difference


def score(url: str, files: list[tuple[str, int, bytes]], connections: int, headers: dict) -> dict:
    """POST each file; probabilities [N,7] in EMOTIONS order, and the failures by name."""
    local = threading.local()
    headers = {"Content-Type": "application/octet-stream", **headers}

    def classify(item: tuple[str, int, bytes]) -> tuple[str, list[float] | None, str | None]:
        name, _label, data = item
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            answer = local.session.post(url + "/inference", data=data, headers=headers, timeout=60)
        except requests.RequestException as error:
            return name, None, f"{type(error).__name__}: {error}"
        if answer.status_code != 200:
            return name, None, f"HTTP {answer.status_code}: {answer.text[:200]}"
        body = answer.json()
        return name, [body["probabilities"][emotion] for emotion in EMOTIONS], None

    with ThreadPoolExecutor(connections) as pool:
        answers = list(pool.map(classify, files))
    failures = {name: error for name, _, error in answers if error is not None}
    probabilities = np.array(
        [row if row is not None else [0.0] * len(EMOTIONS) for _, row, _ in answers]
    )
    return {"probabilities": probabilities, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, for example http://localhost:5000")
    parser.add_argument("--split", default="PrivateTest", choices=SPLITS)
    parser.add_argument("--data", help="FER2013 .tar.gz, Kaggle folder or fer2013.csv")
    parser.add_argument("--connections", type=int, default=4, help="requests in flight")
    parser.add_argument("--api-key", help="sent as X-API-Key where the server needs one")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    headers = {"X-API-Key": args.api_key} if args.api_key else {}

    summary = requests.get(url + "/summary", headers=headers, timeout=30)
    if summary.status_code != 200:
        print(f"GET /summary: HTTP {summary.status_code}: {summary.text[:200]}", file=sys.stderr)
        return 2
    card = summary.json()
    files = encoded_files(args.split, args.data)
    if not files:
        print(f"no {args.split} images in the dataset", file=sys.stderr)
        return 2
    labels = np.array([label for _, label, _ in files])
    started = time.perf_counter()
    scored = score(url, files, args.connections, headers)
    seconds = time.perf_counter() - started
    metrics = split_metrics(scored["probabilities"], labels)
    print(
        f"{url}: {card.get('name')} {card.get('version')}, {len(files)} {args.split} images "
        f"through POST /inference in {seconds:.1f} s ({args.connections} connections)"
    )
    print_report(f"{args.split} through HTTP", metrics)
    stated = card.get("accuracy")
    agree = stated is not None and abs(metrics["accuracy"] - stated) <= AGREEMENT
    if args.split == "PrivateTest":
        print(f"\n/summary states accuracy {stated}: {'agrees' if agree else 'DOES NOT agree'}")
    for name, error in list(scored["failures"].items())[:10]:
        print(f"failed: {name}: {error}", file=sys.stderr)
    if scored["failures"]:
        print(f"{len(scored['failures'])} requests failed", file=sys.stderr)
    if args.json:
        figures = {
            "url": url,
            "split": args.split,
            "model": {key: card.get(key) for key in ("name", "version", "accuracy", "mode")},
            "seconds": round(seconds, 2),
            "failures": len(scored["failures"]),
            "summary_agrees": agree if args.split == "PrivateTest" else None,
            "predictions": {
                name: EMOTIONS[int(row.argmax())]
                for (name, _, _), row in zip(files, scored["probabilities"], strict=True)
            },
            **metrics,
        }
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    failed = bool(scored["failures"]) or (args.split == "PrivateTest" and not agree)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
