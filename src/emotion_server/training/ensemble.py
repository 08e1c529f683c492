"""Ensembles chosen on PublicTest: greedy selection with replacement (Caruana et al., 2004).

Members are training runs. Their probabilities on PublicTest (with the test-time views the
ensemble will ship with, themselves chosen on PublicTest) decide the weights; the ensemble is
built as one Keras model (`keras_nets.ensemble`) and exported like any other, so the serving
contract does not change.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np

from emotion_server.contract import scale
from emotion_server.training.data import load_cached

# No file the repository ships reaches 40 MB (tests/test_model.py). An ensemble's Keras file
# holds every member (a VGG-48 12.5 MB, a VGG-64 25 MB): where it would reach that, each member
# is written to a file of its own, `<stem>.member<i>.h5`, which `recover` reads instead. (A
# single member of 40 MB or more would still be one file over it.)
MAX_FILE_BYTES = 40_000_000


def part_path(model: Path, member: str) -> Path:
    """The file of one member (`member0`, ...) of the ensemble `model` (.h5) written in parts:
    beside it, named after it, so the files can be renamed together."""
    return model.with_name(f"{model.stem}.{member}.h5")


def _part_files(model: Path) -> list[Path]:
    return list(model.parent.glob(f"{glob.escape(model.stem)}.member*.h5"))


def greedy_weights(probabilities: list[np.ndarray], labels: np.ndarray, rounds: int = 25):
    """Add, one at a time and with replacement, the member that most improves the accuracy
    (ties: the log-likelihood) of the running mean; return each member's count."""
    counts = np.zeros(len(probabilities), dtype=int)
    total = np.zeros_like(probabilities[0])

    def score(mean: np.ndarray) -> tuple[float, float]:
        picked = np.clip(mean[np.arange(len(labels)), labels], 1e-12, None)
        return float((mean.argmax(1) == labels).mean()), float(np.log(picked).mean())

    best_score = (-1.0, -np.inf)
    for _ in range(rounds):
        trials = [score((total + p) / (counts.sum() + 1)) for p in probabilities]
        choice = int(max(range(len(trials)), key=lambda i: trials[i]))
        if trials[choice] <= best_score and counts.sum():
            break
        best_score = trials[choice]
        counts[choice] += 1
        total += probabilities[choice]
    return counts.tolist(), best_score[0]


