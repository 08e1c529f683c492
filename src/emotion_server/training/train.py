"""Train a network on FER2013 Training with a plain PyTorch loop; choose epochs on PublicTest.

A run lives in a folder outside the work tree (`runs_dir()/NAME`) and survives being stopped:
every `checkpoint_every` epochs `checkpoint.pt` is replaced atomically with everything needed
to go on (weights, optimizer, schedule position, EMA weights, RNG states, best-so-far, the
per-epoch log), and `train(..., resume=True)` continues from it with the same result as an
uninterrupted run. `best.pt` holds the EMA weights of the best PublicTest epoch: what
`emotion-server export --run NAME` turns into the shipped Keras model.

The recipe comes from a TOML file (configs/*.toml), so a run can be repeated exactly.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import math
import os
import random
import signal
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emotion_server import hostinfo
from emotion_server.config import available_cpus
from emotion_server.contract import EMOTIONS, scale
from emotion_server.training.architectures import Architecture, build_spec, view_offsets
from emotion_server.training.augment import Augmentation, augment
from emotion_server.training.data import file_sha256, load_cached
from emotion_server.training.torch_nets import build_torch, parameter_count

RUNS_ENV = "EMOTION_RUNS_DIR"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the best PublicTest epoch with the mirror image (flip): what most ship
# The best epoch with the centre view alone, for a model that serves no mirror image (a VGG-64
# default, whose mirror image would cost more than the budget per face).
BEST_CENTRE = "best-centre.pt"
LOCK = "lock"  # held by the process training the run (flock), so no second one starts


def runs_dir() -> Path:
    """Where runs live: $EMOTION_RUNS_DIR, else ~/.cache/emotion-server/runs."""
    configured = os.environ.get(RUNS_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "emotion-server" / "runs"


@dataclass
class Recipe:
    name: str = "default"
    architecture: str = "vgg"
    arch_args: dict = field(default_factory=dict)
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4  # coupled L2, not on BatchNorm weights or biases
    warmup_epochs: int = 2  # linear warm-up, then cosine decay to zero
    label_smoothing: float = 0.1
    flip: bool = True
    rotation_degrees: float = 15.0
    zoom: float = 0.15
    shift: float = 0.1
    erasing: float = 0.5
    ema_decay: float = 0.999  # per step; 0 disables the moving average
    bf16: str = "auto"  # bfloat16 autocast: "auto" = on a GPU or a CPU with native bf16
    # Runs (names or folders) to distil from; with fixed targets also ONNX model files.
    teachers: list[str] = field(default_factory=list)
    distill_weight: float = 0.7  # share of the teacher's softened probabilities in the loss
    distill_temperature: float = 2.0
    # "online": the teachers see each augmented batch (their forward passes cost more than the
    # student's training on a CPU); "fixed": each Training image's target is computed once, at
    # the run's start, from its centre crop and mirror image, and kept in the run folder.
    distill_targets: str = "online"
    # A run (name or folder) whose best.pt starts this one: the network and its moving average
    # begin from those weights, the optimizer and the schedule from scratch (a warm restart).
    init_from: str | None = None
    checkpoint_every: int = 1
    # PublicTest is scored (and best.pt kept) at the first epoch, every epoch of the schedule's
    # last quarter, where the best epoch falls, and every `evaluate_every`-th one before (every
    # epoch under a time budget): on a CPU its two views cost about 8% of a VGG-64 epoch.
    # Training does not depend on it.
    evaluate_every: int = 5
    seed: int = 1
    limit_train: int | None = None  # tests: only the first N Training images
    threads: int = 0  # torch intra-op threads; 0 = every CPU

    def spec(self) -> Architecture:
        return build_spec(self.architecture, **self.arch_args)

    def augmentation(self) -> Augmentation:
        return Augmentation(
            crop=self.spec().crop,
            flip=self.flip,
            rotation_degrees=self.rotation_degrees,
            zoom=self.zoom,
            shift=self.shift,
            erasing=self.erasing,
        )


def load_recipe(path: str | os.PathLike | None, **overrides) -> Recipe:
    values = tomllib.loads(Path(path).read_text()) if path else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown recipe keys: {', '.join(unknown)}")
    return Recipe(**values)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 48, 48] -> the contract's input, channels first: float [N, 1, 48, 48]."""
    return torch.from_numpy(scale(images)).permute(0, 3, 1, 2)


