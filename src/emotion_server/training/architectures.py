"""One description of each network, built in PyTorch for training and in Keras for shipping.

An `Architecture` is plain data (stages, widths, head), so the two builders
(`training.torch_nets`, `training.keras_nets`) cannot drift apart: they read the same numbers
and name their layers the same way, which is how weights are copied from one to the other.

Every network takes the contract's [N, 48, 48, 1] input in [0, 1]; it looks at the centre
`crop` x `crop` pixels (training shows it random crops of that size), so a face a few pixels
off centre still looks like the training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from emotion_server.contract import EMOTIONS, INPUT_SIZE


@dataclass(frozen=True)
class Architecture:
    """A VGG (`convs` conv3x3-BN-ReLU per stage, then max-pool) or a ResNet (`convs` basic
    blocks per stage); global average pooling, then `dense` hidden layers and the classifier."""

    family: Literal["vgg", "resnet"]
    widths: tuple[int, ...]
    convs: int = 2
    dense: tuple[int, ...] = ()
    dropout: float = 0.5
    crop: int = 40
    classes: int = len(EMOTIONS)
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.family not in ("vgg", "resnet"):
            raise ValueError(f"unknown architecture family {self.family!r}")
        if not 8 <= self.crop <= INPUT_SIZE:
            raise ValueError(f"crop must be within 8..{INPUT_SIZE}, got {self.crop}")
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "dense", tuple(self.dense))
        if not self.name:
            object.__setattr__(self, "name", f"{self.family}{self.widths[0]}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Architecture:
        return cls(**values)


def vgg(
    width: int = 64,
    stages: int = 4,
    dense: int = 1024,
    dropout: float = 0.5,
    crop: int = 40,
    convs: int = 2,
) -> Architecture:
    """VGG with widths doubling per stage; width 64 with dense 1024 is the network of the GPU
    runs in docs/training.md (6.3 M parameters with global pooling); width 32 with dense 512
    trains fast on a CPU."""
    return Architecture(
        "vgg",
        tuple(width * 2**s for s in range(stages)),
        convs=convs,
        dense=(dense, dense) if dense else (),
        dropout=dropout,
        crop=crop,
        name=f"vgg{width}",
    )


def resnet(
    width: int = 64, blocks: int = 2, stages: int = 4, dropout: float = 0.2, crop: int = 40
) -> Architecture:
    """ResNet with basic blocks and a 3x3 stem without pooling (faces are small):
    width 64, 2 blocks per stage, 4 stages is ResNet-18 (11.2 M parameters)."""
    return Architecture(
        "resnet",
        tuple(width * 2**s for s in range(stages)),
        convs=blocks,
        dense=(),
        dropout=dropout,
        crop=crop,
        name=f"resnet{2 + 2 * blocks * stages}w{width}",
    )


def tiny() -> Architecture:
    """A few-thousand-parameter VGG for tests: the same code paths, trains in seconds."""
    return Architecture("vgg", (4, 8), convs=1, dense=(16,), dropout=0.1, crop=40, name="tiny")


ARCHITECTURES = {"vgg": vgg, "resnet": resnet, "tiny": tiny}


def build_spec(architecture: str, **arch_args) -> Architecture:
    """The architecture a recipe names, e.g. `build_spec("vgg", width=48, dense=512)`."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}"
        ) from None
    return factory(**arch_args)


VIEWS = ("centre", "flip", "tencrop")


def view_offsets(crop: int, views: str) -> list[tuple[int, int, bool]]:
    """(top, left, mirrored) of each crop a model averages over, in a 48x48 input:
    "centre" one crop, "flip" it and its mirror, "tencrop" the centre and the four corners,
    each also mirrored."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    margin = INPUT_SIZE - crop
    boxes = [(margin // 2, margin // 2)]
    if views == "tencrop":
        boxes += [(0, 0), (0, margin), (margin, 0), (margin, margin)]
    mirrors = (False, True) if views != "centre" else (False,)
    return [(top, left, mirrored) for top, left in boxes for mirrored in mirrors]
