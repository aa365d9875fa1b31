"""One browser session's state: its image, prompt history, embeddings and last masks.

Sessions are immutable values (`dataclasses.replace` makes the next one), kept per browser in `gr.State`,
so two sessions never share an image, a click or a mask.
"""

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

import numpy as np

from ..inference import Encoding, Prediction

POSITIVE = "Positive point"
NEGATIVE = "Negative point"
BOX = "Box (two clicks)"
MODES = (POSITIVE, NEGATIVE, BOX)

Point = Tuple[float, float]
Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class Prompts:
    """Clicks in image pixels. A box takes two clicks: `corner` holds the first until the second comes."""

    points: Tuple[Point, ...] = ()
    labels: Tuple[int, ...] = ()
    box: Optional[Box] = None
    corner: Optional[Point] = None

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    def with_click(self, x: float, y: float, mode: str) -> "Prompts":
        if mode == BOX:
            if self.corner is None:
                return replace(self, corner=(x, y))
            (cx, cy) = self.corner
            return replace(self, box=(min(cx, x), min(cy, y), max(cx, x), max(cy, y)), corner=None)
        label = 1 if mode == POSITIVE else 0
        return replace(self, points=self.points + ((x, y),), labels=self.labels + (label,))

    def describe(self) -> str:
        positive = sum(self.labels)
        parts = [f"{positive} positive", f"{len(self.labels) - positive} negative"]
        if self.box is not None:
            parts.append("a box")
        if self.corner is not None:
            parts.append("a box waiting for its second corner")
        return ", ".join(parts)


@dataclass(frozen=True)
class Session:
    """Everything one browser has done. Keys of `encodings`/`predictions` are model roles (main, compare)."""

    image: Optional[np.ndarray] = None  # H x W x 3 uint8
    note: str = ""  # the image's size, and whether the upload was scaled down
    history: Tuple[Prompts, ...] = (Prompts(),)
    mode: str = POSITIVE
    encodings: Dict[str, Encoding] = field(default_factory=dict)
    predictions: Dict[str, Prediction] = field(default_factory=dict)
    chosen: Optional[int] = None  # the candidate the user picked; None: the best predicted IoU
    everything: Optional[np.ndarray] = None  # the image with every mask of "Everything" coloured in, until a click

    @property
    def prompts(self) -> Prompts:
        return self.history[-1]

    def chosen_index(self, role: str) -> Optional[int]:
        prediction = self.predictions.get(role)
        if prediction is None:
            return None
        return prediction.best if self.chosen is None else self.chosen

    def push(self, prompts: Prompts) -> "Session":
        return replace(self, history=self.history + (prompts,), chosen=None)

    def undo(self) -> "Session":
        return replace(self, history=self.history[:-1] or (Prompts(),), chosen=None)

    def cleared(self) -> "Session":
        return replace(self, history=(Prompts(),), predictions={}, chosen=None, everything=None)