def build_ensemble(
    runs: list[str | os.PathLike],
    output: str | os.PathLike,
    views: str = "auto",
    data_path: str | None = None,
    balance: str = "none",
    taus: tuple[float, ...] | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> dict:
    """Weight the runs on PublicTest, save the ensemble as `output` (.h5) and its .onnx,
    with `<stem>.train.json` describing members, weights and views; return that report.
    Where the .h5 would reach `max_file_bytes`, each member's Keras model is saved on its own
    instead (`part_path`; the report lists them as `h5_parts`) and no `output` is written.

    `balance="auto"` fits one logit adjustment for the rare classes on the ensemble's
    PublicTest answers (`training.balance`, as `export --balance auto` does for one network)
    and builds it into every member's final bias; `taus` overrides the values it tries."""
    import keras
    import onnxruntime as ort
    import torch

    from emotion_server.training import keras_nets
    from emotion_server.training.architectures import view_offsets
    from emotion_server.training.export import (
        check_parity,
        export_torch_onnx,
        keras_predict,
        sample_inputs,
        staged,
    )
    from emotion_server.training.train import (
        predict_proba,
        predict_views,
        runs_summary,
        shipped_weights,
    )

    data = load_cached(data_path)
    public = data["PublicTest"]
    # Each member's best epoch for the views asked (`auto` chooses among views that include
    # the mirror image, so best.pt's).
    chosen_weights = [shipped_weights(run, "flip" if views == "auto" else views) for run in runs]
    nets = [net for net, _ in chosen_weights]
    described = [about for _, about in chosen_weights]
    candidates = ("flip", "tencrop") if views == "auto" else (views,)
    # Each member's PublicTest answers once, for the widest views asked: a narrower option's
    # views are the first of a wider one's (`view_offsets`), so flip's are ten-crop's first two.
    widest = [predict_views(net, public.images, candidates[-1]) for net in nets]

    def views_of(index: int, option: str) -> list[np.ndarray]:
        crop = nets[index].arch.crop
        count = len(view_offsets(crop, option))
        if view_offsets(crop, candidates[-1])[:count] != view_offsets(crop, option):
            raise RuntimeError(f"{option}'s views are not the first of {candidates[-1]}'s")
        return widest[index][:count]

    scores: dict[str, dict] = {}
    for option in candidates:
        probabilities = [np.mean(views_of(i, option), axis=0) for i in range(len(nets))]
        weights, accuracy = greedy_weights(probabilities, public.labels)
        members = [float((p.argmax(1) == public.labels).mean()) for p in probabilities]
        scores[option] = {"weights": weights, "accuracy": accuracy, "members": members}
    # Ties go to the cheaper views (listed first).
    chosen = max(candidates, key=lambda option: scores[option]["accuracy"])
    weights = scores[chosen]["weights"]
    balanced = None
    if balance == "auto":
        from emotion_server.training.balance import class_prior, fit_balance

        # Each member's views, repeated by its weight: their plain mean is the ensemble's.
        weighted_views = [
            view
            for index, weight in enumerate(weights)
            for view in views_of(index, chosen) * weight
        ]
        balanced = fit_balance(
            weighted_views,
            public.labels,
            class_prior(data["Training"].labels),
            **({"taus": taus} if taus else {}),
        )
        with torch.no_grad():
            for net in nets:
                net.layers["probabilities"].bias += torch.tensor(balanced.bias, dtype=torch.float32)
    elif balance != "none":
        raise ValueError(f"balance must be 'auto' or 'none', got {balance!r}")
    model = keras_nets.ensemble([keras_nets.from_torch(net, chosen) for net in nets], weights)
    output = Path(output)
    parts: list[str] = []
    with staged(output) as (h5_staged, onnx_staged):
        model.save(h5_staged)
        export_torch_onnx(nets, chosen, onnx_staged, weights)
        inputs = sample_inputs()
        faces = np.round(inputs[..., 0] * 255).astype(np.uint8)
        each = [predict_proba(net, faces, chosen) for net in nets]
        expected = sum(w * p for p, w in zip(each, weights, strict=True)) / sum(weights)
        as_float = scale(faces)
        session = ort.InferenceSession(str(onnx_staged), providers=["CPUExecutionProvider"])
        (served,) = session.run(None, {session.get_inputs()[0].name: as_float})
        parity = {  # checked before the files replace anything
            "torch_vs_onnx": check_parity("PyTorch members and the ONNX file", expected, served),
        }
        if h5_staged.stat().st_size < max_file_bytes:
            shipped = keras_predict(keras.saving.load_model(h5_staged, compile=False), as_float)
            parity["torch_vs_keras"] = check_parity(
                "PyTorch members and the .h5", expected, shipped
            )
        else:
            h5_staged.unlink()
            worst = 0.0
            # The members with a weight, under the names keras_nets.ensemble gives them.
            for layer in model.layers:
                if not layer.name.startswith("member"):
                    continue
                key = layer.name.split("_")[0]  # member<i>: i counts every run given
                part = part_path(h5_staged, key)
                layer.save(part)
                answered = keras_predict(keras.saving.load_model(part, compile=False), as_float)
                index = int(key.removeprefix("member"))
                name = f"PyTorch member {index} and {part.name}"
                worst = max(worst, check_parity(name, each[index], answered))
                parts.append(key)
            parity["torch_vs_keras"] = worst
        unadjusted = scores[chosen]["accuracy"]
        report = {
            "members": [
                {
                    **runs_summary(run),
                    **described[i],
                    "public_test_accuracy": round(scores[chosen]["members"][i], 4),
                    "weight": weights[i],
                }
                for i, run in enumerate(runs)
            ],
            "views": chosen,
            "views_public_test_accuracy": {k: round(v["accuracy"], 4) for k, v in scores.items()},
            # PublicTest accuracy of the ensemble as it answers: with the adjusted bias, if any.
            "public_test_accuracy": round(
                balanced.public_test["chosen"]["accuracy"] if balanced else unadjusted, 4
            ),
            "public_test_accuracy_unadjusted": round(unadjusted, 4),
            "balance": balanced.to_dict() if balanced else None,
            # The members that answer: one of weight 0 is in neither file.
            "parameters": int(
                sum(
                    sum(p.numel() for p in net.parameters())
                    for net, weight in zip(nets, weights, strict=True)
                    if weight
                )
            ),
            "trained_with": f"PyTorch {torch.__version__.split('+')[0]}",
            "shipped_as": f"Keras {keras.__version__} .h5" + (", one per member" if parts else ""),
            # Written one member per file: <stem>.<part>.h5 beside the .h5 (part_path).
            "h5_parts": parts or None,
            "parity_max_abs_diff": parity,
        }
        # In the scratch folder too: it replaces the old one with the model files.
        h5_staged.with_suffix(".train.json").write_text(json.dumps(report, indent=2) + "\n")
    # Files of an ensemble written before under this name, now out of date: its .h5 of the
    # whole, or members not written this time.
    stale = _part_files(output) + ([output] if parts else [])
    for path in set(stale) - {part_path(output, key) for key in parts}:
        path.unlink(missing_ok=True)
    return report
