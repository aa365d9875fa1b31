"""A small COCO-format dataset made on the spot: synthetic images in the awkward formats users have
(grayscale, RGBA, 16-bit, with an EXIF orientation tag), with polygon, compressed RLE, uncompressed RLE, crowd and
zero-area annotations, plus an image entry whose file is missing."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

EXIF_ORIENTATION = 0x0112
ROTATE_180 = 3  # the stored pixels are shown upside down


def rectangle(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def polygon_annotation(x0: int, y0: int, x1: int, y1: int) -> dict:
    """A rectangle as a COCO polygon covering pixels x0..x1-1, y0..y1-1."""
    return {"segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "area": float((x1 - x0) * (y1 - y0)),
            "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}


def rle_annotation(mask: np.ndarray, iscrowd: int = 0, compressed: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        flat = mask.astype(np.uint8).flatten(order="F")
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]]))).tolist()
        segmentation = {"size": list(mask.shape), "counts": np.diff([0] + changes).tolist()}
    return {"segmentation": segmentation, "area": float(mask.sum()),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": iscrowd}


def _picture(height: int, width: int, masks) -> np.ndarray:
    """A gray background with each object a little brighter, so the images are not blank."""
    image = np.full((height, width), 60, dtype=np.uint8)
    for k, mask in enumerate(masks):
        image[mask] = 120 + 40 * k
    return image


def make_coco_dataset(root: Path) -> dict:
    """Writes images/ and instances.json under `root`; returns what the test needs to know:
    paths, expected scored annotation ids per image, skip counts, the missing file's name."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    entries, annotations, scored = [], [], {}

    def add_image(image_id, file_name, height, width, anns):
        entries.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for ann in anns:
            ann.update(id=len(annotations) + 1, image_id=image_id, category_id=1)
            annotations.append(ann)
        scored[image_id] = [a["id"] for a in anns if not a["iscrowd"] and a["area"] >= 1]

    # 1: grayscale PNG, polygon + compressed RLE + a crowd region
    h, w = 48, 64
    blob = rectangle(h, w, 30, 8, 50, 40)
    blob[20:28, 38:42] = False  # a hole, so the RLE is not a plain box
    crowd = rectangle(h, w, 0, 40, 64, 48)
    Image.fromarray(_picture(h, w, [rectangle(h, w, 4, 4, 20, 30), blob, crowd]), "L").save(images_dir / "gray.png")
    add_image(1, "gray.png", h, w, [polygon_annotation(4, 4, 20, 30), rle_annotation(blob), rle_annotation(crowd, 1)])

    # 2: RGBA PNG, uncompressed RLE + a zero-area annotation
    h, w = 40, 56
    ring = rectangle(h, w, 10, 5, 40, 35) & ~rectangle(h, w, 18, 13, 32, 27)
    rgba = np.dstack([np.repeat(_picture(h, w, [ring])[..., None], 3, axis=2), np.full((h, w), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(images_dir / "rgba.png")
    zero = {**polygon_annotation(1, 1, 2, 2), "area": 0.0}
    add_image(2, "rgba.png", h, w, [rle_annotation(ring, compressed=False), zero])

    # 3: 16-bit grayscale PNG, two polygons (one small, one medium by COCO's bounds)
    h, w = 60, 72
    small, medium = rectangle(h, w, 2, 2, 12, 12), rectangle(h, w, 20, 10, 70, 50)
    sixteen = _picture(h, w, [small, medium]).astype(np.uint16) * 257
    Image.fromarray(sixteen).save(images_dir / "deep.png")
    add_image(3, "deep.png", h, w, [polygon_annotation(2, 2, 12, 12), polygon_annotation(20, 10, 70, 50)])

    # 4: JPEG with an EXIF tag that turns it upside down for display; COCO annotates the pixels as stored
    h, w = 36, 50
    stored = np.repeat(_picture(h, w, [rectangle(h, w, 5, 5, 25, 30)])[..., None], 3, axis=2)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_180
    Image.fromarray(stored).save(images_dir / "rotated.jpg", exif=exif.tobytes(), quality=95)
    add_image(4, "rotated.jpg", h, w, [polygon_annotation(5, 5, 25, 30)])

    # 5: listed in the JSON, missing on disk
    add_image(5, "missing.png", 32, 32, [polygon_annotation(4, 4, 20, 20)])

    # 6: only a crowd annotation, so no instance to score: not selected
    add_image(6, "gray.png", 48, 64, [rle_annotation(rectangle(48, 64, 0, 0, 10, 10), 1)])

    dataset = {"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    annotations_path = root / "instances.json"
    annotations_path.write_text(json.dumps(dataset))
    return {
        "images": images_dir,
        "annotations": annotations_path,
        "scored": scored,
        "missing_file": "missing.png",
        "skipped": {"iscrowd": 1, "area_below_1": 1},  # over the selected images 1..5
    }


def make_mask_folders(root: Path) -> dict:
    """Writes images/ and masks/ under `root` as the interactive benchmarks ship them (matching stems):
    a binary 0/255 mask, a GrabCut-style mask with a 128-valued ignore band, a palette mask with three
    object ids. Returns the folders and the objects per image (in stem order)."""
    images_dir, masks_dir = root / "images", root / "masks"
    images_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    h, w = 40, 56
    # binary: one object
    square = rectangle(h, w, 8, 6, 30, 30)
    Image.fromarray(np.repeat(_picture(h, w, [square])[..., None], 3, axis=2)).save(images_dir / "binary.jpg")
    Image.fromarray(square.astype(np.uint8) * 255, "L").save(masks_dir / "binary.png")
    # grabcut: object 255, a 128 band around its edge, background 0
    blob = rectangle(h, w, 12, 10, 40, 32)
    band = rectangle(h, w, 10, 8, 42, 34) & ~rectangle(h, w, 14, 12, 38, 30)
    values = np.where(band, 128, np.where(blob, 255, 0)).astype(np.uint8)
    Image.fromarray(_picture(h, w, [blob]), "L").save(images_dir / "grabcut.png")
    Image.fromarray(values, "L").save(masks_dir / "grabcut.png")
    # palette: ids 1, 2, 3
    parts = [rectangle(h, w, 2, 2, 16, 16), rectangle(h, w, 20, 4, 50, 14), rectangle(h, w, 6, 22, 40, 38)]
    ids = np.zeros((h, w), dtype=np.uint8)
    for k, part in enumerate(parts, start=1):
        ids[part] = k
    palette = Image.fromarray(ids, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
    palette.save(masks_dir / "palette.png")
    Image.fromarray(np.repeat(_picture(h, w, parts)[..., None], 3, axis=2)).save(images_dir / "palette.png")
    return {"images": images_dir, "masks": masks_dir, "objects": {"binary": 1, "grabcut": 1, "palette": 3},
            "band": band, "blob": blob}


def detections_for(data: dict) -> list:
    """A COCO results file of box detections on `make_coco_dataset`'s set: every scored annotation's box at
    score 0.9, plus one box at score 0.05 (below a 0.1 threshold)."""
    dataset = json.loads(Path(data["annotations"]).read_text())
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                  for a in dataset["annotations"] if not a["iscrowd"] and a["area"] >= 1]
    detections.append({"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.05})
    return detections
