"""`bigl-sam amg --bench`: segment_anything's `SamAutomaticMaskGenerator` and `MaskGenerator` on the same
images with the same model and settings, in one run: images per minute, where the time went (image encoder,
mask decoder, upsampling and scoring, encoding), whether the masks are the same, and the survival rate (the
share of decoded masks over `pred_iou_thresh`: the only ones this generator upsamples). The options that
round differently (`--compile`, `--share-image-work`) are extra rows, with their agreement with SAM's masks:
the share of SAM's masks that one of theirs matches (IoU at least `mask_generator.MATCH_IOU`) and the mean
IoU of SAM's masks with their closest match.

SAM's generator is timed from outside: `SamPredictor.set_image` (encoder), the mask decoder's forward
(decoder), its RLE and output encoders (encoding); the rest of `generate` is upsampling and scoring.
"""

import contextlib
import copy
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
from ..mask_generator import STAGES, MaskGenerator, agreement, same_masks
from ..mask_generator_settings import AmgSettings

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


def run(model: Sam, files: List[Path], settings: AmgSettings, dtype: str, compiled: bool = False,
        share_image_work: bool = False) -> Dict[str, dict]:
    """SAM's generator, this one, and one more row per option asked for, on every image (taking turns at
    going first); prints the table, returns its rows. The compiled row runs on a copy of `model`, so that
    the others keep the eager decoder."""
    images = [load_image(path) for path in files]
    if not images:
        raise BiglSamError("no image to time")
    generators = {
        "sam": _SamClock(SamAutomaticMaskGenerator(model, **settings.as_kwargs(), output_mode="coco_rle")),
        "bigl-sam": MaskGenerator(model, **settings.as_kwargs(), output_mode="coco_rle"),
    }
    batch = generators["bigl-sam"].points_per_batch  # every row decodes the same batches
    generators["sam"].generator.points_per_batch = batch
    if share_image_work:
        generators["bigl-sam --share-image-work"] = MaskGenerator(
            model, **settings.as_kwargs(), output_mode="coco_rle", share_image_work=True)
    if compiled:
        tqdm.write("amg bench: compiling the mask decoder...")
        generators["bigl-sam --compile"] = MaskGenerator(
            copy.deepcopy(model), **settings.as_kwargs(), output_mode="coco_rle", compiled=True)
    device = generators["bigl-sam"].predictor.device
    autocast = distributed.autocast(device, dtype)
    with autocast:  # untimed: the first encoder pass of a process pays for its warm-up
        generators["bigl-sam"].predictor.set_image(images[0])
    totals = dict.fromkeys(generators, 0.0)
    same = dict.fromkeys(generators, 0)
    matched = {name: [0, 0.0] for name in generators}  # SAM's masks matched, sum of their closest IoUs
    sam_masks = 0
    names = list(generators)
    for i, image in enumerate(tqdm(images, desc="amg bench", unit="image")):
        results = {}
        for name in names[i % len(names):] + names[:i % len(names)]:  # each row takes its turn at going first
            with autocast:
                start = time.perf_counter()
                results[name] = generators[name].generate(image)
                totals[name] += time.perf_counter() - start
        sam_masks += len(results["sam"])
        for name, masks in results.items():
            same[name] += same_masks(masks, results["sam"])
            count, iou = agreement(masks, results["sam"])
            matched[name][0] += count
            matched[name][1] += iou
    rows = {}
    for name, generator in generators.items():
        ours = generators["bigl-sam"] if name == "sam" else generator  # SAM's decoder decodes the same masks
        rows[name] = {
            "images_per_min": 60 * len(images) / totals[name],
            "speed_up": totals["sam"] / totals[name],
            "same_images": same[name],
            "masks_matched": matched[name][0] / sam_masks if sam_masks else None,  # None: nothing to match
            "pixel_iou": matched[name][1] / sam_masks if sam_masks else None,
            "survival": ours.masks["upsampled"] / max(1, ours.masks["decoded"]),
            "seconds": generator.seconds,
        }
    compile_note = ""
    if compiled:
        compile_note = f", decoder compiled in {generators['bigl-sam --compile'].compile_seconds:.1f} s (not counted)"
    print(f"{len(images)} images, {sam_masks} masks from SAM's generator, {batch} points per batch{compile_note}")
    print("| generator | survival | same masks (images) | masks matched | pixel IoU | images/min | speed-up | "
          + " | ".join(f"{stage} s" for stage in STAGES) + " |")
    print("|---" * (7 + len(STAGES)) + "|")
    for name, row in rows.items():
        matches = "- | -" if row["masks_matched"] is None else f"{row['masks_matched']:.1%} | {row['pixel_iou']:.4f}"
        print(f"| {name} | {row['survival']:.1%} | {row['same_images']} of {len(images)} | {matches} | "
              f"{row['images_per_min']:.2f} | "
              f"{row['speed_up']:.2f}x | " + " | ".join(f"{row['seconds'][stage]:.2f}" for stage in STAGES) + " |")
    return rows
