"""`bigl-sam embed --images DIR --out DIR`: the image embedding of every image in a folder, for labeling tools
that run the encoder ahead of time and SAM's ONNX decoder per click (the files: `bigl_sam.embeddings`).

Each image is read upright (EXIF orientation applied, as the demo and `bigl_sam.load_image` show it) and
encoded by `SamPredictor.set_image`, so a predictor set from the stored embedding predicts exactly what it
predicts after `set_image`. Under `torchrun` each process takes every N-th image. Images with a record that
matches this run (model, weights content, keep ratio, precision) are not redone; a folder holding embeddings
of another run is refused, naming what changed. An image replaced under its name since its embedding (its
`fingerprint.image_fingerprint`), or whose `.npy` is cut short, is embedded again. Unreadable images are
skipped, listed in `skipped.json`, and tried again on the next run.
"""

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from .embeddings import EmbeddingError, embedding_complete, embedding_path, read_record, record_path, save_embedding
from .errors import BiglSamError
from .fileio import atomic_write_text, check_writable
from .fingerprint import changed_line, image_fingerprint, weights_fingerprint
from .images import IMAGE_SUFFIXES, image_files, load_image
from .modeling.config import check_keep_ratio_applies, keep_ratio_of
from .options import add_device_options, add_model_options, model_spec

SKIPPED_FILE = "skipped.json"
# What must match for an image's record to count as done by this run.
RUN_KEYS = ("model_type", "weights_sha256", "keep_ratio", "dtype")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--images", required=True, type=Path, metavar="DIR", help=f"folder of images ({'/'.join(IMAGE_SUFFIXES)})")
    add("--out", required=True, type=Path, metavar="DIR", help="folder for NAME.npy (float32, whatever --dtype) and NAME.json per "
        "image")
    add_model_options(parser)
    add_device_options(parser, autocasts="the encoder")


def run(args: argparse.Namespace) -> int:
    from segment_anything import SamPredictor  # here, not at the top, as the rest: --help does without torch

    from . import distributed
    from .pretrained import weights_lines

    images = image_files(args.images)
    check_writable(args.out / SKIPPED_FILE, "--out")
    spec = model_spec(args, args.model, args.checkpoint)
    process = distributed.start(args.device, backend="gloo")  # skipped lists are Python objects: gloo anywhere
    model = spec.load(process.device)  # first, even when all is done: a bad checkpoint fails on every rank
    check_keep_ratio_applies(model, args.keep_ratio, args.model)
    if process.is_main:
        print(weights_lines([spec.weights]), file=sys.stderr)
        distributed.note_bfloat16(process.device, args.dtype)
    fingerprints = [weights_fingerprint(path) for path in spec.weights.files]
    settings = {
        "model_type": args.model,
        "weights": spec.weights.describe(),
        "weights_files": [{"path": str(p), "sha256": f} for p, f in zip(spec.weights.files, fingerprints)],
        "weights_sha256": fingerprints,
        "keep_ratio": keep_ratio_of(model),
        "dtype": args.dtype,
    }
    # Every rank checks every record, so that a folder of another run stops all of them alike.
    done = {path.name for path in images if _done(args.out, path, settings)}
    _, todo = distributed.take_unfinished(images, process, lambda path: path.name in done, "embed", args.out)
    predictor = SamPredictor(model)
    skipped = []
    for path in tqdm(todo, desc=f"embed {args.model} [rank {process.rank}]", unit="image"):
        try:
            image = load_image(path)
        except BiglSamError as err:
            skipped.append({"file": path.name, "reason": str(err)})
            tqdm.write(f"skipped {path.name}: {err}", file=sys.stderr)
            continue
        with distributed.autocast(process.device, args.dtype):
            predictor.set_image(image)
        features = predictor.get_image_embedding().float().cpu().numpy()
        record = {"image": path.name, "image_fingerprint": image_fingerprint(path),
                  "original_size": list(predictor.original_size),
                  "input_size": list(predictor.input_size), **settings,
                  "written_by": {"rank": process.rank, "world_size": process.world_size}}
        save_embedding(args.out, path.name, features, record)
    gathered = distributed.gather_to_main(skipped, process)
    distributed.stop(process)
    if gathered is None:
        return 0
    atomic_write_text(args.out / SKIPPED_FILE, json.dumps({"images": str(args.images), "skipped": gathered}, indent=2))
    if gathered:
        print(f"skipped {len(gathered)} unreadable images, listed in {args.out / SKIPPED_FILE}", file=sys.stderr)
    if len(gathered) == len(images):
        raise BiglSamError(f"--images {args.images}: not one image could be read (see {args.out / SKIPPED_FILE})")
    print(f"embeddings of {len(images) - len(gathered)} images in {args.out}", file=sys.stderr)
    return 0


def _done(out_dir: Path, image: Path, settings: dict) -> bool:
    """True if `image` has a complete embedding and a record of this run, made from this very file; a record
    of another run is an error (one folder holds one model's embeddings, so a reader never mixes them)."""
    name = image.name
    if not record_path(out_dir, name).is_file() or not embedding_path(out_dir, name).is_file():
        return False
    try:
        record = read_record(record_path(out_dir, name))
    except EmbeddingError:
        return False  # unreadable: simply done again
    found = {key: record.get(key) for key in RUN_KEYS}
    wanted = {key: settings[key] for key in RUN_KEYS}
    if found != wanted:
        raise BiglSamError(f"--out {out_dir}: holds embeddings of another run ({name}: {changed_line(found, wanted)}); "
                           "use another --out")
    if not embedding_complete(embedding_path(out_dir, name)):
        tqdm.write(f"{embedding_path(out_dir, name)}: cut short or unreadable: embedding {name} again", file=sys.stderr)
        return False
    if record.get("image_fingerprint") != image_fingerprint(image):
        tqdm.write(f"{image}: changed since its embedding was made: embedding it again", file=sys.stderr)
        return False
    return True
