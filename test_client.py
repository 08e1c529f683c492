"""The original client: `python test_client.py URL` prints the model summary;
`python test_client.py URL IMAGE` prints the prediction for IMAGE (and the faces found).

Only the standard library is used, so it runs anywhere Python does.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def _call(request: urllib.request.Request) -> dict:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
        raise SystemExit(f"HTTP {error.code}: {body.get('error')}: {body.get('message')}") from None


def summary(url: str) -> dict:
    return _call(urllib.request.Request(url.rstrip("/") + "/summary"))


def infer(url: str, image_path: str) -> dict:
    with open(image_path, "rb") as handle:
        data = handle.read()
    request = urllib.request.Request(
        url.rstrip("/") + "/inference",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        method="POST",
    )
    return _call(request)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    url = argv[1]
    if len(argv) == 2:
        print(json.dumps(summary(url), indent=2))
        return 0
    result = infer(url, argv[2])
    print(f"prediction: {result['prediction']} (confidence {result.get('confidence', 0):.2f})")
    for index, face in enumerate(result.get("faces", []), 1):
        box = face["box"]
        print(
            f"face {index}: {face['prediction']} ({face['confidence']:.2f}) at "
            f"x={box['x']} y={box['y']} {box['width']}x{box['height']}"
        )
    if not result.get("face_detected", True):
        print(
            f"no face detected ({result.get('whole_image_reason')}): the whole image was classified"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
