"""bench/run.py's rounds: the median run per row, and each ratio taken within every round."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

CROP, PHOTO = "face crop 48x48", "photo 640x480"


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("bench_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
