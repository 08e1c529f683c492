"""bench/run.py's rounds: the median run per row, and each ratio taken within every round."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import ROOT, encode

CROP, PHOTO = "face crop 48x48", "photo 640x480"


def _bench_script(name: str):
    """bench/NAME.py loaded as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _bench_script("run")


def _rows(rps_at_8: float, p50_at_1: float) -> list[dict]:
    def row(connections: int, rps: float, p50: float) -> dict:
        return {
            "connections": connections,
            "requests": int(rps * 10),
            "throughput_rps": rps,
            "p50_ms": p50,
            "p99_ms": p50 * 2,
            "errors": 0,
            "server_cpu_ms_per_request": 1.0,
        }

    return [row(1, rps_at_8 / 2, p50_at_1), row(8, rps_at_8, 20.0), row(32, rps_at_8 / 2, 80.0)]


def test_rounds_keep_the_median_run_and_the_median_of_the_ratios_within_rounds(bench):
    ours = [(300.0, 3.0), (400.0, 4.0), (500.0, 5.0)]  # crop req/s at 8, p50 ms at 1
    base = [(10.0, 100.0), (40.0, 100.0), (20.0, 100.0)]
    ceilings = [600.0, 500.0, 700.0]
    rounds = [
        {
            "contenders": {
                "ours": {"workloads": {CROP: _rows(*o), PHOTO: _rows(*o)}},
                "baseline": {"workloads": {CROP: _rows(*b), PHOTO: _rows(*b)}},
            },
            "ceilings": {"ours": {"faces_per_s": c, "model": "m", "tta": "none", "threads": 2}},
        }
        for o, b, c in zip(ours, base, ceilings, strict=True)
    ]
    result = {
        "contenders": {
            "ours": {
                "cold_start_s": 1.2,
                "worker_rss_mb": [100.0, 110.0],
                "worker_peak_rss_mb": [1.0],
            },
            "baseline": {
                "cold_start_s": 8.0,
                "worker_rss_mb": [800.0],
                "worker_peak_rss_mb": [1.0],
            },
        }
    }
    bench.combine_rounds(result, rounds, ["ours"])

    at_8 = result["contenders"]["ours"]["workloads"][CROP][1]
    assert at_8["throughput_rps"] == 400.0 and at_8["rounds_rps"] == [300.0, 400.0, 500.0]
    at_1 = result["contenders"]["ours"]["workloads"][CROP][0]
    assert at_1["p50_ms"] == 4.0  # the median run's own p50, not another round's
    assert result["ceilings"]["ours"]["faces_per_s"] == 600.0
    assert result["ceilings"]["ours"]["rounds"] == ceilings

    # Within each round: 30, 10 and 25 times the baseline; the median is 25, where the ratio
    # of the two medians (400 / 20) would say 20.
    key = "ours / baseline, face-crop throughput"
    assert result["ratio_rounds"][key] == [30.0, 10.0, 25.0]
    assert result["ratios"][key] == (25.0, ">= 30")
    ceiling_key = "ours / ceiling, face-crop throughput"
    assert result["ratio_rounds"][ceiling_key] == [0.5, 0.8, 0.71]
    assert result["ratios"][ceiling_key][0] == 0.71
    assert result["ratios"]["ours / baseline, RSS per worker"] == (0.14, "<= 0.25")

    markdown = bench.to_markdown({**result, "date": "d", "machine": "m", "command": "c"})
    assert "| ours | face crop 48x48 | 8 | 400.0 |" in markdown
    assert "300.0, 400.0, 500.0 |" in markdown
    assert "| 25.0 | >= 30 | no | 30.0, 10.0, 25.0 |" in markdown


def _rows_apart(rps_at_8: float, p50_at_1: float) -> list[dict]:
    """_rows with the other concurrencies' figures the same for every contender: a ratio taken
    from the wrong row would be 1."""
    rows = _rows(rps_at_8, p50_at_1)
    rows[0]["throughput_rps"], rows[2]["throughput_rps"] = 7.0, 3.0
    rows[1]["p50_ms"] = rows[2]["p50_ms"] = 99.0
    return rows