def bf16_is_fast() -> bool:
    """bfloat16 autocast pays only where the CPU multiplies bfloat16 natively (AVX-512 BF16 or
    AMX); on an AVX2-only CPU it is emulated and ~10x slower than float32 (measured)."""
    return not hostinfo.cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def _use_bf16(setting: str | bool, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda" or bf16_is_fast()
    return setting in (True, "on", "true")


@torch.inference_mode()
def predict_views(
    model: nn.Module, images: np.ndarray, views: str = "flip", bf16: bool = False, batch: int = 512
) -> list[np.ndarray]:
    """Softmax probabilities of each view (`architectures.view_offsets`) of uint8 [N, 48, 48]
    faces, one array per view."""
    model.eval()
    device = next(model.parameters()).device
    crop = model.arch.crop
    offsets = view_offsets(crop, views)
    out: list[list[np.ndarray]] = [[] for _ in offsets]
    for start in range(0, len(images), batch):
        x = to_tensor(images[start : start + batch]).to(device)
        for index, (top, left, mirrored) in enumerate(offsets):
            view = x[..., top : top + crop, left : left + crop]
            view = view.flip(-1) if mirrored else view
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out[index].append(F.softmax(model(view).float(), 1).cpu().numpy())
    return [np.concatenate(parts) for parts in out]


def predict_proba(model: nn.Module, images: np.ndarray, views: str = "flip", **kw) -> np.ndarray:
    """Mean probabilities over the views, as the shipped model computes them."""
    return np.mean(predict_views(model, images, views, **kw), axis=0)


class EMA:
    """Exponential moving average of the weights (BatchNorm statistics are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # A shorter memory early on, so the average is not anchored to the random start.
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def _schedule(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = recipe.warmup_epochs * steps_per_epoch
    total = recipe.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def evaluates(done: int, epochs: int, every: int) -> bool:
    """Whether the epoch that brings a run to `done` of `epochs` is scored on PublicTest: every
    `every`-th one, and each of the last quarter of the schedule (at least the last `every`)."""
    return done % max(1, every) == 0 or done > epochs - max(epochs // 4, every)


def epochs_within(done: int, planned: int, seconds_left: float, seconds_per_epoch: float) -> int:
    """How long a run with a time budget lasts, in epochs: `planned`, or fewer where the epochs
    after the `done` ones, each about `seconds_per_epoch`, do not fit in `seconds_left`; never
    fewer than `done` (a run out of time ends at the epoch it has reached)."""
    if seconds_left <= 0:
        return done
    if seconds_per_epoch <= 0:
        return planned
    fits = done + math.floor(seconds_left / seconds_per_epoch)
    return max(done, min(planned, fits))


class Budget:
    """A run's time budget: how many of its planned epochs fit, measured as the run goes.

    Each pass of the epoch loop (the epoch, its PublicTest score, its saves; a run with a budget
    is scored every epoch) is timed on the monotonic clock. An epoch is counted as long as the
    slowest of the last three passes and the one in progress; the process's first pass (warm
    caches, kernel choices) is left out as soon as a second is being timed. The run is
    shortened whenever its epochs no longer fit, and grows back toward the planned length at
    its second epoch (the first one timed without start-up costs) or in the first quarter of
    its current length: later, a longer schedule would raise a learning rate that has begun to
    decay."""

    def __init__(self, deadline: float, planned: Recipe):
        self.deadline = deadline  # on the monotonic clock
        self.planned = planned
        self.passes: list[float] = []
        self._lap = time.monotonic()

    def lap(self) -> None:
        """One pass of the loop has ended (after its saves)."""
        now = time.monotonic()
        self.passes.append(now - self._lap)
        self._lap = now

    def seconds_per_epoch(self) -> float:
        timed = [*self.passes, time.monotonic() - self._lap]
        return max(timed[1:][-3:] if len(timed) >= 2 else timed)

    def recipe(self, done: int, current: Recipe) -> Recipe:
        """`current` with the length that fits now, `done` epochs done; a run shortened below
        its plan has its warm-up cut to a quarter of its length where that is longer."""
        left = self.deadline - time.monotonic()
        length = epochs_within(done, self.planned.epochs, left, self.seconds_per_epoch())
        if length > current.epochs and done > max(2, current.epochs // 4):
            length = current.epochs
        if length == current.epochs:
            return current
        warmup = self.planned.warmup_epochs
        if length < self.planned.epochs:
            warmup = min(warmup, length // 4)
        return replace(current, epochs=length, warmup_epochs=warmup)


def parse_duration(text: str) -> float:
    """'2.5h', '90m', '600s' or '600' -> seconds (positive)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    text = text.strip().lower()
    scale = units.get(text[-1:], 1.0)
    number = text[:-1] if text[-1:] in units else text
    try:
        seconds = float(number) * scale
    except ValueError:
        raise ValueError(f"a duration like 2.5h, 90m or 600s, not {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a duration must be positive and finite, not {text!r}")
    return seconds


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.learning_rate,
        momentum=recipe.momentum,
        nesterov=True,
    )


