"""Errors a user can act on (the CLI prints them as one line, without a traceback), and the argument checks
that raise them. Needs nothing but Python, so torch-free code (the ONNX predictor) uses the same checks."""

import numbers
from typing import List, Optional


class BiglSamError(Exception):
    """Base class: the message alone must say what is wrong and where."""


class CheckpointError(BiglSamError):
    """A checkpoint file is missing, unreadable, or does not fit the model asked for."""


class UnknownModelError(BiglSamError, KeyError):
    """A model name that no config registers."""

    def __str__(self) -> str:
        return self.args[0]


class KeepRatioError(BiglSamError, ValueError):
    """A keep ratio that is not a number in (0, 1] (a bool, a string and NaN are not)."""


class PromptError(BiglSamError, ValueError):
    """A prompt (points, labels, box, mask input) that is not finite numbers of the right shape, a label
    the decoder does not know, or no prompt at all."""


def first_line(err: BaseException, with_type: bool = False) -> str:
    """The first line of `err`'s message (a library's error may go on for pages), or its type's name when the
    message is empty; `with_type`: as "TypeName: first line"."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0]}" if with_type else lines[0]


def check_keep_ratio(ratio: float, what: str = "keep ratio") -> float:
    """`ratio` as a float if it is a share of tokens the P-path can take: a real number in (0, 1].
    A bool, a string, a tensor or NaN is a `KeepRatioError` naming the value and its type."""
    is_number = isinstance(ratio, numbers.Real) and not isinstance(ratio, bool)
    if not (is_number and 0.0 < ratio <= 1.0):  # NaN fails the comparison too
        raise KeepRatioError(f"{what} must be in (0, 1], got {ratio!r} ({type(ratio).__name__})")
    return float(ratio)


def keep_ratio_list(text: str, default: Optional[float] = None) -> List[float]:
    """The keep ratios of "0.25,1.0" (a command that runs several: bench, export onnx), in order and each
    once; where `default` is given, the word "default" stands for it. A part that is no number, or no keep
    ratio, is a `BiglSamError` naming --keep-ratio."""
    ratios: List[float] = []
    for part in (part.strip() for part in text.split(",")):
        if part == "default" and default is not None:
            value = default
        else:
            try:
                value = float(part)
            except ValueError:
                word = " (or 'default')" if default is not None else ""
                raise BiglSamError(f"--keep-ratio {part!r} is not a number{word}") from None
            check_keep_ratio(value, "--keep-ratio")
        if value not in ratios:
            ratios.append(value)
    return ratios
