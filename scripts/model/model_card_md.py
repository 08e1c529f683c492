"""Print a model card (the JSON `emotion-server evaluate` writes) as markdown tables.

scripts/docs.py writes docs/model.md's table with `render`.

python scripts/model/model_card_md.py [models/emotion_model.int8.json]
"""

import json
import sys
from pathlib import Path


def _one_recipe(run: dict) -> str:
    recipe = run.get("recipe") or {}
    best = run.get("best_epoch") or (run.get("best") or {}).get("epoch")
    return (
        f"`{recipe.get('name')}`: {recipe.get('architecture')} {recipe.get('arch_args')}, "
        f"{recipe.get('epochs')} epochs, best epoch {best}, "
        f"seed {recipe.get('seed')}"
    )


def _recipe(training: dict) -> str:
    """The recipe of a single run, or one line per member of an ensemble."""
    if "members" not in training:
        return _one_recipe(training)
    return "<br>".join(
        f"`{m.get('run')}` (weight {m.get('weight')}, PublicTest {m.get('public_test_accuracy')}): "
        f"{_one_recipe(m)}"
        for m in training["members"]
    )


def _training(training: dict) -> str:
    """How long training took and on what: the runs' wall time (members summed)."""
    runs = training.get("members") or [training]
    seconds = [m.get("train_wall_seconds") for m in runs]
    if any(s is None for s in seconds):
        wall = "training time not recorded"
    else:
        wall = f"{sum(seconds):.0f} s ({sum(seconds) / 3600:.1f} h)"
        if len(runs) > 1:
            wall += f" over {len(runs)} runs"
    done_by = training.get("trained_with") or training.get("hardware")
    views = training.get("views")
    tau = (training.get("balance") or {}).get("tau")
    parts = [wall]
    if done_by:
        parts.append(f"with {done_by}")
    if views:
        parts.append(f"test-time views in the graph: {views}")
    if tau is not None:
        parts.append(f"logit adjustment tau {tau}")
    return "; ".join(parts)


def render(card: dict) -> str:
    private, public = card["metrics"]["PrivateTest"], card["metrics"]["PublicTest"]
    training = card.get("training") or {}
    calibration = card.get("calibration") or {}
    lines = [
        f"| | |\n|---|---|\n"
        f"| PrivateTest accuracy (3,589 images) | **{card['accuracy'] * 100:.2f}%** |\n"
        f"| PublicTest accuracy (model selection) | {public['accuracy'] * 100:.2f}% |\n"
        f"| PrivateTest macro-F1 | {private['macro_f1']:.4f} |\n"
        f"| test-time augmentation (chosen on PublicTest) | {card['tta']} "
        f"({card.get('tta_public_test_accuracy')}) |\n"
        f"| calibration | temperature {card.get('temperature')} fitted on PublicTest; PrivateTest "
        f"ECE (15 bins) {calibration.get('private_test_ece_before')} before, "
        f"{calibration.get('private_test_ece_after')} after |\n"
        f"| parameters | {card.get('parameters'):,} |\n"
        f"| ms per face, 1 thread, TTA included | {card.get('ms_per_face_1_thread')} "
        f"(on {card.get('cpu', 'a CPU not recorded')}) |\n"
        f"| {'members' if 'members' in training else 'recipe'} | {_recipe(training)} |\n"
        f"| training | {_training(training)} |\n"
        f"| framework | {card['framework']} |\n"
        f"| created | {card['created_at']} |\n"
        f"| dataset sha256 | `{card.get('dataset_sha256')}` |",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, row in private["per_class"].items():
        lines.append(
            f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
            f"{row['support']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "models/emotion_model.int8.json")
    print(render(json.loads(path.read_text())), end="")
