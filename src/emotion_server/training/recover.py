"""A run folder rebuilt from a model that `export --run` wrote.

Run folders live outside the work tree, so a new machine starts without them; the shipped
`.h5` and its model card still hold everything an ensemble or a distillation needs from a
finished run: the network's description, its trained weights and the logit adjustment that
export built into the final bias. `recover_run` takes that adjustment back out and writes
`best.pt` and a finished `checkpoint.pt` that `ensemble`, `export` and `--teachers` read like
any other run's; from an ensemble's `.h5`, one run per member. A recovered run has no
optimizer state, so it cannot be resumed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from emotion_server.contract import scale


def _card(model: Path, card: str | os.PathLike | None) -> tuple[Path, dict]:
    if card:
        card_path = Path(card)
    else:  # the model card `evaluate` wrote (the float32 file's, else the INT8 file's, which
        # is all an accurate mode ships), else the `.train.json` of `export` or `ensemble`
        beside = (".json", ".int8.json", ".train.json")
        card_path = next(
            (p for p in (model.with_suffix(suffix) for suffix in beside) if p.exists()),
            model.with_suffix(".json"),
        )
    if not card_path.exists():
        raise FileNotFoundError(
            f"no model card {card_path}: recover needs the card (or .train.json) export wrote"
        )
    described = json.loads(card_path.read_text())
    return card_path, described.get("training", described) or {}


def recover_run(
    model: str | os.PathLike,
    run: str | os.PathLike | None = None,
    card: str | os.PathLike | None = None,
    skip_existing: bool = False,
) -> list[dict]:
    """Write run folders from `model` (.h5) and its card (the `.json` or `.train.json` beside
    it unless given): one for a network `export --run` wrote (named `run`, or the name the
    card records), one per member for an ensemble (each under the name the card records).
    Return, for each, the folder written, its views and the parity measured.

    A name that already holds a run is refused before anything is written; with
    `skip_existing`, a run there that holds these very weights (in its best.pt or
    best-centre.pt: the report's `kept` names which) is left as it is and reported `skipped`,
    so that a default model and an ensemble that share a member can be recovered in either
    order. A run there with other weights, or one being trained, is still refused, and then
    nothing is written: every network and every name is checked first."""
    import keras

    model = Path(model)
    card_path, training = _card(model, card)
    if "members" in training:
        if run is not None:
            raise ValueError(
                f"{model} is an ensemble: its members are recovered under the run names its "
                "card records, without --name"
            )
        members = [m for m in training["members"] if m.get("weight", 1)]
    else:
        members = [{**training, "run": run or training.get("run")}]
    for member in members:
        if "architecture" not in member or "recipe" not in member or not member.get("run"):
            raise ValueError(
                f"{card_path} does not describe the trained networks in {model} (a model not "
                "written by `export --run` or `ensemble`): there is no run to recover"
            )
    from emotion_server.training.train import CHECKPOINT, resolve_run, run_lock

    for name in [run] if run else [m["run"] for m in members]:
        if (resolve_run(name) / CHECKPOINT).exists() and not skip_existing:
            raise FileExistsError(
                f"{resolve_run(name)} already holds a run: choose another name (or "
                "--skip-existing, which keeps a run that holds the same weights)"
            )
    # An ensemble too large for one file was written one member per file (ensemble.py).
    parts = training.get("h5_parts")
    shipped = None if parts else keras.saving.load_model(model, compile=False)
    views = training.get("views", "centre")
    balance = (training.get("balance") or {}).get("bias")
    rebuilt: list[dict] = []
    for index, member in enumerate(training.get("members", [None])):
        if member is not None and not member.get("weight", 1):
            continue  # a weight-0 member is not in the file
        member = member or members[0]
        source = model
        if parts:
            from emotion_server.training.ensemble import part_path

            source = part_path(model, f"member{index}")
            if f"member{index}" not in parts or not source.exists():
                raise FileNotFoundError(
                    f"{card_path} says {model}'s members were written one per file; "
                    f"{source} is missing"
                )
            container = keras.saving.load_model(source, compile=False)
        elif "members" in training:
            prefix = f"member{index}_"
            (container,) = [layer for layer in shipped.layers if layer.name.startswith(prefix)]
        else:
            container = shipped
        rebuilt.append(_rebuild(container, member, views, balance, str(source)))
        rebuilt[-1]["run"] = resolve_run(run or member["run"])
    # Every network is rebuilt and checked, and every name, before anything is written.
    ensemble = "members" in training
    seen: set[Path] = set()
    for network in rebuilt:
        folder = network["run"]
        if folder in seen:
            raise ValueError(f"{card_path} records the run {folder.name} twice: nothing written")
        seen.add(folder)
        if folder.is_dir():
            with run_lock(folder):  # FileExistsError where it is being trained
                pass
        network["kept"] = None
        if not (folder / CHECKPOINT).exists():
            continue
        network["kept"] = _holding(folder, network["net"].state_dict())
        if network["kept"] is None:
            aside = (
                "move that folder aside (an ensemble's members take the names its card records)"
                if ensemble
                else "recover it under another --name"
            )
            raise FileExistsError(
                f"{folder} already holds a run whose best.pt and best-centre.pt (where it has "
                f"them) are not the weights in {network['source']}: {aside}; nothing written"
            )
    reports = []
    for network in rebuilt:
        if network["kept"] is None:
            _write(network)
        reports.append(
            {
                "run": str(network["run"]),
                "views": views,
                "parity_max_abs_diff": network["parity"],
                "skipped": network["kept"] is not None,
                "kept": network["kept"],  # the file there that holds these weights
            }
        )
    return reports


def write_finished_run(
    folder: Path,
    *,
    arch: dict,
    recipe: dict,
    best: dict,
    weights: dict,
    epochs_done: int,
    log: list,
    source: str,
    **extra,
) -> None:
    """A run folder that holds a finished network without its optimizer state (from a shipped
    `.h5` here, from a packed run in transfer.py): its best.pt, and a checkpoint marked
    `recovered_from` `source`, which `train --resume` refuses."""
    from emotion_server.training.train import BEST, CHECKPOINT, _atomic_save, run_lock

    folder.mkdir(parents=True, exist_ok=True)
    # Not into a run being trained (before its first checkpoint, nothing else says so).
    with run_lock(folder):
        if (folder / CHECKPOINT).exists():
            raise FileExistsError(f"{folder} already holds a run: choose another name")
        # Each file whole or not at all, the checkpoint (which marks the folder a run) last.
        _atomic_save(
            {
                "arch": arch,
                "recipe": recipe,
                "epoch": best["epoch"],
                "public_test_flip": best["accuracy"],
                "weights": weights,
            },
            folder / BEST,
        )
        state = {"format": 1, "recovered_from": source, "recipe": recipe, "arch": arch}
        state.update(epoch=epochs_done, best=best, log=log, **extra)
        _atomic_save(state, folder / CHECKPOINT)


def _holding(folder: Path, weights: dict) -> str | None:
    """The file of the run in `folder` (best.pt, else best-centre.pt) that holds `weights`, to
    the rounding a float32 .h5 and the taken-out adjustment leave; None where neither does."""
    import torch

    from emotion_server.training.train import BEST, BEST_CENTRE

    for name in (BEST, BEST_CENTRE):
        if not (folder / name).exists():
            continue
        held = torch.load(folder / name, map_location="cpu", weights_only=False)["weights"]
        if held.keys() == weights.keys() and all(
            key.endswith("num_batches_tracked")
            or (
                held[key].shape == value.shape
                and torch.allclose(held[key].float(), value.float(), atol=1e-5)
            )
            for key, value in weights.items()
        ):
            return name
    return None


def _rebuild(container, member: dict, views: str, balance, source: str) -> dict:
    """The PyTorch network inside `container` (a Keras model or layer), checked against it on
    sample faces, with the logit adjustment taken back out of its bias."""
    import torch

    from emotion_server.training.architectures import Architecture
    from emotion_server.training.export import check_parity, keras_predict, sample_inputs
    from emotion_server.training.keras_nets import copy_weights_to_torch
    from emotion_server.training.torch_nets import build_torch
    from emotion_server.training.train import predict_proba

    arch = Architecture.from_dict(member["architecture"])
    net = build_torch(arch).eval()
    try:
        body = container.get_layer(arch.name)
    except ValueError as exc:
        raise ValueError(f"{source} has no network named {arch.name!r} inside it") from exc
    copy_weights_to_torch(body, net)

    # The shipped model answers with the card's views and the adjusted bias: check that the
    # copied network does the same before taking the adjustment out.
    faces = np.round(sample_inputs()[..., 0] * 255).astype(np.uint8)
    parity = check_parity(
        "the recovered network and the .h5",
        predict_proba(net, faces, views),
        keras_predict(container, scale(faces)),
    )
    if balance:
        with torch.no_grad():
            net.layers["probabilities"].bias -= torch.tensor(balance, dtype=torch.float32)
    return {"net": net, "arch": arch, "member": member, "parity": parity, "source": source}


def _write(network: dict) -> None:
    member = network["member"]
    best = member.get("best") or {
        "accuracy": member.get("public_test_accuracy"),
        "epoch": member.get("best_epoch"),
    }
    last = member.get("last_epoch")
    write_finished_run(
        network["run"],
        arch=network["arch"].to_dict(),
        recipe=member["recipe"],
        best=best,
        weights=network["net"].state_dict(),
        epochs_done=member.get("epochs_done", member["recipe"]["epochs"]),
        log=[last] if last else [],
        source=network["source"],
        train_wall_seconds=member.get("train_wall_seconds"),
    )
