"""`bigl-sam amg --bench`: segment_anything's `SamAutomaticMaskGenerator` and `MaskGenerator` on the same
images with the same model and settings, in one run: images per minute, where the time went (image encoder,
mask decoder, upsampling and scoring, encoding), whether the masks are the same, and the survival rate (the
share of decoded masks over `pred_iou_thresh`: the only ones this generator upsamples).

SAM's generator is timed from outside: `SamPredictor.set_image` (encoder), the mask decoder's forward
(decoder), its RLE and output encoders (encoding); the rest of `generate` is upsampling and scoring.
"""

import contextlib
import time
from pathlib import Path
from typing import Dict, List

import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything import automatic_mask_generator as sam_amg
from segment_anything.modeling import Sam
from tqdm import tqdm

from .. import distributed
from ..errors import BiglSamError
from ..images import load_image
from .generator import STAGES, MaskGenerator, same_masks
from .settings import AmgSettings

ENCODERS_OF_SAM = ("mask_to_rle_pytorch", "rle_to_mask", "coco_encode_rle")


class _SamClock:
    """Wraps a `SamAutomaticMaskGenerator`'s stages with timers (seconds per stage, summed over calls)."""

    def __init__(self, generator: SamAutomaticMaskGenerator) -> None:
        self.generator = generator
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.device = generator.predictor.device

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _timed(self, function, stage: str):
        def timed(*args, **kwargs):
            start = self._now()
            result = function(*args, **kwargs)
            self.seconds[stage] += self._now() - start
            return result
        return timed

    @contextlib.contextmanager
    def timing(self):
        predictor = self.generator.predictor
        decoder = predictor.model.mask_decoder
        originals = {name: getattr(sam_amg, name) for name in ENCODERS_OF_SAM}
        predictor.set_image = self._timed(predictor.set_image, "encoder")
        decoder.forward = self._timed(decoder.forward, "decoder")
        for name, function in originals.items():
            setattr(sam_amg, name, self._timed(function, "encoding"))
        try:
            yield
        finally:
            del predictor.set_image, decoder.forward
            for name, function in originals.items():
                setattr(sam_amg, name, function)

    def generate(self, image):
        before = sum(self.seconds.values())
        with self.timing():
            start = self._now()
            masks = self.generator.generate(image)
            total = self._now() - start
        self.seconds["scoring"] += total - (sum(self.seconds.values()) - before)
        return masks


def run(model: Sam, files: List[Path], settings: AmgSettings, dtype: str) -> Dict[str, dict]:
    """Both generators on every image (taking turns at going first); prints the table, returns its rows."""
    theirs = _SamClock(SamAutomaticMaskGenerator(model, **settings.as_kwargs(), output_mode="coco_rle"))
    ours = MaskGenerator(model, **settings.as_kwargs(), output_mode="coco_rle")
    device = ours.predictor.device
    autocast = distributed.autocast(device, dtype)
    totals = {"sam": 0.0, "bigl-sam": 0.0}
    masks, equal = 0, 0
    images = [load_image(path) for path in files]
    if not images:
        raise BiglSamError("no image to time")
    with autocast:  # untimed: the first encoder pass of a process pays for its warm-up
        ours.predictor.set_image(images[0])
    for i, image in enumerate(tqdm(images, desc="amg bench", unit="image")):
        results = {}
        for name, generator in (("sam", theirs), ("bigl-sam", ours))[:: 1 if i % 2 == 0 else -1]:  # turn about
            with autocast:
                start = time.perf_counter()
                results[name] = generator.generate(image)
                totals[name] += time.perf_counter() - start
        sam_masks, our_masks = results["sam"], results["bigl-sam"]
        masks += len(our_masks)
        equal += same_masks(our_masks, sam_masks)
    survival = ours.masks["upsampled"] / max(1, ours.masks["decoded"])
    rows = {
        name: {"images_per_min": 60 * len(images) / totals[name], "seconds": seconds}
        for name, seconds in (("sam", theirs.seconds), ("bigl-sam", ours.seconds))
    }
    print(f"{len(images)} images, {masks} masks, same masks on {equal} of {len(images)} images, survival rate "
          f"{survival:.1%} ({ours.masks['upsampled']} of {ours.masks['decoded']} decoded masks upsampled), "
          f"speed-up {totals['sam'] / totals['bigl-sam']:.2f}x")
    print("| generator | images/min | " + " | ".join(f"{stage} s" for stage in STAGES) + " |")
    print("|---" * (2 + len(STAGES)) + "|")
    for name, row in rows.items():
        print(f"| {name} | {row['images_per_min']:.2f} | "
              + " | ".join(f"{row['seconds'][stage]:.2f}" for stage in STAGES) + " |")
    return rows