def test_a_revision_is_compared_with_ours_within_each_round(bench):
    """`--against REV`: ours / ours@REV on photos and crops, each ratio taken within a round
    (the machine's drift falls on both), and marked as a comparison, not a goal."""
    ours = [(100.0, 10.0), (60.0, 14.0), (90.0, 11.0)]  # photo req/s at 8, p50 ms at 1
    theirs = [(80.0, 12.5), (50.0, 14.0), (100.0, 11.0)]
    rev = "ours@abc123"
    rounds = [
        {
            "contenders": {
                "ours": {"workloads": {CROP: _rows_apart(500.0, 2.0), PHOTO: _rows_apart(*o)}},
                rev: {"workloads": {CROP: _rows_apart(400.0, 2.5), PHOTO: _rows_apart(*t)}},
            },
            "ceilings": {
                name: {"faces_per_s": 900.0, "model": "m", "tta": "none", "threads": 2}
                for name in ("ours", rev)
            },
        }
        for o, t in zip(ours, theirs, strict=True)
    ]
    entry = {"cold_start_s": 1.0, "worker_rss_mb": [100.0], "worker_peak_rss_mb": [100.0]}
    result = {"contenders": {"ours": dict(entry), rev: dict(entry)}}
    bench.combine_rounds(result, rounds, ["ours", rev])

    key = f"ours / {rev}, photo throughput at 8 connections"
    assert result["ratio_rounds"][key] == [1.25, 1.2, 0.9]
    assert result["ratios"][key] == (1.2, "(compare)")
    assert result["ratio_rounds"][f"ours / {rev}, photo p50 at 1 connection"] == [0.8, 1.0, 1.0]
    assert result["ratios"][f"ours / {rev}, face-crop throughput at 8 connections"][0] == 1.25
    assert not any(k.startswith("ours / ours,") for k in result["ratios"])  # not itself
    markdown = bench.to_markdown({**result, "date": "d", "machine": "m", "command": "c"})
    assert f"| {key} | 1.2 | (compare) | - | 1.25, 1.2, 0.9 |" in markdown


def test_the_model_floor_is_measured_as_a_reference_for_any_flask_app(bench):
    """model-floor (face crops only): its best throughput against ours' ceiling and the
    original design's, and ours against it, each taken within a round, as references."""
    ours = [300.0, 400.0, 500.0]  # crop req/s at 8
    floor = [600.0, 500.0, 550.0]
    base = [20.0, 25.0, 10.0]
    ceilings = [1000.0, 800.0, 1100.0]
    floor_rows = [_rows(f, 1.5) for f in floor]
    # In the last round the floor peaks at 32 connections: its best row counts, not the 8's.
    floor_rows[2][1]["throughput_rps"], floor_rows[2][2]["throughput_rps"] = 500.0, 550.0
    rounds = [
        {
            "contenders": {
                "ours": {"workloads": {CROP: _rows(o, 2.0), PHOTO: _rows(o, 9.0)}},
                "model-floor": {"workloads": {CROP: f}},
                "baseline": {"workloads": {CROP: _rows(b, 50.0), PHOTO: _rows(b, 60.0)}},
            },
            "ceilings": {"ours": {"faces_per_s": c, "model": "m", "tta": "none", "threads": 2}},
        }
        for o, f, b, c in zip(ours, floor_rows, base, ceilings, strict=True)
    ]
    entry = {"cold_start_s": 1.0, "worker_rss_mb": [100.0], "worker_peak_rss_mb": [100.0]}
    result = {"contenders": {n: dict(entry) for n in ("ours", "model-floor", "baseline")}}
    bench.combine_rounds(result, rounds, ["ours"])

    assert list(result["contenders"]["model-floor"]["workloads"]) == [CROP]
    assert result["ratio_rounds"]["model-floor / ceiling, face-crop throughput"] == [0.6, 0.62, 0.5]
    assert result["ratios"]["model-floor / ceiling, face-crop throughput"] == (0.6, "(reference)")
    assert result["ratio_rounds"]["model-floor / baseline, face-crop throughput"] == [30, 20, 55]
    assert result["ratios"]["ours / model-floor, face-crop throughput"] == (0.8, "(compare)")
    assert result["ratio_rounds"]["ours / model-floor, face-crop throughput"] == [0.5, 0.8, 0.91]
    markdown = bench.to_markdown({**result, "date": "d", "machine": "m", "command": "c"})
    assert "| model-floor | face crop 48x48 | 8 | 500.0 |" in markdown  # of 600, 500, 500
    assert "| model-floor / ceiling, face-crop throughput | 0.6 | (reference) | - |" in markdown


