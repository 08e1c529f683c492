"""A run folder rebuilt from a model that `export --run` wrote.

Run folders live outside the work tree, so a new machine starts without them; the shipped
`.h5` and its model card still hold everything an ensemble or a distillation needs from a
finished run: the network's description, its trained weights and the logit adjustment that
export built into the final bias. `recover_run` takes that adjustment back out and writes
`best.pt` and a finished `checkpoint.pt` that `ensemble`, `export` and `--teachers` read like
any other run's. It has no optimizer state, so it cannot be resumed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emotion_server.contract import scale


def recover_run(
    model: str | os.PathLike,
    run: str | os.PathLike,
    card: str | os.PathLike | None = None,
) -> dict:
    """Write the run folder `run` (a name or path) from `model` (.h5) and its card (the
    `.json` or `.train.json` beside it unless given); return what was written and the parity
    measured."""
    import keras
    import torch

    from emotion_server.training.architectures import Architecture
    from emotion_server.training.export import check_parity, keras_predict, sample_inputs
    from emotion_server.training.keras_nets import copy_weights_to_torch
    from emotion_server.training.torch_nets import build_torch
    from emotion_server.training.train import BEST, CHECKPOINT, predict_proba, resolve_run

    model = Path(model)
    if card:
        card_path = Path(card)
    else:  # the model card `evaluate` wrote, else the `.train.json` of `export --run`
        card_path = next(
            (
                p
                for p in (model.with_suffix(".json"), model.with_suffix(".train.json"))
                if p.exists()
            ),
            model.with_suffix(".json"),
        )
    if not card_path.exists():
        raise FileNotFoundError(
            f"no model card {card_path}: recover needs the card (or .train.json) export wrote"
        )
    described = json.loads(card_path.read_text())
    training = described.get("training", described) or {}
    if "architecture" not in training or "recipe" not in training:
        raise ValueError(
            f"{card_path} does not describe one trained network (an ensemble's card, or a "
            "model not written by `export --run`): there is no run to recover"
        )
    folder = resolve_run(run)
    if (folder / CHECKPOINT).exists():
        raise FileExistsError(f"{folder} already holds a run: choose another name")

    arch = Architecture.from_dict(training["architecture"])
    net = build_torch(arch).eval()
    shipped = keras.saving.load_model(model, compile=False)
    try:
        body = shipped.get_layer(arch.name)
    except ValueError as exc:
        raise ValueError(f"{model} has no network named {arch.name!r} inside it") from exc
    copy_weights_to_torch(body, net)

    # The shipped model answers with the card's views and the adjusted bias: check that the
    # copied network does the same before taking the adjustment out.
    faces = np.round(sample_inputs()[..., 0] * 255).astype(np.uint8)
    views = training.get("views", "centre")
    parity = check_parity(
        "the recovered network and the .h5",
        predict_proba(net, faces, views),
        keras_predict(shipped, scale(faces)),
    )
    balance = training.get("balance") or {}
    if balance.get("bias"):
        with torch.no_grad():
            net.layers["probabilities"].bias -= torch.tensor(balance["bias"], dtype=torch.float32)

    best = training.get("best") or {
        "accuracy": training.get("public_test_accuracy"),
        "epoch": training.get("best_epoch"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "arch": arch.to_dict(),
            "recipe": training["recipe"],
            "epoch": best["epoch"],
            "public_test_flip": best["accuracy"],
            "weights": net.state_dict(),
        },
        folder / BEST,
    )
    last = training.get("last_epoch")
    torch.save(
        {
            "format": 1,
            "recovered_from": str(model),
            "recipe": training["recipe"],
            "arch": arch.to_dict(),
            "epoch": training.get("epochs_done", training["recipe"]["epochs"]),
            "best": best,
            "log": [last] if last else [],
            "train_wall_seconds": training.get("train_wall_seconds"),
        },
        folder / CHECKPOINT,
    )
    return {"run": str(folder), "views": views, "parity_max_abs_diff": parity}
