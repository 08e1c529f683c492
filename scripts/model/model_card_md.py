"""Print a model card (the JSON `emotion-server evaluate` writes) as markdown tables.

scripts/docs.py writes docs/model.md's table with `render`.

python scripts/model/model_card_md.py [models/emotion_model.int8.json]
"""

import json
import sys
from pathlib import Path


def render(card: dict) -> str:
    private, public = card["metrics"]["PrivateTest"], card["metrics"]["PublicTest"]
    training = card.get("training") or {}
    recipe = training.get("recipe", {})
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
        f"| ms per face, 1 thread, TTA included | {card.get('ms_per_face_1_thread')} |\n"
        f"| recipe | `{recipe.get('name')}`: {recipe.get('architecture')} "
        f"{recipe.get('arch_args')}, "
        f"{recipe.get('epochs')} epochs, best epoch {training.get('best_epoch')}, "
        f"seed {recipe.get('seed')} |\n"
        f"| training | {training.get('train_wall_seconds')} s on {training.get('hardware')} "
        f"(Keras {training.get('keras_version')}, {training.get('backend')}) |\n"
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
