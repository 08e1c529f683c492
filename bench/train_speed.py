"""Seconds per FER2013 epoch (28,709 images) of the training loop, beside a bare
forward/backward of the same network on random data: how much the loop itself costs.
With --teachers, also the loop distilling from those runs, both ways a recipe allows
(`distill_targets`): the teachers run on every batch ("online"), or their targets are looked
up ("fixed", computed once per run; that one-off cost is printed too).

    python bench/train_speed.py --arch vgg --arch-args width=64,dense=1024 --steps 20
    python bench/train_speed.py --arch-args width=32,dense=256 --teachers vgg48-s1 vgg48-s2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from emotion_server import hostinfo
from emotion_server.training.architectures import build_spec
from emotion_server.training.torch_nets import build_torch, parameter_count
from emotion_server.training.train import (
    EMA,
    Fit,
    Recipe,
    Teachers,
    _optimizer,
    _schedule,
    _use_bf16,
)

EPOCH_IMAGES = 28709


def parse_arch_args(text: str) -> dict:
    """'width=48,dense=512' -> {'width': 48, 'dense': 512} (numbers as int or float)."""
    values = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        values[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg")
    parser.add_argument("--arch-args", default="width=64,dense=1024")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--teachers", nargs="+", default=[], help="runs to distil from")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(
        architecture=args.arch,
        arch_args=parse_arch_args(args.arch_args),
        batch_size=args.batch,
        bf16="off" if args.fp32 else "auto",
        epochs=1,
    )
    use_bf16 = _use_bf16(recipe.bf16, torch.device("cpu"))
    spec = build_spec(recipe.architecture, **recipe.arch_args)
    model = build_torch(spec).to(memory_format=torch.channels_last)
    per_epoch = EPOCH_IMAGES / args.batch
    print(
        f"{spec.name}: {parameter_count(model) / 1e6:.2f} M parameters, crop {spec.crop}, "
        f"batch {args.batch}, {torch.get_num_threads()} threads, bf16 {use_bf16}, "
        f"on {hostinfo.describe()}"
    )

    # Bare forward/backward/step on one random batch, already cropped.
    optimizer = _optimizer(model, recipe)
    x = torch.rand(args.batch, 1, spec.crop, spec.crop).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 7, (args.batch,))

    def bare_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        bare_step()
    started = time.perf_counter()
    for _ in range(args.steps):
        bare_step()
    bare = (time.perf_counter() - started) / args.steps

    # The real loop: augmentation, EMA, schedule, on uint8 48x48 images.
    rng = np.random.default_rng(0)
    images = torch.from_numpy(
        rng.integers(0, 256, (args.batch * (args.steps + 3), 48, 48), np.uint8)
    )
    labels = torch.from_numpy(rng.integers(0, 7, len(images)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(recipe, args.steps))
    fit = Fit(
        recipe=recipe,
        model=model,
        ema=EMA(model, recipe.ema_decay),
        optimizer=optimizer,
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(0),
        teachers=None,
        targets=None,
        aug=recipe.augmentation(),
        bf16=use_bf16,
    )
    fit.train_one_epoch(images[: 3 * args.batch], labels[: 3 * args.batch], 3)  # warm-up

    def timed_epoch() -> float:
        started = time.perf_counter()
        fit.train_one_epoch(images, labels, args.steps)
        return (time.perf_counter() - started) / args.steps

    def report(name: str, seconds: float) -> None:
        print(f"{name:34s} {seconds * per_epoch:6.1f} s per epoch ({seconds * 1000:.0f} ms/step)")

    report("bare forward/backward:", bare)
    report("training loop:", timed_epoch())
    if args.teachers:
        fit.teachers = Teachers(args.teachers, 2.0).to(memory_format=torch.channels_last)
        report("distilling, online teachers:", timed_epoch())
        # "fixed": a forward pass of each teacher over each image's centre and mirror, once.
        started = time.perf_counter()
        with torch.no_grad():
            for member in fit.teachers.members:
                for _ in range(2):
                    member(x)
        once = (time.perf_counter() - started) / args.batch * EPOCH_IMAGES
        fit.teachers = None
        fit.targets = torch.full((len(images), 7), 1 / 7)
        report("distilling, fixed targets:", timed_epoch())
        print(f"{'  (their one-off computation:':34s} {once:6.1f} s per run)")


if __name__ == "__main__":
    main()
