"""Command-line options that several commands share, declared once.

`add_model_options` declares which model runs and with which weights (`--model`, `--checkpoint`,
`--weights-dir`, `--keep-ratio`), and `model_spec` turns them into the model to load, by the weights rule of
`bigl_sam.pretrained`; `add_device_options` declares `--device` and `--dtype`. `add_renamed` declares an
option under its current name and keeps each former name working as a hidden alias that warns on stderr: a
renamed flag keeps working for one release.
"""

import argparse
import sys
import textwrap
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from .weights import WEIGHTS_DIR_HELP

if TYPE_CHECKING:  # annotations only: --help imports no torch
    from .evaluation.runner import ModelSpec

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
    from .evaluation.runner import ModelSpec  # here, not at the top: torch, which --help does without
    from .pretrained import choose_weights

    return ModelSpec(model_type, choose_weights(model_type, checkpoint, args.weights_dir), args.keep_ratio)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already gives it or there is none to give
    (None, a flag that is off); lines wrap between words only, so a printed command copies as it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default is None or action.default is False
                or action.default == [] or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"

    def _split_lines(self, text: str, width: int):  # lines end between words, never inside --an-option
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class CommandParser(argparse.ArgumentParser):
    """The parser of every `bigl-sam` command and subcommand (subparsers are made of the same class): help
    with defaults (`HelpFormatter`), and an abbreviation (`--teach` for `--teacher-checkpoint`) resolves among
    the options the help shows, never to a hidden former name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _get_option_tuples(self, option_string):
        return [match for match in super()._get_option_tuples(option_string) if not isinstance(match[0], _FormerName)]


class _FormerName(argparse.Action):
    """A hidden former name of an option: warns, then acts as the current name does."""

    def __init__(self, option_strings, dest, current: str, given: "_GivenAs", store_true: bool = False,
                 **kwargs) -> None:
        if store_true:
            kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.current = current
        self.given = given
        self.store_true = store_true

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        self.given.check(parser, namespace, option_string)
        print(f"{parser.prog}: warning: {option_string} is now {self.current}; the old name goes in the next "
              "release", file=sys.stderr)
        setattr(namespace, self.dest, True if self.store_true else values)


class _GivenAs:
    """Which name of one renamed option a command line used: a second, different name is refused (the
    parser would otherwise keep whichever came last)."""

    def __init__(self) -> None:
        self.names: Dict[int, Tuple["weakref.ref[argparse.Namespace]", str]] = {}  # by id: a Namespace is unhashable

    def check(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, option_string: str) -> None:
        seen, first = self.names.get(id(namespace), (None, None))
        if seen is None or seen() is not namespace:
            self.names[id(namespace)] = (weakref.ref(namespace), option_string)
        elif first != option_string:
            parser.error(f"{first} and {option_string} are the same option (one is its former name): give it once")


def add_renamed(parser: argparse.ArgumentParser, name: str, *former: str, **kwargs: Any) -> argparse.Action:
    """`parser.add_argument(name, **kwargs)`, plus each of `former` as a hidden alias of it that warns.
    Giving two of the names is an error; abbreviations resolve to `name` only (in a `CommandParser`).

    Supports the plain store action and ``action="store_true"``; `type`, `choices` and `nargs` apply to the
    former names too.
    """
    action = parser.add_argument(name, **kwargs)
    given = _GivenAs()
    base = type(action)

    def remember(self, parser, namespace, values, option_string=None) -> None:
        given.check(parser, namespace, option_string)
        base.__call__(self, parser, namespace, values, option_string)

    action.__class__ = type(f"Renamed{base.__name__}", (base,), {"__call__": remember})
    store_true = kwargs.get("action") == "store_true"
    alias = {} if store_true else {k: kwargs[k] for k in ("type", "choices", "nargs", "metavar") if k in kwargs}
    for old in former:
        parser.add_argument(old, dest=action.dest, action=_FormerName, current=name, given=given,
                            store_true=store_true, help=argparse.SUPPRESS, **alias)
    return action