def test_the_model_floor_reads_a_face_as_the_server_does(astronaut):
    """bench/floor_app.py's model_app runs the bundled model on the crop it is sent, as the
    server does: the same top emotion, and the same probabilities once the card's temperature
    (which the floor skips) is applied to its own (the server rounds them to 6 places)."""
    import json

    from PIL import Image

    from emotion_server.api import create_app
    from emotion_server.contract import EMOTIONS, apply_temperature

    floor_app = _bench_script("floor_app")
    face = Image.fromarray(astronaut).crop((170, 40, 290, 160)).convert("L").resize((48, 48))
    body = encode(np.asarray(face), quality=95)
    headers = {"Content-Type": "application/octet-stream"}
    floor = floor_app.model_app.test_client().post("/inference", data=body, headers=headers)
    ours = create_app().test_client().post("/inference", data=body, headers=headers)
    assert floor.status_code == ours.status_code == 200
    assert floor.json["prediction"] == ours.json["prediction"] == "happy"
    card = json.loads((ROOT / "models" / "emotion_model.int8.json").read_text())
    raw = np.array([[floor.json["probabilities"][e] for e in EMOTIONS]], np.float32)
    served = np.array([ours.json["probabilities"][e] for e in EMOTIONS])
    expected = apply_temperature(raw, float(card.get("temperature", 1.0)))[0]
    assert np.abs(expected - served).max() < 1e-4


@pytest.fixture(scope="module")
def alignment():
    return _bench_script("alignment")


def test_a_face_made_into_a_photo_is_turned_clockwise_as_seen(alignment):
    face = np.zeros((48, 48), np.uint8)
    face[:16] = 255  # a bright top third
    upright = alignment.as_photo(face, 0)
    assert upright.shape == (256, 256)
    assert upright[60:100, 60:196].mean() > 200 and upright[160:196, 60:196].mean() < 50
    # Turned by 90 clockwise, the top third comes to the right.
    turned = alignment.as_photo(face, 90)
    assert turned[60:196, 160:196].mean() > 200 and turned[60:196, 60:100].mean() < 50


def test_the_threshold_is_chosen_by_the_gain_weighted_over_tilts(alignment, fer_dataset):
    """On a few PublicTest faces, end to end: the rows, the table, the weighted gains."""
    result = alignment.run(fer_dataset.source, limit=12)
    result["command"] = "python bench/alignment.py --limit 12"
    assert [row["angle"] for row in result["rows"]] == list(alignment.ANGLES)
    for row in result["rows"]:
        assert 0 <= row["found"] <= row["faces"] == 12
        assert set(row["accuracy"]) == {str(t) for t in alignment.THRESHOLDS}
    gain = alignment.expected_gain(result)
    assert gain["180.0"] == 0  # never turning, against itself
    table = alignment.markdown(result)
    assert table.count("\n| ") == len(alignment.ANGLES) + 2  # head, angles, the gains


@pytest.fixture(scope="module")
def face_size():
    return _bench_script("face_size")


def test_a_face_is_shown_at_its_size_in_a_photo_of_its_grey(face_size):
    face = np.full((48, 48), 40, np.uint8)
    face[:, 24:] = 220  # a dark left half, a bright right half; median grey 130
    photo = face_size.in_photo(face, 96, np.random.default_rng(0))
    assert photo.shape == (face_size.HEIGHT, face_size.WIDTH)
    rows, cols = np.nonzero(photo != 130)
    # The face and its margin (half its size, continued from its edges): 192 px square.
    assert (np.ptp(rows), np.ptp(cols)) == (191, 191)
    shown = photo[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert shown[:, :90].max() < 60 and shown[:, 102:].min() > 200


def test_face_sizes_end_to_end_on_a_few_faces(face_size, fer_dataset):
    """On a few PublicTest faces: a row per size, the shares within bounds, the table."""
    result = face_size.run(fer_dataset.source, limit=8)
    result["command"] = "python bench/face_size.py --limit 8"
    assert [row["size"] for row in result["rows"]] == list(face_size.SIZES)
    for row in result["rows"]:
        assert 0 <= row["found"] <= row["faces"] == 8
        assert row["read_right"] <= row["found"] / row["faces"]
    assert max(row["found"] for row in result["rows"]) > 0  # some size is found
    assert result["rows"][-1]["sample_found"] is True  # the real face, 144 px wide
    table = face_size.markdown(result)
    assert table.count("\n| ") == len(face_size.SIZES) + 1  # head and a row per size