def _atomic_save(obj: object, path: Path) -> None:
    """Write then rename: a stop mid-write leaves the previous file whole."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_log(log: list[dict], path: Path) -> None:
    if not log:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(log[-1]))
    writer.writeheader()
    writer.writerows(log)
    _atomic_write_text(buffer.getvalue(), path)


def _save_recipe(recipe: Recipe, folder: Path) -> None:
    """The run's recipe as `recipe.toml`, whole or not at all."""
    _atomic_write_text(_to_toml(asdict(recipe)), folder / "recipe.toml")


def _atomic_write_text(text: str, path: Path) -> None:
    """Write then rename, as _atomic_save does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def resolve_run(name_or_path: str | os.PathLike) -> Path:
    """A run folder given as a path, or as a name under `runs_dir()`."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() or path.is_absolute() or len(path.parts) > 1:
        return path
    return runs_dir() / str(name_or_path)


def load_run_model(run: str | os.PathLike, which: str = BEST) -> nn.Module:
    """The network of a run's `best.pt` (EMA weights of its best PublicTest epoch)."""
    return _network(torch.load(resolve_run(run) / which, map_location="cpu", weights_only=False))


def _network(saved: dict) -> nn.Module:
    """The network a best.pt-style file holds (its architecture and weights), for inference."""
    model = build_torch(Architecture.from_dict(saved["arch"]))
    model.load_state_dict(saved["weights"])
    return model.eval()


def best_file(run: str | os.PathLike, views: str) -> Path:
    """The weights that ship a run answering with `views`: `best.pt`, chosen on PublicTest with
    the mirror image; for the centre view alone, `best-centre.pt` where the run kept one and its
    centre view scored better than best.pt's epoch did (a run resumed from a checkpoint older
    than best-centre.pt kept one only from then on), the flip score breaking a tie."""
    return _shipped(run, views)[0]


