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


@pytest.mark.parametrize(
    ("variable", "text", "fragment"),
    [
        ("PORT", "0", "PORT must be at least 1"),
        ("PORT", "70000", "PORT must be at most 65535"),
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1"),
        ("WEB_CONCURRENCY", "257", "WEB_CONCURRENCY must be at most 256"),
        ("EMOTION_MAX_FACES", "0", "EMOTION_MAX_FACES must be at least 1"),
        ("EMOTION_MAX_FACES", "-1", "EMOTION_MAX_FACES must be at least 1"),
        ("EMOTION_MAX_UPLOAD_BYTES", "0", "EMOTION_MAX_UPLOAD_BYTES must be at least 1"),
        ("EMOTION_VIDEO_MAX_SECONDS", "nan", "EMOTION_VIDEO_MAX_SECONDS must be a finite"),
        ("EMOTION_VIDEO_MAX_SECONDS", "0", "EMOTION_VIDEO_MAX_SECONDS must be above 0"),
        ("EMOTION_READ_TIMEOUT_S", "-1", "EMOTION_READ_TIMEOUT_S must be above 0"),
        ("EMOTION_READ_MIN_RATE", "inf", "EMOTION_READ_MIN_RATE must be a finite"),
        ("EMOTION_BATCH_MAX_WAIT_MS", "-0.5", "EMOTION_BATCH_MAX_WAIT_MS must be at least 0"),
        ("EMOTION_THREADS", "-2", "EMOTION_THREADS must be at least 0"),
        ("EMOTION_API_KEYS", " , ", "EMOTION_API_KEYS is set but holds no key"),
        ("EMOTION_API_KEYS", " ", "EMOTION_API_KEYS is set but holds no key"),
        ("EMOTION_API_KEYS", "ok,clé", "EMOTION_API_KEYS: keys must be printable ASCII"),
        ("EMOTION_MAX_PIXELS", "2000000000", "EMOTION_MAX_PIXELS must be at most 1073741823"),
        ("EMOTION_ALIGN_ROLL", "-1", "EMOTION_ALIGN_ROLL must be at least 0"),
        ("EMOTION_ALIGN_ROLL", "181", "EMOTION_ALIGN_ROLL must be at most 180"),
    ],
)
def test_settings_out_of_range_are_named(variable, text, fragment):
    problem = Settings.from_env({variable: text}).out_of_range()
    assert problem is not None and problem.startswith(fragment), problem


def test_settings_at_their_bounds_are_in_range():
    edges = {
        "PORT": "65535",
        "WEB_CONCURRENCY": "1",
        "EMOTION_MAX_FACES": "1",
        "EMOTION_THREADS": "0",
        "EMOTION_BATCH_MAX_WAIT_MS": "0",
        "EMOTION_VIDEO_MAX_SECONDS": "0.001",
        "EMOTION_API_KEYS": " key ,",
        "EMOTION_READ_MIN_RATE": "0",  # no extra time for large uploads
        "EMOTION_MAX_PIXELS": "1073741823",
        "EMOTION_ALIGN_ROLL": "180",  # never turned
    }
    assert Settings.from_env(edges).out_of_range() is None
    assert Settings().out_of_range() is None


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


def test_runtime_threads_share_the_cpus_among_the_workers(monkeypatch):
    from emotion_server import config

    monkeypatch.setattr(config, "available_cpus", lambda: 8)  # a host where shares differ
    assert Settings(workers=1).intra_op_threads == 8
    assert Settings(workers=2).intra_op_threads == 4
    assert Settings(workers=3).intra_op_threads == 2  # rounded down: never more than the CPUs
    assert Settings(workers=8).intra_op_threads == 1
    assert Settings(workers=32).intra_op_threads == 1  # never zero
    assert Settings(workers=2).idle_intra_op_threads == 8
    assert Settings(workers=1, threads=3).intra_op_threads == 3  # an explicit setting wins
    assert Settings.from_env({"EMOTION_THREADS": "2"}).intra_op_threads == 2


def test_idle_threads_setting_and_its_first_name():
    assert Settings.from_env({"EMOTION_IDLE_THREADS": "3"}).idle_intra_op_threads == 3
    assert Settings.from_env({"EMOTION_DETECT_IDLE_THREADS": "1"}).idle_intra_op_threads == 1
    both = {"EMOTION_IDLE_THREADS": "4", "EMOTION_DETECT_IDLE_THREADS": "1"}
    assert Settings.from_env(both).idle_threads == 4  # the current name wins


def _write(folder, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path):
    from emotion_server.config import cgroup_cpu_limit

    _write(tmp_path, cpu_max="max 100000")
    pod = tmp_path / "kubepods" / "pod1"
    _write(pod, cpu_max="150000 100000")  # a Kubernetes limit of 1.5 CPUs
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") == 1.5
    _write(tmp_path / "kubepods", cpu_max="100000 100000")  # a tighter limit above it
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") == 1.0
    # Inside a container's cgroup namespace the path is "/": the root folder is its own.
    assert cgroup_cpu_limit(pod, "0::/\n") == 1.5
    assert cgroup_cpu_limit(tmp_path / "none", "0::/\n") is None  # nothing to read
    assert cgroup_cpu_limit(tmp_path, "garbage\n\n0::/kubepods/pod1\n") == 1.0


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    from emotion_server.config import cgroup_cpu_limit

    membership = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    _write(tmp_path / "cpu,cpuacct", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    assert cgroup_cpu_limit(tmp_path, membership) is None  # -1: no quota
    container = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    _write(container, cpu_cfs_quota_us="200000", cpu_cfs_period_us="100000")
    assert cgroup_cpu_limit(tmp_path, membership) == 2.0
    # A container without its own cgroup namespace sees the host's path, which does not
    # exist in its /sys/fs/cgroup: its own quota is at the top folder.
    _write(tmp_path / "cpu", cpu_cfs_quota_us="50000", cpu_cfs_period_us="100000")
    assert cgroup_cpu_limit(tmp_path, "1:cpu:/libpod_parent/libpod-1\n") == 0.5


def test_available_cpus_keeps_to_the_quota_rounded_up(monkeypatch):
    from emotion_server import config

    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda: 1.5)
    assert config.available_cpus() == 2
    assert Settings(workers=2).intra_op_threads == 1  # not 32 on a 64-CPU host
    assert Settings().idle_intra_op_threads == 2
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda: 0.2)
    assert config.available_cpus() == 1
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda: None)
    assert config.available_cpus() == 64


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


def test_analysing_files_reads_only_its_own_settings():
    """`classify` runs no server: a stray PORT or CORS entry is no reason to refuse it."""
    serving = {"PORT": "0", "WEB_CONCURRENCY": "0", "EMOTION_CORS_ORIGINS": "https://a/"}
    assert Settings.from_env(serving).out_of_range(serving=False) is None
    assert Settings.from_env(serving).out_of_range() is not None
    problem = Settings.from_env({"EMOTION_MAX_FACES": "0"}).out_of_range(serving=False)
    assert problem and problem.startswith("EMOTION_MAX_FACES")
