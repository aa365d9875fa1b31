"""Trivial baselines, scored by `eval coco`'s own engine: a predictor that looks at no pixel.

- box prompt: the filled box (every pixel whose centre lies inside it);
- point prompt: a disc centred on the first click whose area is the median annotated area of the evaluated
  instances (a constant that knows the test set's object sizes, so it favours the baseline).

    python -m bigl_sam.evaluation.baselines --annotations A.json --images DIR [--prompt box|point]

prints the mIoU (x100, all instances) under `eval coco`'s default protocol, as `eval coco --prompt ...`
scores a model.
"""

import argparse
import math
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from ..images import IMG_SIZE
from .coco_jobs import miou_job
from .instances import CocoMiou
from .protocol import Protocol
from .runner import score_in_memory

LOW_RES = IMG_SIZE // 4


class TrivialPredictor:
    """What the engine uses of `SamPredictor` (`set_image`, `transform`, `original_size`, `device`,
    `predict_torch`), answering every prompt without an image model. `disc_area`: the point baseline's disc,
    in original pixels."""

    def __init__(self, disc_area: float) -> None:
        self.transform = ResizeLongestSide(IMG_SIZE)
        self.device = torch.device("cpu")
        self.disc_radius = math.sqrt(disc_area / math.pi)
        self.original_size: Tuple[int, int] = (0, 0)

    def set_image(self, image: np.ndarray) -> None:
        self.original_size = image.shape[:2]

    def predict_torch(self, point_coords: Optional[torch.Tensor], point_labels, boxes: Optional[torch.Tensor],
                      mask_input=None, multimask_output: bool = True):
        """Prompts in SAM's input frame -> B x 1 x H x W masks, B x 1 scores, B x 1 x 256 x 256 logits."""
        height, width = self.original_size
        scale = self.transform.target_length / max(height, width)
        ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
        if boxes is not None:
            x0, y0, x1, y1 = (boxes / scale).unbind(dim=1)
            masks = ((xs >= x0[:, None, None]) & (xs <= x1[:, None, None])
                     & (ys >= y0[:, None, None]) & (ys <= y1[:, None, None]))
        else:
            centre = point_coords[:, 0] / scale
            distance2 = (xs - centre[:, 0, None, None]) ** 2 + (ys - centre[:, 1, None, None]) ** 2
            masks = distance2 <= self.disc_radius ** 2
        count = len(masks)
        return masks[:, None], torch.ones(count, 1), torch.zeros(count, 1, LOW_RES, LOW_RES)


def median_area(job: CocoMiou) -> float:
    """The median annotated area of the instances the job scores."""
    return float(np.median([i.area for image_id in job.image_ids for i in job.dataset.instances(image_id)]))


def baseline_miou(annotations: Path, images: Path, prompt: str) -> dict:
    """{"miou": mIoU x100 of all instances, "instances": how many, "disc_area": the point disc's area}."""
    job = miou_job(annotations, images, Protocol(prompt), batch_size=16)
    area = median_area(job)
    summary = score_in_memory(job, TrivialPredictor(area), torch.device("cpu"), label=f"trivial {prompt}")
    return {"miou": summary["miou"]["all"], "instances": summary["instances"]["all"], "disc_area": area}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bigl_sam.evaluation.baselines", description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    parser.add_argument("--images", type=Path, required=True, help="folder of the images")
    parser.add_argument("--prompt", choices=("box", "point"), default="box", help="(default: box)")
    args = parser.parse_args()
    result = baseline_miou(args.annotations, args.images, args.prompt)
    print(f"trivial {args.prompt} baseline: mIoU {result['miou']:.2f} over {result['instances']} instances"
          + (f" (disc of {result['disc_area']:.0f} pixels)" if args.prompt == "point" else ""))


if __name__ == "__main__":
    main()