def _shipped(run: str | os.PathLike, views: str) -> tuple[Path, dict]:
    """`best_file`'s choice, and that file's contents (loaded once)."""
    folder = resolve_run(run)

    def load(name: str) -> dict:
        return torch.load(folder / name, map_location="cpu", weights_only=False)

    flip = load(BEST)
    if views != "centre" or not (folder / BEST_CENTRE).exists():
        return folder / BEST, flip
    centre = load(BEST_CENTRE)
    flip_centre = flip.get("public_test_centre")
    if flip_centre is None:  # a best.pt from before it recorded its centre score: the log has it
        with (folder / "log.csv").open() as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) == flip["epoch"]]
        flip_centre = float(rows[0]["public_centre"]) if rows and rows[0]["public_centre"] else -1
    better = (centre["public_test_centre"], centre["public_test_flip"]) > (
        flip_centre,
        flip["public_test_flip"],
    )
    return (folder / BEST_CENTRE, centre) if better else (folder / BEST, flip)


def shipped_weights(run: str | os.PathLike, views: str) -> tuple[nn.Module, dict]:
    """The network that ships `run` answering with `views` (`best_file`'s weights), and what
    its card says of them: the file and its epoch's PublicTest scores during training (flip as
    `accuracy`, which `recover` reads)."""
    path, saved = _shipped(run, views)
    described = {
        "weights": path.name,  # best.pt, or best-centre.pt for the centre view alone
        "best": {
            "accuracy": saved["public_test_flip"],
            "centre": saved.get("public_test_centre"),
            "epoch": saved["epoch"],
        },
    }
    return _network(saved), described


