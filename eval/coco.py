"""COCO mIoU (or mask AP with --boxes): `python eval/coco.py ARGS` is `bigl-sam eval coco ARGS`, and
`torchrun --nproc_per_node N eval/coco.py ARGS` shards it. The protocol is in docs/evaluation.md."""

import sys

from bigl_sam.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "coco", *sys.argv[1:]]))
