"""Command-line options that several commands share, declared once.

`add_model_options` declares which model runs and with which weights (`--model`, `--checkpoint`,
`--weights-dir`, `--keep-ratio`), and `model_spec` turns them into the model to load, by the weights rule of
`bigl_sam.pretrained`; `add_device_options` declares `--device` and `--dtype`. `add_renamed` declares an
option under its current name and keeps each former name working as a hidden alias that warns on stderr: a
renamed flag keeps working for one release.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from .distributed import DTYPES
from .pretrained import ModelSpec, choose_weights
from .weights import WEIGHTS_DIR_HELP

# Where a model without --checkpoint finds its weights (`pretrained.choose_weights`), for the help.
WEIGHTS_RULE_HELP = ("left out: the student's file NAME.pth, else the one NAME*.pth, in --weights-dir; else one built "
                     "from SAM's official files there; else random weights")


def add_model_options(parser: argparse.ArgumentParser, default_model: Optional[str] = None) -> None:
    """`--model NAME` (required unless `default_model`), `--checkpoint PATH`, and `add_weights_options`."""
    model_help = "registry name, e.g. bigl_b_t or vit_h" + (f" (default {default_model})" if default_model else "")
    parser.add_argument("--model", default=default_model, required=default_model is None, metavar="NAME",
                        help=model_help)
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                        help=f"weights of --model; {WEIGHTS_RULE_HELP}")
    add_weights_options(parser)


def add_weights_options(parser: argparse.ArgumentParser) -> None:
    """`--weights-dir DIR` and `--keep-ratio R`: where a model without a checkpoint finds its weights, and the
    share of tokens a student's P-path sees."""
    parser.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                        help=f"where to look for weights (default: {WEIGHTS_DIR_HELP})")
    parser.add_argument("--keep-ratio", type=float, default=None, metavar="R",
                        help="share of tokens in the P-path, for students (default: the one their file was saved "
                             "with; 1.0 for one built from SAM's files)")


def add_device_options(parser: argparse.ArgumentParser, autocasts: str = "the encoder and decoder") -> None:
    """`--device` (default: this process's GPU, else the CPU) and `--dtype`; `autocasts`: what bfloat16 runs
    under `torch.autocast`, for the help."""
    parser.add_argument("--device", default=None, help="default: this rank's GPU if there is one, else cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help=f"bfloat16: autocast {autocasts} (for GPUs)")


def model_spec(args: argparse.Namespace, model_type: str, checkpoint: Optional[Path]) -> ModelSpec:
    """The model `model_type` with `checkpoint`, else the weights `pretrained.choose_weights` finds in
    --weights-dir, at --keep-ratio. Reads no weights; an unknown name or keep ratio is a `BiglSamError`."""
    return ModelSpec(model_type, choose_weights(model_type, checkpoint, args.weights_dir), args.keep_ratio)


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
