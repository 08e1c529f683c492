"""The bundled model's accuracy on FER2013 PrivateTest, through the serving pipeline."""

import json

import numpy as np
import pytest
from conftest import BUNDLED_MODEL

from emotion_server.config import Settings
from emotion_server.pipeline import Pipeline

pytestmark = [pytest.mark.dataset, pytest.mark.e2e]

# A floor that any working model clears and a broken one (wrong label order, wrong scaling,
# ~15-25%) does not. The foundation issue's goal is 66.0% (above the `fer` package's 65.87%);
# the CPU-trained bundled model reaches 65.2% (docs/model.md), so the goal is not asserted here.
MINIMUM_PRIVATE_TEST_ACCURACY = 0.64


def test_private_test_accuracy_matches_the_card(fer_dataset):
    card = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    pipeline = Pipeline.from_settings(Settings(model_path=str(BUNDLED_MODEL), detector="none"))
    split = fer_dataset["PrivateTest"]
    assert len(split.labels) == 3589
    predictions = np.concatenate(
        [
            pipeline.classify_crops(list(split.images[i : i + 512])).argmax(1)
            for i in range(0, len(split.images), 512)
        ]
    )
    accuracy = float((predictions == split.labels).mean())
    print(f"bundled model PrivateTest accuracy: {accuracy:.4f} (card: {card['accuracy']})")
    assert accuracy == pytest.approx(card["accuracy"], abs=1e-4)
    assert accuracy >= MINIMUM_PRIVATE_TEST_ACCURACY
    assert card["dataset_sha256"] == fer_dataset.sha256