def _warm_start(model: nn.Module, ema: EMA | None, recipe: Recipe, spec: Architecture) -> Path:
    """Load `recipe.init_from`'s best weights into the network and its moving average (the
    two runs must describe the same network); returns the file they came from."""
    path = resolve_run(recipe.init_from) / BEST
    if not path.exists():
        raise FileNotFoundError(
            f"no {path} to start from: train {recipe.init_from} first, or bring a shipped "
            "model back as that run with `emotion-server recover`"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    if Architecture.from_dict(state["arch"]) != spec:
        raise ValueError(
            f"{recipe.init_from} is a {state['arch'].get('name', '?')} network, "
            f"not this recipe's {spec.name}: a warm start needs the same network"
        )
    model.load_state_dict(state["weights"])
    if ema is not None:
        ema.model.load_state_dict(state["weights"])
    return path


def runs_summary(run: str | os.PathLike) -> dict:
    """What a run's checkpoint says about it: recipe, progress, best epoch, time spent."""
    folder = resolve_run(run)
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    log = state["log"]
    best = state["best"]
    if (folder / BEST).exists():
        # best.pt is saved whenever PublicTest improves, the checkpoint only every
        # `checkpoint_every` epochs: the weights that ship are best.pt's, so is their epoch.
        saved = torch.load(folder / BEST, map_location="cpu", weights_only=False)
        best = {"accuracy": saved["public_test_flip"], "epoch": saved["epoch"]}
    return {
        "run": folder.name,
        "recipe": state["recipe"],
        "architecture": state["arch"],
        "epochs_done": state["epoch"],
        "epochs": state["recipe"]["epochs"],
        "best": best,
        "train_wall_seconds": state.get("train_wall_seconds")
        or round(sum(row["epoch_seconds"] for row in log), 1),
        "last_epoch": log[-1] if log else None,
        **({"recovered_from": state["recovered_from"]} if state.get("recovered_from") else {}),
    }


class Teachers(nn.Module):
    """Mean softened probabilities of one or more trained runs, for distillation."""

    def __init__(self, runs: list[str], temperature: float):
        super().__init__()
        self.members = nn.ModuleList(load_run_model(run) for run in runs)
        self.temperature = temperature

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [F.softmax(m(x).float() / self.temperature, 1) for m in self.members]
        return torch.stack(probs).mean(0)


TARGETS = "teacher_targets.pt"


def is_model_file(teacher: str | os.PathLike) -> bool:
    """A teacher named by an ONNX model file (usable with fixed targets) instead of a run."""
    return str(teacher).lower().endswith(".onnx")


def predict_model_file(path: str | os.PathLike, images: np.ndarray, chunk: int = 512):
    """An ONNX model's probabilities of 48x48 greyscale images, loaded and run as the server
    runs it (emotion_server.model)."""
    from emotion_server.model import EmotionModel

    model = EmotionModel(path, threads=torch.get_num_threads())
    probabilities = np.concatenate(
        [model.predict(scale(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    )
    return without_balance(probabilities, model.card)


def without_balance(probabilities: np.ndarray, card: dict) -> np.ndarray:
    """A shipped model's probabilities without the class-balance adjustment `export` built
    into its final bias (its card's training.balance.bias, added to the logits): the same
    teacher as the run it came from, not one leaning towards the rare classes. Exact for one
    view; for the mean of two views (a flip in the graph), close."""
    bias = ((card.get("training") or {}).get("balance") or {}).get("bias")
    if not bias:
        return probabilities
    unadjusted = probabilities.astype(np.float64) * np.exp(-np.asarray(bias, np.float64))
    return unadjusted / unadjusted.sum(1, keepdims=True)


def _teacher_digest(teacher: str) -> str | None:
    """sha256 of the file a teacher's weights come from (its run's best.pt, or the model
    file); None where it is gone."""
    return file_sha256(Path(teacher) if is_model_file(teacher) else resolve_run(teacher) / BEST)


def fixed_targets(
    recipe: Recipe,
    images: np.ndarray,
    folder: Path,
    device: torch.device,
    progress: Callable[[str], None] = print,
) -> torch.Tensor:
    """The teachers' mean softened probabilities (temperature `distill_temperature`) of each
    image's centre crop and its mirror image: computed once and kept in the run folder, so a
    resumed run reads them instead of running the teachers again.

    Kept targets are read only for the same images in the same order (a digest of their
    pixels: FER2013 read from its CSV and from its folders comes in different orders) and the
    same teachers: one still there whose weights changed (trained again, recovered) makes them
    anew; one gone is taken on trust, so the targets outlive their teachers."""
    path = folder / TARGETS
    key = {
        "teachers": list(recipe.teachers),
        "temperature": recipe.distill_temperature,
        "images": len(images),
        "pixels_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
    }
    weights = {teacher: _teacher_digest(teacher) for teacher in recipe.teachers}
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        kept = saved.get("weights_sha256", {})
        if saved["key"] == key and all(
            digest is None or kept.get(teacher) == digest for teacher, digest in weights.items()
        ):
            return saved["targets"]
    started = time.time()
    total = np.zeros((len(images), len(EMOTIONS)), np.float64)

    def soften(probabilities: np.ndarray) -> np.ndarray:
        # softmax(z / T) from softmax(z): the logits are log p up to a constant.
        logits = torch.from_numpy(np.log(probabilities.astype(np.float64) + 1e-12))
        return torch.softmax(logits / key["temperature"], 1).numpy()

    for teacher in recipe.teachers:
        if is_model_file(teacher):
            # A served model (a bundled one, say): its own test-time views are in its graph;
            # it counts as much as a run's two views.
            total += 2 * soften(predict_model_file(teacher, images))
            continue
        model = load_run_model(teacher).to(device, memory_format=torch.channels_last)
        for probabilities in predict_views(model, images, "flip"):
            total += soften(probabilities)
        del model
    targets = torch.from_numpy((total / (2 * len(recipe.teachers))).astype(np.float32))
    _atomic_save({"key": key, "weights_sha256": weights, "targets": targets}, path)
    progress(
        f"distillation targets from {', '.join(recipe.teachers)} for {len(images)} images "
        f"in {time.time() - started:.0f} s, kept in {path}"
    )
    return targets


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block, or raise FileExistsError if another process
    holds it: two processes training one run would write over each other's checkpoints and
    share the cores. The lock goes with the process, however it ends (flock; not on Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with (folder / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(
                f"{folder} is being trained by another process: stop it (or let it end) first"
            ) from None
        yield


def train(
    recipe: Recipe | None,
    run: str | os.PathLike,
    data_path: str | None = None,
    resume: bool = False,
    progress: Callable[[str], None] = print,
    epochs: int | None = None,
    time_budget_s: float | None = None,
) -> dict:
    """`_train` in the run folder, holding its lock (`run_lock`)."""
    if time_budget_s is not None and not (math.isfinite(time_budget_s) and time_budget_s > 0):
        raise ValueError(f"a time budget must be positive and finite, not {time_budget_s!r}")
    folder = resolve_run(run)
    if resume and not (folder / CHECKPOINT).exists():
        raise FileNotFoundError(f"no checkpoint to resume in {folder}")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(folder):
            return _train(recipe, folder, data_path, resume, progress, epochs, time_budget_s)
    except BaseException:
        # A start refused before anything was written (a recipe's mistake) leaves no folder.
        if made and [path.name for path in folder.iterdir()] == [LOCK]:
            (folder / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _train(
    recipe: Recipe | None,
    folder: Path,
    data_path: str | None,
    resume: bool,
    progress: Callable[[str], None],
    epochs: int | None,
    time_budget_s: float | None,
) -> dict:
    """Train `recipe` into the run folder `folder`, or (resume=True) continue the run there,
    `epochs` long if given: the cosine schedule follows the new length from where it is.

    With `time_budget_s`, the run ends within that many seconds from now, its schedule
    complete: after each epoch, the run's length becomes the planned epochs that fit in the
    time left, as this process measures them (`Budget`), and the cosine decay follows it.
    Returns the run's summary (best PublicTest accuracy and epoch, log)."""
    deadline = time.monotonic() + time_budget_s if time_budget_s else None
    checkpoint_path = folder / CHECKPOINT
    state = None
    if resume:  # train() found its checkpoint
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("recovered_from"):
            raise ValueError(
                f"{folder} was recovered from {state['recovered_from']} and has no optimizer "
                "state: it can be an ensemble member or a teacher, not resumed"
            )
        recipe = Recipe(**state["recipe"])
        if epochs is not None and epochs != recipe.epochs:
            if epochs <= state["epoch"]:
                raise ValueError(
                    f"{folder} has done {state['epoch']} epochs already: give it more than that"
                )
            recipe = replace(recipe, epochs=epochs)
            _save_recipe(recipe, folder)
    elif checkpoint_path.exists():
        raise FileExistsError(f"{folder} already holds a run: resume it or choose another name")
    if recipe is None:
        raise ValueError("a recipe is needed to start a run")

    # The CPUs this process may use (as the server counts them): a run pinned to some
    # (taskset, a cpuset) uses those, so runs side by side do not oversubscribe the cores.
    threads = recipe.threads or available_cpus()
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    random.seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)

    data = load_cached(data_path)
    x_train = torch.from_numpy(data["Training"].images)
    y_train = torch.from_numpy(data["Training"].labels)
    if recipe.limit_train:
        x_train, y_train = x_train[: recipe.limit_train], y_train[: recipe.limit_train]
    public = data["PublicTest"]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = _use_bf16(recipe.bf16, device)
    spec = recipe.spec()
    model = build_torch(spec).to(device, memory_format=torch.channels_last)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay else None
    optimizer = _optimizer(model, recipe)
    steps_per_epoch = len(x_train) // recipe.batch_size  # full batches only
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(recipe, steps_per_epoch))
    if recipe.distill_targets not in ("online", "fixed"):
        raise ValueError(
            f"distill_targets must be 'online' or 'fixed', not {recipe.distill_targets!r}"
        )
    teachers, targets = None, None
    if recipe.teachers and recipe.distill_targets == "fixed":
        targets = fixed_targets(recipe, x_train.numpy(), folder, device, progress)
    elif recipe.teachers:
        if any(is_model_file(teacher) for teacher in recipe.teachers):
            raise ValueError("a model file is a teacher only with distill_targets = 'fixed'")
        teachers = Teachers(recipe.teachers, recipe.distill_temperature).to(
            device, memory_format=torch.channels_last
        )
    fit = Fit(
        recipe=recipe,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=generator,
        teachers=teachers,
        targets=targets,
        aug=recipe.augmentation(),
        bf16=use_bf16,
    )
    start_epoch, best, log = 0, {"accuracy": -1.0, "epoch": 0}, []
    best_centre = {"accuracy": -1.0, "epoch": 0}
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        generator.set_state(state["rng"]["data"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            # Dropout and augmentation on the GPU draw from its own generators.
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        start_epoch, best, log = state["epoch"], state["best"], state["log"]
        # Checkpoints from before best-centre.pt start its search at the epoch they resume.
        best_centre = state.get("best_centre", best_centre)
        progress(f"resumed {folder} at epoch {start_epoch}/{recipe.epochs}")
    else:
        if recipe.init_from:
            progress(f"weights from {_warm_start(model, ema, recipe, spec)}")
        _save_recipe(recipe, folder)
        progress(
            f"run {folder}: {spec.name}, {parameter_count(model) / 1e6:.2f} M parameters, "
            f"{recipe.epochs} epochs of {steps_per_epoch} steps, {threads} threads, "
            f"{device.type}, bf16 {use_bf16}"
        )

    budget = Budget(deadline, recipe) if deadline is not None else None
    # A run with a time budget is scored every epoch: the budget times whole epochs, scoring
    # included, and may end the run at any one of them.
    every = 1 if budget is not None else recipe.evaluate_every
    # SIGTERM (a time limit, `kill`) ends the epoch loop like Ctrl-C: the last checkpoint stays.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    epoch = start_epoch
    try:
        while epoch < recipe.epochs:
            started = time.time()
            loss = fit.train_one_epoch(x_train, y_train, steps_per_epoch)
            train_seconds = time.time() - started
            judged = ema.model if ema is not None else model
            accuracy = centre_accuracy = None
            # The first epoch is scored too, so a run stopped early still has a best.pt.
            if best["epoch"] == 0 or evaluates(epoch + 1, recipe.epochs, every):
                centre, mirror = predict_views(judged, public.images, "flip", bf16=use_bf16)
                accuracy = float(((centre + mirror).argmax(1) == public.labels).mean())
                centre_accuracy = round(float((centre.argmax(1) == public.labels).mean()), 4)
            row = {
                "epoch": epoch + 1,
                "loss": round(loss, 4),
                "lr": round(scheduler.get_last_lr()[0], 5),
                "public_flip": None if accuracy is None else round(accuracy, 4),
                "public_centre": centre_accuracy,
                "train_seconds": round(train_seconds, 1),
                "epoch_seconds": round(time.time() - started, 1),
            }
            log.append(row)
            if accuracy is not None:
                saved = {
                    "arch": spec.to_dict(),
                    "recipe": asdict(recipe),
                    "epoch": epoch + 1,
                    "public_test_flip": accuracy,
                    "public_test_centre": centre_accuracy,
                    "weights": judged.state_dict(),
                }
                if accuracy > best["accuracy"]:
                    best = {"accuracy": accuracy, "epoch": epoch + 1}
                    _atomic_save(saved, folder / BEST)
                if centre_accuracy > best_centre["accuracy"]:
                    best_centre = {"accuracy": centre_accuracy, "epoch": epoch + 1}
                    _atomic_save(saved, folder / BEST_CENTRE)
            scored = (
                f"PublicTest {row['public_centre']:.4f} centre / {accuracy:.4f} flip "
                if accuracy is not None
                else "PublicTest not scored this epoch "
            )
            progress(
                f"epoch {epoch + 1}/{recipe.epochs} loss {row['loss']:.4f} {scored}"
                f"(best {best['accuracy']:.4f} at {best['epoch']}) {row['epoch_seconds']:.0f} s"
            )
            done = epoch + 1
            if budget is not None:
                fitted = budget.recipe(done, recipe)
                if fitted != recipe:
                    progress(
                        f"time budget: the run ends at epoch {fitted.epochs} of the "
                        f"{budget.planned.epochs} planned (about "
                        f"{budget.seconds_per_epoch():.0f} s per epoch)"
                        + (
                            "; no time for another, so its learning rate ends where it is"
                            if fitted.epochs == done < budget.planned.epochs
                            else ""
                        )
                    )
                    recipe = fit.recipe = fitted
                    schedule = _schedule(recipe, steps_per_epoch)
                    scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
                    _save_recipe(recipe, folder)
            if done % recipe.checkpoint_every == 0 or done == recipe.epochs:
                state = fit.checkpoint(spec, done, best, log, best_centre)
                if budget is not None:  # what was asked, beside what fitted
                    state["time_budget"] = {
                        "seconds": time_budget_s,
                        "planned_epochs": budget.planned.epochs,
                    }
                _atomic_save(state, checkpoint_path)
                _write_log(log, folder / "log.csv")
            if budget is not None:
                budget.lap()
            epoch = done
    except KeyboardInterrupt:
        progress(
            f"stopped during epoch {epoch + 1}; resume with: emotion-server train --resume {folder}"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {
        "run": str(folder),
        "epochs_done": len(log),
        "best_epoch": best["epoch"],
        "public_test_flip": best["accuracy"],
        "log": log,
        "hardware": hostinfo.describe(),
    }


@dataclass
class Fit:
    """Everything a run changes as it trains, and what its checkpoint saves."""

    recipe: Recipe
    model: nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # shuffling and augmentation
    teachers: Teachers | None
    targets: torch.Tensor | None  # fixed distillation targets, one row per Training image
    aug: Augmentation
    bf16: bool

    def train_one_epoch(self, x_train: torch.Tensor, y_train: torch.Tensor, steps: int) -> float:
        """`steps` full batches in a fresh shuffled order; returns the mean loss."""
        recipe, model = self.recipe, self.model
        model.train()
        device = next(model.parameters()).device
        order = torch.randperm(len(x_train), generator=self.generator)
        total = 0.0
        for step in range(steps):
            rows = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            # Augmentation draws from the CPU generator, so a run is the same on any device.
            images = augment(to_tensor(x_train[rows].numpy()), self.aug, self.generator)
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            labels = y_train[rows].to(device)
            soft = self.targets[rows].to(device) if self.targets is not None else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = model(images)
                if self.teachers is not None:
                    soft = self.teachers(images)
            logits = logits.float()
            loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
            if soft is not None:
                t = recipe.distill_temperature
                kd = F.kl_div(F.log_softmax(logits / t, 1), soft, reduction="batchmean") * t * t
                loss = (1 - recipe.distill_weight) * loss + recipe.distill_weight * kd
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(model, self.scheduler.last_epoch)
            total += loss.item()
        return total / max(1, steps)

    def checkpoint(
        self,
        spec: Architecture,
        epoch: int,
        best: dict,
        log: list[dict],
        best_centre: dict,
    ) -> dict:
        return {
            "format": 1,
            "recipe": asdict(self.recipe),
            "arch": spec.to_dict(),
            "epoch": epoch,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "data": self.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            },
            "best": best,
            "best_centre": best_centre,
            "log": log,
        }


def _to_toml(values: dict) -> str:
    """A recipe as TOML (flat keys, one inline table), so `recipe.toml` reruns the run."""

    def literal(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {literal(v)}" for k, v in value.items()) + " }"
        if isinstance(value, list | tuple):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        return repr(value)

    return "".join(
        f"{key} = {literal(value)}\n" for key, value in values.items() if value is not None
    )
