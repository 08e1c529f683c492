"""The model contract shared by serving and training: FER2013's label order and input size."""

# FER2013 label order 0..6: the model's output order. Never derive it from folder order.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 48
INPUT_SHAPE = (1, INPUT_SIZE, INPUT_SIZE, 1)
OUTPUT_SHAPE = (1, len(EMOTIONS))
