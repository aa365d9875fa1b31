"""Thin entry point: `python demo/app.py [options]` is `bigl-sam demo [options]`."""

import sys

from bigl_sam.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
