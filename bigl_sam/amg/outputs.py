"""What `bigl-sam amg` writes, per image as SAM's `scripts/amg.py` does, and one COCO file for the folder.

OUT/
  NAME/0.png, 1.png, ..., metadata.csv   --output-mode binary_mask (one 0/255 PNG per mask)
  NAME.json                               --output-mode coco_rle (SAM's records, COCO RLE segmentations)
  .records/NAME.json                      the image's record: written last, so it marks the image as done
  .records/settings.json                  model and generator settings the records were made with
  masks_coco.json                         images, annotations (RLE, bbox, area, predicted_iou,
                                          stability_score, point_coords, crop_box), one category
Every file is written atomically (`fileio`): a kill leaves whole files, and an image without its record is
simply done again.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np
from segment_anything.utils.amg import coco_encode_rle

from ..errors import BiglSamError
from ..fileio import atomic_write_bytes, atomic_write_text
from .generator import rle_to_binary_mask

RECORDS = ".records"
SETTINGS_FILE = "settings.json"
COCO_FILE = "masks_coco.json"
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
METADATA_HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
                   "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


def check_settings(out_dir: Path, settings: Dict[str, Any]) -> None:
    """Records the settings in a new --out; a `BiglSamError` when --out holds results of other settings
    (resuming would mix them)."""
    path = out_dir / RECORDS / SETTINGS_FILE
    if path.is_file():
        found = json.loads(path.read_text())
        if found != settings:
            changed = sorted(k for k in set(found) | set(settings) if found.get(k) != settings.get(k))
            raise BiglSamError(f"{out_dir} holds masks made with other settings ({', '.join(changed)} differ): "
                               "give another --out, or the same settings to resume")
        return
    atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True))


def record_path(out_dir: Path, name: str) -> Path:
    return out_dir / RECORDS / f"{name}.json"


def write_image(out_dir: Path, name: str, file_name: str, original_size: Sequence[int],
                masks: List[Dict[str, Any]], output_mode: str) -> None:
    """One image's outputs from the generator's records (uncompressed RLE segmentations) of an image of
    `original_size` (height, width pixels); its record last."""
    coco = [{**mask, "segmentation": coco_encode_rle(mask["segmentation"])} for mask in masks]
    if output_mode == "binary_mask":
        folder = out_dir / name
        for i, mask in enumerate(masks):
            png = cv2.imencode(".png", rle_to_binary_mask(mask["segmentation"]).astype(np.uint8) * 255)[1]
            atomic_write_bytes(folder / f"{i}.png", png.tobytes())
        atomic_write_text(folder / "metadata.csv", "\n".join([METADATA_HEADER] + [_metadata_row(i, m) for i, m in
                                                                                    enumerate(masks)]))
    else:
        atomic_write_text(out_dir / f"{name}.json", json.dumps(coco))
    record = {"file_name": file_name, "height": int(original_size[0]), "width": int(original_size[1]), "annotations": coco}
    atomic_write_text(record_path(out_dir, name), json.dumps(record))


def _metadata_row(i: int, mask: Dict[str, Any]) -> str:
    values = [i, mask["area"], *mask["bbox"], *mask["point_coords"][0], mask["predicted_iou"],
              mask["stability_score"], *mask["crop_box"]]
    return ",".join(str(v) for v in values)


def write_coco(out_dir: Path, names: Sequence[str], skipped: Sequence[str]) -> Path:
    """The COCO file of the finished images `names`, in that order; images that could not be read are listed
    under info.skipped."""
    images, annotations = [], []
    for image_id, name in enumerate(names, start=1):
        record = json.loads(record_path(out_dir, name).read_text())
        images.append({"id": image_id, "file_name": record["file_name"], "height": record["height"],
                       "width": record["width"]})
        for mask in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY["id"],
                                "iscrowd": 0, **mask})
    coco = {"info": {"description": "bigl-sam amg", "skipped": list(skipped)}, "images": images,
            "annotations": annotations, "categories": [CATEGORY]}
    return atomic_write_text(out_dir / COCO_FILE, json.dumps(coco))
