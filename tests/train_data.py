"""A small COCO training set made on the spot: photo-like images whose objects differ from the background,
annotated in every form `eval coco` reads (polygon, compressed RLE, uncompressed RLE), plus a crowd region."""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from eval_coco_data import polygon_annotation, rectangle, rle_annotation


def _disc(height: int, width: int, cx: int, cy: int, r: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def make_training_set(root: Path, count: int = 4) -> dict:
    """`count` RGB images of 96 x 128 with a bright square (polygon) and a dark disc (RLE, every other image
    uncompressed), and one crowd region that is never trained on. Returns the paths."""
    images = root / "images"
    images.mkdir(parents=True)
    entries, annotations = [], []
    rng = np.random.default_rng(0)
    h, w = 96, 128
    for n in range(count):
        x0, y0 = 8 + 6 * n, 10 + 4 * n
        square = (x0, y0, x0 + 36, y0 + 30)
        disc = _disc(h, w, 90 - 3 * n, 60, 18)
        image = Image.fromarray(rng.normal(110, 12, (h, w, 3)).clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(image).rectangle((square[0], square[1], square[2] - 1, square[3] - 1), fill=(235, 220, 60))
        pixels = np.asarray(image).copy()
        pixels[disc] = (20, 40, 140)
        Image.fromarray(pixels).save(images / f"img{n}.png")
        entries.append({"id": n + 1, "file_name": f"img{n}.png", "height": h, "width": w})
        crowd = rectangle(h, w, 0, 88, 20, 96)
        for ann in (polygon_annotation(*square), rle_annotation(disc, compressed=n % 2 == 0), rle_annotation(crowd, 1)):
            ann.update(id=len(annotations) + 1, image_id=n + 1, category_id=1)
            annotations.append(ann)
    path = root / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return {"annotations": path, "images": images}
