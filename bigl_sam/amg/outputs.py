"""What `bigl-sam amg` writes, per image as SAM's `scripts/amg.py` does, and one COCO file for the folder.

OUT/
  NAME/0.png, 1.png, ..., metadata.csv   --output-mode binary_mask (one 0/255 PNG per mask)
  NAME.json                               --output-mode coco_rle (SAM's records, COCO RLE segmentations)
  .records/NAME.json                      the image's record: written last, so it marks the image as done
  .records/settings                       model and generator settings the records were made with (JSON;
                                          without the .json suffix of a record, so no image name meets it)
  masks_coco.json                         images, annotations (RLE, bbox, area, predicted_iou,
                                          stability_score, point_coords, crop_box), one category
Every file is written atomically (`fileio`): a kill leaves whole files, and an image without its record is
simply done again, as is one whose record is broken or was made from another file under its name (a record
holds the image's `fingerprint.image_fingerprint`).
"""

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import BiglSamError
from ..fileio import atomic_write_bytes, atomic_write_text
from ..fingerprint import changed_line, image_fingerprint

RECORDS = ".records"
SETTINGS_FILE = "settings"
RECORD_KEYS = ("file_name", "height", "width", "annotations")
COCO_FILE = "masks_coco.json"
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
METADATA_HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
                   "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


def check_settings(out_dir: Path, settings: Dict[str, Any]) -> None:
    """Records the settings in a new --out; a `BiglSamError` when --out holds results of other settings
    (resuming would mix them), naming what changed."""
    path = out_dir / RECORDS / SETTINGS_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            found = err
        if not isinstance(found, dict):
            problem = found if isinstance(found, Exception) else f"not a JSON object: {str(found)[:40]}"
            raise BiglSamError(f"{path}: broken ({problem}): delete {out_dir / RECORDS} to segment every image "
                               "again, or give another --out")
        if found != settings:
            raise BiglSamError(f"{out_dir} holds masks made with other settings ({changed_line(found, settings)}): "
                               "give another --out, or the same settings to resume")
        return
    atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True))


def record_path(out_dir: Path, name: str) -> Path:
    return out_dir / RECORDS / f"{name}.json"


def read_record(out_dir: Path, name: str) -> Optional[dict]:
    """The record of image `name` (its stem), or None when there is none or it is broken (cut short, not
    an object, lacking a key): the image is then segmented again."""
    try:
        record = json.loads(record_path(out_dir, name).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or any(key not in record for key in RECORD_KEYS):
        return None
    return record


def is_done(out_dir: Path, image: Path) -> bool:
    """Whether `image` has a whole record made from this very file; says on stderr why a record on disk
    does not count."""
    from tqdm import tqdm

    path = record_path(out_dir, image.stem)
    if not path.is_file():
        return False
    record = read_record(out_dir, image.stem)
    if record is None:
        tqdm.write(f"{path}: broken record: segmenting {image.name} again", file=sys.stderr)
        return False
    fingerprint = image_fingerprint(image) if image.is_file() else None
    if record.get("image_fingerprint") != fingerprint:
        tqdm.write(f"{image}: changed since its masks were made "
                   f"({changed_line({'image': record.get('image_fingerprint')}, {'image': fingerprint})}): "
                   "segmenting it again", file=sys.stderr)
        return False
    return True


def write_image(out_dir: Path, name: str, file_name: str, fingerprint: str, original_size: Sequence[int],
                masks: List[Dict[str, Any]], output_mode: str) -> None:
    """One image's outputs from the generator's records (uncompressed RLE segmentations) of an image of
    `original_size` (height, width pixels) and `fingerprint` (`fingerprint.image_fingerprint`); its record
    last."""
    import cv2
    import numpy as np
    from segment_anything.utils.amg import coco_encode_rle

    from ..mask_generator import rle_to_binary_mask

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
    record = {"file_name": file_name, "image_fingerprint": fingerprint, "height": int(original_size[0]),
              "width": int(original_size[1]), "annotations": coco}
    atomic_write_text(record_path(out_dir, name), json.dumps(record))


def _metadata_row(i: int, mask: Dict[str, Any]) -> str:
    values = [i, mask["area"], *mask["bbox"], *mask["point_coords"][0], mask["predicted_iou"],
              mask["stability_score"], *mask["crop_box"]]
    return ",".join(str(v) for v in values)


def write_coco(out_dir: Path, names: Sequence[str], skipped: Sequence[str]) -> Tuple[Path, int, int]:
    """The COCO file of the finished images `names`, in that order; images that could not be read are listed
    under info.skipped. Returns the file, the number of masks and the number of images without one."""
    images, annotations, empty = [], [], 0
    for image_id, name in enumerate(names, start=1):
        record = read_record(out_dir, name)
        if record is None:
            raise BiglSamError(f"{record_path(out_dir, name)}: broken record: delete it and run again to segment "
                               "its image again")
        images.append({"id": image_id, "file_name": record["file_name"], "height": record["height"],
                       "width": record["width"]})
        empty += not record["annotations"]
        for mask in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY["id"],
                                "iscrowd": 0, **mask})
    coco = {"info": {"description": "bigl-sam amg", "skipped": list(skipped)}, "images": images,
            "annotations": annotations, "categories": [CATEGORY]}
    return atomic_write_text(out_dir / COCO_FILE, json.dumps(coco)), len(annotations), empty
