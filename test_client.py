"""The original client: `python test_client.py URL` prints the model summary;
`python test_client.py URL IMAGE` prints the prediction for IMAGE (and the faces found);
`python test_client.py URL --batch IMAGE IMAGE...` sends several images in one request to
/inference/batch and prints each one's prediction (or its error); the exit status is 1 where
any image failed.

Only the standard library is used, so it runs anywhere Python does.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import urllib.error
import urllib.request
import uuid


def _json(data: bytes, what: str) -> dict:
    """The answer's JSON object, or a clear exit where it is not one (a proxy's HTML page)."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = data[:200].decode("utf-8", "replace").strip()
        raise SystemExit(f"{what}: the answer is not the server's JSON: {text!r}")
    return body


def _request(url: str, **kwargs) -> urllib.request.Request:
    try:
        return urllib.request.Request(url, **kwargs)
    except ValueError as error:  # "://x": no host
        raise SystemExit(f"not a URL the client can use: {url} ({error})") from None


def _call(request: urllib.request.Request) -> dict:
    url = request.full_url
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return _json(response.read(), url)
    except urllib.error.HTTPError as error:
        body = _json(error.read(), f"HTTP {error.code} from {url}")
        raise SystemExit(f"HTTP {error.code}: {body.get('error')}: {body.get('message')}") from None
    except urllib.error.URLError as error:  # refused, unknown host, ...
        raise SystemExit(f"cannot reach {url}: {error.reason}") from None
    except OSError as error:  # a timeout, a connection reset
        raise SystemExit(f"cannot reach {url}: {error}") from None
    except (http.client.InvalidURL, ValueError, OverflowError) as error:  # a port not a number
        raise SystemExit(f"not a URL the client can use: {url} ({error})") from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise SystemExit(f"cannot read {path}: {error.strerror or error}") from None


def summary(url: str) -> dict:
    return _call(_request(url.rstrip("/") + "/summary"))


def infer(url: str, image_path: str) -> dict:
    data = _read(image_path)
    request = _request(
        url.rstrip("/") + "/inference",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        method="POST",
    )
    return _call(request)


def infer_batch(url: str, image_paths: list[str]) -> dict:
    """POST the images as the repeated multipart field `images`."""
    boundary = uuid.uuid4().hex
    parts = []
    for path in image_paths:
        data = _read(path)
        name = os.path.basename(path).replace('"', "_").replace("\r", "_").replace("\n", "_")
        parts.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="images"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = _request(
        url.rstrip("/") + "/inference/batch",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    return _call(request)


def print_result(result: dict, prefix: str = "") -> None:
    print(
        f"{prefix}prediction: {result['prediction']} (confidence {result.get('confidence', 0):.2f})"
    )
    for index, face in enumerate(result.get("faces", []), 1):
        box = face["box"]
        roll = face.get("roll")  # absent from servers before it, null without eye points
        tilt = f", tilted {roll:+.0f} degrees" if isinstance(roll, (int, float)) else ""
        print(
            f"{prefix}face {index}: {face['prediction']} ({face['confidence']:.2f}) at "
            f"x={box['x']} y={box['y']} {box['width']}x{box['height']}{tilt}"
        )
    if not result.get("face_detected", True):
        print(
            f"{prefix}no face detected ({result.get('whole_image_reason')}): "
            "the whole image was classified"
        )


def main(argv: list[str]) -> int:
    batch = len(argv) >= 4 and argv[2] == "--batch"
    if not batch and (len(argv) not in (2, 3) or "--batch" in argv):
        print(__doc__, file=sys.stderr)
        return 2
    url = argv[1]
    if "://" not in url:
        print(f"the URL needs its scheme, for example http://{url}", file=sys.stderr)
        return 2
    if batch:
        paths = argv[3:]
        results = infer_batch(url, paths)["results"]
        # One result per image, in order (no strict=: this client runs on older Pythons too).
        for path, result in zip(paths, results):  # noqa: B905
            if "error" in result:
                print(f"{path}: error {result['error']}: {result['message']}")
            else:
                print_result(result, prefix=f"{path}: ")
        return 1 if any("error" in result for result in results) else 0
    if len(argv) == 2:
        print(json.dumps(summary(url), indent=2))
        return 0
    print_result(infer(url, argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
