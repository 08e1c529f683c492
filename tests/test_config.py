from pathlib import Path

import pytest

from emotion_server.config import Settings, mode_of


def test_defaults_serve_the_bundled_model_on_port_5000():
    settings = Settings.from_env({})
    assert settings.port == 5000 and settings.host == "0.0.0.0"
    assert Path(settings.model_path).name == "emotion_model.int8.onnx"
    assert Path(settings.model_path).is_file()
    assert settings.model_card_path.name == "emotion_model.int8.json"


def test_environment_variables_are_read_and_typed():
    settings = Settings.from_env(
        {
            "PORT": "8080",
            "WEB_CONCURRENCY": "3",
            "EMOTION_MODEL_PATH": "/m/x.onnx",
            "EMOTION_DETECT_THRESHOLD": "0.7",
            "EMOTION_MAX_UPLOAD_BYTES": "1000",
            "EMOTION_DETECTOR": "none",
        }
    )
    assert settings.port == 8080 and settings.workers == 3
    assert settings.model_path == "/m/x.onnx" and settings.detector == "none"
    assert settings.detect_threshold == 0.7 and settings.max_upload_bytes == 1000


def test_overrides_win_over_the_environment():
    assert Settings.from_env({"PORT": "8080"}, port=9000).port == 9000


def test_bad_numbers_fail_loudly():
    with pytest.raises(ValueError):
        Settings.from_env({"PORT": "eighty"})


def test_serve_sets_glibc_malloc_tunables_without_dropping_other_tunables():
    from emotion_server.cli import MALLOC_TUNABLES, use_huge_pages_for_large_buffers

    served = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=2097152"
    env = {}
    use_huge_pages_for_large_buffers(env)
    assert env["GLIBC_TUNABLES"] == ":".join(MALLOC_TUNABLES) == served
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    use_huge_pages_for_large_buffers(env)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + served
    env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}  # the operator's choice stands
    use_huge_pages_for_large_buffers(env)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0:glibc.malloc.mmap_threshold=2097152"


def test_runtime_threads_share_the_cpus_among_the_workers():
    from emotion_server.config import available_cpus

    cpus = available_cpus()
    assert Settings(workers=1).intra_op_threads == cpus
    assert Settings(workers=cpus).intra_op_threads == 1
    assert Settings(workers=4 * cpus).intra_op_threads == 1  # never zero
    assert Settings(workers=1, threads=3).intra_op_threads == 3  # an explicit setting wins
    assert Settings.from_env({"EMOTION_THREADS": "2"}).intra_op_threads == 2


def test_read_deadline_settings():
    settings = Settings.from_env({"EMOTION_READ_TIMEOUT_S": "2.5", "EMOTION_READ_MIN_RATE": "0"})
    assert settings.read_timeout_s == 2.5 and settings.read_min_rate == 0
    assert Settings.from_env({}).read_timeout_s == 10


def test_mode_chooses_a_bundled_model_and_a_path_overrides_it():
    accurate = Settings.from_env({"EMOTION_MODE": "accurate"})
    assert Path(accurate.model_path).parent.name == "models"
    assert Path(accurate.model_path).name.startswith("accurate_model.")
    assert mode_of(accurate.model_path) == "accurate"
    assert mode_of(Settings.from_env({}).model_path) == "default"
    chosen = Settings.from_env({"EMOTION_MODE": "accurate", "EMOTION_MODEL_PATH": "/m/x.onnx"})
    assert chosen.model_path == "/m/x.onnx" and mode_of(chosen.model_path) is None
    with pytest.raises(ValueError, match="EMOTION_MODE must be one of default, accurate"):
        Settings.from_env({"EMOTION_MODE": "fast"})
