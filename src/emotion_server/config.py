"""All settings, read from environment variables with defaults, in one place.

The README's settings table lists the same variables; `Settings.from_env()` is the only
reader of the environment in the serving code.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

# The bundled models, by the name EMOTION_MODE gives them: each is models/<stem>.int8.onnx (its
# float32 original, <stem>.onnx, beside it; the Keras drop-in is <stem>.h5).
MODES = {"default": "emotion_model", "accurate": "accurate_model"}


def bundled_model(mode: str = "default") -> str:
    """The served file of a bundled model: models/<stem>.int8.onnx, else models/<stem>.onnx
    where only the float32 export ships; in the working directory, else in this checkout."""
    if mode not in MODES:
        raise ValueError(f"EMOTION_MODE must be one of {', '.join(MODES)}, not {mode!r}")
    checkout = Path(__file__).resolve().parents[2]
    names = [Path("models") / f"{MODES[mode]}{suffix}" for suffix in (".int8.onnx", ".onnx")]
    for folder in (Path(), checkout):
        for name in names:
            if (folder / name).exists():
                return str(folder / name)
    return str(names[0])  # missing: `serve` says so before it starts


@functools.cache
def mode_of(model_path: str | os.PathLike) -> str | None:
    """The mode whose bundled model this file is, or None for any other file (looked up once
    per file: /summary asks on every call)."""
    resolved = Path(model_path).resolve()
    for mode in MODES:
        if Path(bundled_model(mode)).resolve() == resolved:
            return mode
    return None


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 5000
    # Which bundled model serves (MODES): "default", or "accurate" (slower per face, more
    # accurate: docs/model.md). model_path, when set, names any other ONNX file instead.
    mode: str = "default"
    model_path: str = ""
    # Test-time augmentation: "auto" uses what the model card was evaluated with.
    tta: str = "auto"
    # or "blazeface" (then CenterFace), "yunet"; "none": always classify the whole image
    detector: str = "centerface"
    detect_threshold: float = 0.5
    # CenterFace's weights, both shipped with the package (scripts/model/centerface.py):
    # "float32", "int8" (a third less CPU per photo, misses the faintest small faces), or
    # "mixed": INT8 in the first pass, which looks only for large faces and finds them as
    # float32 does, float32 in the full-size pass (bench/detectors.py; docs/performance.md).
    detect_precision: str = "mixed"
    # Faces at least this wide (pixels) are found by a first pass at reduced size; smaller ones
    # by a second at detect_max_side, which runs where the first finds no face or a narrower one
    # (faces.py; 0: that one alone).
    detect_large_face: int = 56
    detect_max_side: int = 800  # large uploads are downscaled to this before detection
    crop_size_limit: int = 96  # images no larger than this are taken as a face crop
    # A face tilted more than this many degrees in the picture (its eyes' line, FaceBox.roll)
    # is turned upright before the model sees it (crops.py); 180: never.
    align_roll: float = 10.0
    max_faces: int = 20
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_batch_images: int = 16  # files in one POST /inference/batch
    max_batch_bytes: int = 64 * 1024 * 1024  # the whole batch request; each file: max_upload_bytes
    # POST /inference/video and `classify` on video files (video_reader.py, timeline.py).
    video_max_bytes: int = 100 * 1024 * 1024  # the upload; raw body or multipart
    video_max_seconds: float = 120.0  # longest video (by its timestamps)
    video_fps: float = 2.0  # frames analysed per second of video, unless the request says
    video_max_fps: float = 15.0  # the most a request may ask for
    threads: int = 0  # ONNX Runtime intra-op threads per worker; 0: the CPUs shared by the workers
    # Threads for an analysis when nothing else is being analysed on the server (activity.py):
    # a photo's INT8 face search and the emotion model's call then use the cores the other
    # workers leave idle; 0: all the CPUs this process may use; 1 or no more than `threads`:
    # off. EMOTION_IDLE_THREADS (EMOTION_DETECT_IDLE_THREADS, its first name, is read too).
    idle_threads: int = 0
    workers: int = 2
    worker_threads: int = 1  # gunicorn threads per worker (gthread worker when > 1)
    batch_max_size: int = 32  # micro-batching: most crops in one model call
    batch_max_wait_ms: float = 2.0  # micro-batching: longest wait for more crops (0: off)
    timeout: int = 30
    # gunicorn's access log: "requests" (every request but the health probes answered 2xx),
    # "all", or "off" (accesslog.py).
    access_log: str = "requests"
    # Slow clients (workers.py): a request must arrive whole within read_timeout_s seconds,
    # plus 1 s per read_min_rate bytes received, or it is answered 408 and closed; each write
    # of the answer must be taken within the same bound, or the connection is closed.
    read_timeout_s: float = 10.0
    read_min_rate: float = 100_000.0
    # Access control (api/auth.py, api/cors.py): comma-separated lists; empty turns them off.
    api_keys: str = field(default="", repr=False)  # keys accepted in X-API-Key or Bearer
    cors_origins: str = ""  # origins given Access-Control-Allow-Origin; "*" for any

    def __post_init__(self):
        if not self.model_path:  # the bundled model of the chosen mode
            object.__setattr__(self, "model_path", bundled_model(self.mode))

    @property
    def work_budget_s(self) -> float:
        """The most seconds of analysis one request may take (a video, a batch): a worker busy
        past gunicorn's `timeout` (its heartbeat waits on the work) is killed, with every
        connection it holds, so the work stops short of it."""
        return self.timeout * WORK_SHARE_OF_TIMEOUT

    @property
    def intra_op_threads(self) -> int:
        """`threads`, or where it is 0 the CPUs this process may use divided among the
        workers (one thread each on 2 CPUs with 2 workers; 4 each on 8 CPUs)."""
        return self.threads or max(1, available_cpus() // max(1, self.workers))

    @property
    def idle_intra_op_threads(self) -> int:
        """`idle_threads`, or where it is 0 every CPU this process may use."""
        return self.idle_threads or available_cpus()

    @property
    def api_key_list(self) -> tuple[str, ...]:
        return _split(self.api_keys)

    def out_of_range(self, serving: bool = True) -> str | None:
        """The first setting outside the values it can take, as a message naming its
        variable; None where all are within them (ops.startup_problem refuses to start).
        `serving=False` (the `classify` command): only those that analysing files reads."""
        for key, (lowest, strict) in LOWEST.items():
            if not (serving or key in ANALYSIS):
                continue
            value, name = getattr(self, key), variable_names(key)[0]
            if isinstance(value, float) and not math.isfinite(value):
                return f"{name} must be a finite number, not {value}"
            if value < lowest or (strict and value == lowest):
                bound = f"above {lowest:g}" if strict else f"at least {lowest:g}"
                return f"{name} must be {bound}, not {value:g}"
            if value > HIGHEST.get(key, math.inf):
                return f"{name} must be at most {HIGHEST[key]}, not {value}"
        if not serving:
            return None
        for origin in self.cors_origin_list:
            if origin == "null":
                return (
                    "EMOTION_CORS_ORIGINS: 'null' is what sandboxed frames and local files "
                    "send; allowing it would let any of them call the API"
                )
            if origin != "*" and not ORIGIN.fullmatch(origin):
                return (
                    f"EMOTION_CORS_ORIGINS: {origin!r} is not an origin as browsers send it, "
                    "scheme://host or scheme://host:port (no path, no trailing slash)"
                )
        if self.api_keys and not self.api_key_list:
            # "," or " " or "${K1},${K2}" with the variables unset: keys were meant, none came.
            return "EMOTION_API_KEYS is set but holds no key (only commas and spaces)"
        if not all(key.isascii() and key.isprintable() for key in self.api_key_list):
            # A header's value reaches the app as Latin-1: a key in other text never matches.
            return "EMOTION_API_KEYS: keys must be printable ASCII (as HTTP headers carry them)"
        return None

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """Lower-cased, as browsers send an Origin's scheme and host."""
        return tuple(origin.lower() for origin in _split(self.cors_origins))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        """Settings from EMOTION_* variables (and PORT/HOST/WEB_CONCURRENCY), then overrides."""
        env = os.environ if environ is None else environ
        values = {}
        for item in fields(cls):
            for name in variable_names(item.name):
                if env.get(name):
                    try:
                        values[item.name] = _PARSERS[item.type](env[name])
                    except ValueError:
                        kind = {"int": "a whole number", "float": "a number"}[item.type]
                        raise ValueError(f"{name} must be {kind}, not {env[name]!r}") from None
                    break
        return cls(**{**values, **overrides})

    @property
    def model_card_path(self) -> Path:
        return Path(self.model_path).with_suffix(".json")


