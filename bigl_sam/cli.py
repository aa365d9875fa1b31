"""The `bigl-sam` command. Each subcommand lives in its own module, imported only when used:
the module gives `add_arguments(parser)` and `run(args)`. A command module imports torch (and anything
else slow) inside `run`, not at its top, so that `bigl-sam COMMAND --help` answers at once.
"""

import importlib
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import List, Optional

from tqdm import tqdm

from .errors import BiglSamError
from .arguments import CommandParser

PROGRAM = "bigl-sam"

COMMANDS = {
    "bench": ("bigl_sam.bench.cli", "parameters, GMACs and latency of SAM, big.LITTLE and peer encoders"),
    "train": ("bigl_sam.supervised.cli", "train or fine-tune any SAM or student on COCO-format masks (SAM's recipe; torchrun)"),
    "distill": ("bigl_sam.distill.cli", "distil a student from a SAM teacher: teacher cache, then training"),
    "weights": ("bigl_sam.weights", "list, download or verify the known checkpoints"),
    "demo": ("bigl_sam.demo.cli", "click-to-segment web demo (Gradio) with the routing map"),
    "eval": ("bigl_sam.evaluation.cli", "COCO mIoU or mask AP, interactive NoC: SAM and big.LITTLE side by side (torchrun shards it)"),
    "embed": ("bigl_sam.embed", "image embeddings of a folder (.npy + sizes record per image) for labeling tools"),
    "export": ("bigl_sam.onnx.cli", "ONNX encoder (keep ratio as an input) and SAM's ONNX decoder, checked"),
    "study": ("bigl_sam.study.cli", "the quality study's steps: keep rate, row evaluation, intervals, plots"),
    "amg": ("bigl_sam.amg.cli", "segment everything in a folder: SAM's automatic masks, faster; PNGs or COCO RLEs (--bench: vs SAM)"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        print(f"{PROGRAM} {installed_version()}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        _usage(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    try:
        module, parser = command_parser(name)
        args = parser.parse_args(rest)
        return module.run(args) or 0
    except BiglSamError as err:
        tqdm.write(f"bigl-sam {name}: error: {one_line(err)}", file=sys.stderr)  # below any progress bar
        return 2
    except OSError as err:  # a file or disk problem outside the atomic writer: still the user's to fix
        where = f"{err.filename}: " if err.filename else ""
        tqdm.write(f"bigl-sam {name}: error: {where}{err.strerror or one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bigl-sam {name}: interrupted", file=sys.stderr)
        return 130


def command_parser(name: str):
    """The module of command `name` and its parser, options declared."""
    module_name, description = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = CommandParser(prog=f"{PROGRAM} {name}", description=description)
    module.add_arguments(parser)
    return module, parser


def installed_version() -> str:
    try:
        return version(PROGRAM)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def program() -> str:
    """`bigl-sam` as this user can type it, for commands printed in messages: `bigl-sam` where that name on
    PATH is this installation; else the command as it was started (`.venv/bin/bigl-sam`), or the script
    beside this Python (a venv's, which runs without activating it); else `python -m bigl_sam.cli`."""
    beside = Path(sys.executable).parent / PROGRAM
    on_path = shutil.which(PROGRAM)
    if on_path and beside.is_file() and Path(on_path).resolve() == beside.resolve():
        return PROGRAM
    started = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(started).name == PROGRAM and beside.is_file() and Path(started).resolve() == beside.resolve():
        return started
    if beside.is_file():
        return str(beside)
    return f"{sys.executable} -m bigl_sam.cli"


def one_line(err: BaseException) -> str:
    """The message on one line. An error raised in a DataLoader worker comes back with the worker's
    traceback inside its message ("Caught X in DataLoader worker ... Original Traceback ..."); its last
    line is the original message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        lines = [lines[-1].split(": ", 1)[-1]]
    return " ".join(lines)


def _usage(argv: List[str]) -> None:
    stream = sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr
    if argv and argv[0] not in ("-h", "--help"):
        print(f"bigl-sam: unknown command {argv[0]!r}", file=stream)
    print("usage: bigl-sam COMMAND [options]   (bigl-sam COMMAND --help for its options; bigl-sam --version)\n",
          file=stream)
    for name, (_, description) in COMMANDS.items():
        print(f"  {name:<10} {description}", file=stream)


if __name__ == "__main__":
    sys.exit(main())
