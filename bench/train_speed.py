"""Seconds per FER2013 epoch (28,709 images) of the training loop, beside a bare
forward/backward of the same network on random data: how much the loop itself costs.

    python bench/train_speed.py --arch vgg --arch-args width=64,dense=1024 --steps 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from emotion_server.training.architectures import build_spec
from emotion_server.training.torch_nets import build_torch, parameter_count
from emotion_server.training.train import (
    EMA,
    Fit,
    Recipe,
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
        f"batch {args.batch}, {torch.get_num_threads()} threads, bf16 {use_bf16}"
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
        aug=recipe.augmentation(),
        bf16=use_bf16,
    )
    fit.train_one_epoch(images[: 3 * args.batch], labels[: 3 * args.batch], 3)  # warm-up
    started = time.perf_counter()
    fit.train_one_epoch(images, labels, args.steps)
    loop = (time.perf_counter() - started) / args.steps
    print(f"bare forward/backward: {bare * per_epoch:6.1f} s per epoch ({bare * 1000:.0f} ms/step)")
    print(f"training loop:         {loop * per_epoch:6.1f} s per epoch ({loop * 1000:.0f} ms/step)")


if __name__ == "__main__":
    main()
