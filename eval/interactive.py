"""Interactive segmentation (NoC with RITM's clicker): `python eval/interactive.py ARGS` is
`bigl-sam eval interactive ARGS`, and `torchrun --nproc_per_node N eval/interactive.py ARGS` shards it.
The protocol is in docs/evaluation.md."""

import sys

from bigl_sam.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "interactive", *sys.argv[1:]]))
