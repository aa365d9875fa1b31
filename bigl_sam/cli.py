"""The `bigl-sam` command. Each subcommand lives in its own module, imported only when used:
the module gives `add_arguments(parser)` and `run(args)`. `add_renamed` declares an option under its current
name and keeps each former name working as a hidden alias that warns on stderr: a renamed flag keeps working
for one release.
"""

import argparse
import importlib
import sys
from typing import Any, List, Optional

from tqdm import tqdm

from .errors import BiglSamError

COMMANDS = {
    "bench": ("bigl_sam.bench.cli", "parameters, GMACs and latency of SAM, big.LITTLE and peer encoders"),
    "distill": ("bigl_sam.distill.cli", "distil a student from a SAM teacher: teacher cache, then training"),
    "weights": ("bigl_sam.weights", "list, download or verify the known checkpoints"),
    "demo": ("bigl_sam.demo.cli", "click-to-segment web demo (Gradio) with the routing map"),
    "eval": ("bigl_sam.evaluation.cli", "COCO mIoU or mask AP, interactive NoC: SAM and big.LITTLE side by side (torchrun shards it)"),
    "embed": ("bigl_sam.embed", "image embeddings of a folder (.npy + sizes record per image) for labeling tools"),
    "export": ("bigl_sam.onnx.cli", "ONNX encoder (keep ratio as an input) and SAM's ONNX decoder, checked"),
    "amg": ("bigl_sam.amg.cli", "segment everything in a folder: SAM's automatic masks, faster; PNGs or COCO RLEs (--bench: vs SAM)"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        _usage(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    module_name, description = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"bigl-sam {name}", description=description)
        module.add_arguments(parser)
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
    print("usage: bigl-sam COMMAND [options]   (bigl-sam COMMAND --help for its options)\n", file=stream)
    for name, (_, description) in COMMANDS.items():
        print(f"  {name:<10} {description}", file=stream)


class _FormerName(argparse.Action):
    """A hidden former name of an option: warns, then acts as the current name does."""

    def __init__(self, option_strings, dest, current: str, store_true: bool = False, **kwargs) -> None:
        if store_true:
            kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.current = current
        self.store_true = store_true

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is now {self.current}; the old name goes in the next "
              "release", file=sys.stderr)
        setattr(namespace, self.dest, True if self.store_true else values)


def add_renamed(parser: argparse.ArgumentParser, name: str, *former: str, **kwargs: Any) -> argparse.Action:
    """`parser.add_argument(name, **kwargs)`, plus each of `former` as a hidden alias of it that warns.

    Supports the plain store action and ``action="store_true"``; `type`, `choices` and `nargs` apply to the
    former names too.
    """
    action = parser.add_argument(name, **kwargs)
    store_true = kwargs.get("action") == "store_true"
    alias = {} if store_true else {k: kwargs[k] for k in ("type", "choices", "nargs", "metavar") if k in kwargs}
    for old in former:
        parser.add_argument(old, dest=action.dest, action=_FormerName, current=name, store_true=store_true,
                            help=argparse.SUPPRESS, **alias)
    return action


if __name__ == "__main__":
    sys.exit(main())
