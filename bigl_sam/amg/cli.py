"""`bigl-sam amg --images DIR --out DIR`: every mask of every image in a folder (SAM's automatic mask
generator, the same masks, faster: `bigl_sam.mask_generator`), written as SAM's `scripts/amg.py` writes them plus one
COCO file (`outputs.py`). Resumes after a kill; shards over processes under `torchrun` as `eval` does.
`--bench` instead times SAM's generator against this one on the images (`bench.py`).
"""

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List

from tqdm import tqdm

from ..errors import BiglSamError
from ..images import image_files
from ..modeling.config import check_keep_ratio_applies, get_config
from ..options import add_device_options, add_model_options, model_spec
from . import outputs
from .settings import add_setting_arguments, settings_from_args

if TYPE_CHECKING:  # annotations only: --help imports no torch
    from ..mask_generator import MaskGenerator

OUTPUT_MODES = ("binary_mask", "coco_rle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, metavar="DIR",
                        help="folder of the images (not its subfolders)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder of the masks (resumes what it holds)")
    add_model_options(parser, default_model="bigl_b_t")
    parser.add_argument("--output-mode", choices=OUTPUT_MODES, default="binary_mask",
                        help="per image: a folder of PNG masks and metadata.csv, or a JSON of COCO RLEs (as SAM's "
                             f"scripts/amg.py); {outputs.COCO_FILE} for the whole folder either way")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="the first N images (by file name)")
    add_device_options(parser)
    parser.add_argument("--bench", action="store_true",
                        help="time SAM's SamAutomaticMaskGenerator and this generator on the images instead "
                             "(checks that the masks are the same; with --compile or --share-image-work, one "
                             "more row for each); writes nothing")
    parser.add_argument("--compile", action="store_true",
                        help="compile the mask decoder (torch.compile, about a minute on CPU): masks round "
                             "differently from SAM's (docs/amg.md has the measured agreement)")
    parser.add_argument("--share-image-work", action="store_true",
                        help="project the image embedding once per image in the decoder's first layer, not once "
                             "per point (about a fifth of the decoder's MACs): off by default, as it may round "
                             "differently from SAM's decoder")
    add_setting_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .. import distributed  # here, not at the top: torch, which --help does without
    from ..pretrained import weights_lines
    from . import bench
    from ..mask_generator import MaskGenerator

    settings = settings_from_args(args)
    check_keep_ratio_applies(get_config(args.model), args.keep_ratio, args.model)
    spec = model_spec(args, args.model, args.checkpoint)
    files = first_images(args.images, args.max_images)
    if args.bench:
        device = distributed.pick_device(args.device)
        bench.run(spec.load(device), files, settings, args.dtype, args.compile, args.share_image_work)
        return 0
    if args.out is None:
        raise BiglSamError("--out is required (or --bench)")
    names = [path.stem for path in files]
    twins = sorted({name for name in names if names.count(name) > 1})
    if twins:
        raise BiglSamError(f"{args.images}: images share a name without suffix ({', '.join(twins[:3])}): their "
                           "masks would land in one folder")
    coco_stem = Path(outputs.COCO_FILE).stem
    if args.output_mode == "coco_rle" and coco_stem in names:
        clash = files[names.index(coco_stem)].name
        raise BiglSamError(f"{args.images}: the masks of {clash} would be {outputs.COCO_FILE}, the folder's COCO "
                           "file: rename the image, or use --output-mode binary_mask")
    process = distributed.start(args.device, backend="gloo")
    model = spec.load(process.device)
    options = {"compiled": args.compile, "share_image_work": args.share_image_work}
    generator = MaskGenerator(model, **settings.as_kwargs(), **options, output_mode="uncompressed_rle")
    recorded = {**spec.settings(model), **settings.as_kwargs(), **{k: v for k, v in options.items() if v},
                "dtype": args.dtype, "output_mode": args.output_mode}
    if process.is_main:
        outputs.check_settings(args.out, recorded)
        print(weights_lines([spec.weights]), file=sys.stderr)
    distributed.barrier(process)
    if not process.is_main:
        outputs.check_settings(args.out, recorded)
    skipped = distributed.gather_to_main(_segment(generator, files, args, process), process)
    if not process.is_main:
        return 0
    done = [path for path in files if outputs.read_record(args.out, path.stem) is not None]
    if not done:
        raise BiglSamError(f"no image could be read in {args.images}, e.g. {skipped[0]}")
    coco, masks, empty = outputs.write_coco(args.out, [path.stem for path in done], skipped)
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"{len(done)} of {len(files)} images segmented ({masks} masks), {len(skipped)} skipped; wrote {coco}",
          file=sys.stderr)
    if empty:
        print(f"note: in {empty} of {len(done)} images no mask passed the thresholds (--pred-iou-thresh "
              f"{settings.pred_iou_thresh:g}, --stability-score-thresh {settings.stability_score_thresh:g}); "
              f"random or untrained weights keep none at SAM's defaults: lower them", file=sys.stderr)
    return 0


def _segment(generator: "MaskGenerator", files: List[Path], args: argparse.Namespace, process) -> List[str]:
    """Segments this process's share of `files` that has no record of this very file yet
    (`outputs.is_done`); returns why images were skipped."""
    from .. import distributed
    from ..fingerprint import image_fingerprint
    from ..images import load_image

    _, todo = distributed.take_unfinished(files, process, lambda path: outputs.is_done(args.out, path), "amg",
                                          args.out)
    skipped = []
    autocast = distributed.autocast(process.device, args.dtype)
    for path in tqdm(todo, desc=f"amg [rank {process.rank}]", unit="image"):
        try:
            image = load_image(path)
        except BiglSamError as err:
            skipped.append(str(err))
            continue
        with autocast:
            masks = generator.generate(image)
        outputs.write_image(args.out, path.stem, path.name, image_fingerprint(path), image.shape[:2], masks,
                            args.output_mode)
    return skipped


def first_images(folder: Path, max_images=None) -> List[Path]:
    """The image files directly in `folder`, sorted by name (broken or looping links too, to be reported as
    skipped); the first `max_images`."""
    if max_images is not None and max_images < 1:
        raise BiglSamError(f"--max-images must be at least 1, got {max_images}")
    return image_files(folder)[:max_images]
