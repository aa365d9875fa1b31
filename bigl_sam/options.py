"""Command-line options that several commands share, declared once.

`add_model_options` declares which model runs and with which weights (`--model`, `--checkpoint`,
`--weights-dir`, `--keep-ratio`), and `model_spec` turns them into the model to load, by the weights rule of
`bigl_sam.pretrained`; `add_device_options` declares `--device` and `--dtype`.
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .weights import WEIGHTS_DIR_HELP

if TYPE_CHECKING:  # annotations only: --help imports no torch
    from .pretrained import ModelSpec

# The precisions a command runs in (`distributed.DTYPES` maps them to torch dtypes). Declared here, without
# torch, so that `bigl-sam COMMAND --help` imports no torch.
DTYPE_NAMES = ("float32", "bfloat16")

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
    """`--device` (default: this process's GPU, else the CPU) and `add_dtype_option`."""
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="cpu, cuda or cuda:N (default: this rank's GPU if there is one, else cpu)")
    add_dtype_option(parser, autocasts)


def add_dtype_option(parser: argparse.ArgumentParser, autocasts: str) -> None:
    """`--dtype`, worded alike in every command; `autocasts`: what bfloat16 runs under `torch.autocast`."""
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32",
                        help=f"bfloat16: {autocasts} under torch.autocast (fast on GPUs and on CPUs with "
                             "AVX512-BF16 or AMX, emulated and slower on other CPUs) (default: %(default)s)")


def model_spec(args: argparse.Namespace, model_type: str, checkpoint: Optional[Path]) -> "ModelSpec":
    """The model `model_type` with `checkpoint`, else the weights `pretrained.choose_weights` finds in
    --weights-dir, at --keep-ratio. Reads no weights; an unknown name or keep ratio is a `BiglSamError`."""
    from .pretrained import ModelSpec, choose_weights  # here, not at the top: torch, which --help does without

    return ModelSpec(model_type, choose_weights(model_type, checkpoint, args.weights_dir), args.keep_ratio)