_PARSERS = {"str": str, "int": int, "float": float}


def available_cpus() -> int:
    """CPUs this process may use: those it may run on (a container's cpuset included), no more
    than its cgroup's CPU quota allows, rounded up (`docker run --cpus`, a Kubernetes CPU
    limit: the host's CPUs stay visible there, but threads beyond the quota are throttled)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cpus, math.ceil(limit))) if limit is not None else cpus


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: str | None = None
) -> float | None:
    """The CPU quota of this process's cgroup and of those above it (the smallest), in CPUs,
    from cgroup v2's `cpu.max` or v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`; None where
    none is set or none can be read. `membership` is /proc/self/cgroup's text."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in membership.splitlines():
        entry = line.split(":", 2)
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if controllers == "":  # cgroup v2
            folders, read = [root], _v2_quota
        elif "cpu" in controllers.split(","):
            # "cpu,cpuacct" and "cpu" are usually one folder under two names: read it once.
            folders = list(dict.fromkeys(f.resolve() for f in (root / controllers, root / "cpu")))
            read = _v1_quota
        else:
            continue
        for folder in folders:
            for level in _levels(folder, path):
                quota = read(level)
                if quota is not None:
                    limits.append(quota)
    return min(limits) if limits else None


def _levels(folder: Path, path: str) -> list[Path]:
    """`folder`/`path` and each folder above it up to `folder`, those that exist. Inside a
    container's cgroup namespace the path is "/" and `folder` is the container's own."""
    parts = [part for part in path.split("/") if part]
    levels = [folder.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [level for level in levels if level.is_dir()]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


# An Origin header's form: scheme://host[:port], nothing after it.
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+")

# The least value of each numeric setting, and whether it must be above it rather than at
# least it. Floats must also be finite ("nan" parses, and compares false with every limit).
LOWEST: dict[str, tuple[float, bool]] = {
    "port": (1, False),
    "workers": (1, False),
    "worker_threads": (1, False),
    "timeout": (1, False),
    "threads": (0, False),
    "idle_threads": (0, False),
    "crop_size_limit": (0, False),
    "align_roll": (0, False),
    "max_faces": (1, False),
    "max_upload_bytes": (1, False),
    "max_pixels": (1, False),
    "max_batch_images": (1, False),
    "max_batch_bytes": (1, False),
    "video_max_bytes": (1, False),
    "video_max_seconds": (0, True),
    "video_fps": (0, True),
    "video_max_fps": (0, True),
    "batch_max_size": (1, False),
    "batch_max_wait_ms": (0, False),
    "read_timeout_s": (0, True),
    "read_min_rate": (0, False),  # 0: no extra time for large uploads
    "detect_threshold": (0, True),
}


# The settings that analysing files reads (`classify`); the others are the server's.
ANALYSIS = frozenset(
    {"threads", "idle_threads", "crop_size_limit", "max_faces", "max_pixels", "video_fps"}
    | {"video_max_fps", "batch_max_size", "detect_threshold", "align_roll"}
)

# The share of gunicorn's timeout that one request's analysis may use (work_budget_s).
WORK_SHARE_OF_TIMEOUT = 0.8

# Worker processes the shared count of analyses in progress can tell apart (activity.py).
MAX_WORKERS = 256
# The greatest value of a setting where there is one. Pixels: FFmpeg's decoders take their
# bound (twice this, video_reader.py) as a C int.
HIGHEST = {
    "port": 65535,
    "workers": MAX_WORKERS,
    "max_pixels": (2**31 - 1) // 2,
    "align_roll": 180,
}


def variable_names(setting: str) -> tuple[str, ...]:
    """The environment variables a setting is read from, the first named in messages."""
    return ENV_NAMES.get(setting, (f"EMOTION_{setting.upper()}",))


def _split(value: str) -> tuple[str, ...]:
    """A comma-separated setting -> its non-empty items, stripped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


# Variables with conventional names; everything else is EMOTION_<FIELD>.
ENV_NAMES = {
    "host": ("HOST",),
    "port": ("PORT",),
    "workers": ("WEB_CONCURRENCY", "EMOTION_WORKERS"),
    "model_path": ("EMOTION_MODEL_PATH", "MODEL_PATH"),
    "idle_threads": ("EMOTION_IDLE_THREADS", "EMOTION_DETECT_IDLE_THREADS"),
}
