"""A training command's options, declared once as the fields of one dataclass (nanoGPT style): each field
carries its flag's help, choices, checks and former names (`option`); the command's flags are made from the
fields (`add_config_arguments`), a run saves them all (`settings`) and `--resume` compares the ones that fix
what the run computes (`identity`).
"""

import argparse
import dataclasses
import math
import sys
import typing
from typing import Any, Callable, Optional, Sequence, Union

from ..errors import BiglSamError
from ..arguments import add_renamed


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    identity: bool = True,
    choices: Optional[Sequence[str]] = None,
    check: Optional[str] = None,
    former: Sequence[str] = (),
    metavar: Optional[str] = None,
) -> Any:
    """A config field with everything its flag needs: `help`, `choices`, `former` (earlier flag names, kept as
    hidden aliases); `check` "positive" or "non_negative" (`check_fields`); `identity=False` for a setting a
    resumed run may change, because it does not change what the run computes. Every other field is part of
    the run's identity (`identity`). `metavar`: how the help names the value (default: the choices)."""
    metadata = {"help": help, "identity": identity, "choices": choices, "check": check, "former": tuple(former),
                "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


DTYPES = ("auto", "float32", "bfloat16")
# `distill train --amp`'s values, still taken by --dtype (and by --amp, its hidden former name) with a warning.
FORMER_DTYPES = {"bf16": "bfloat16", "none": "float32"}


def dtype_option() -> Any:
    """The `--dtype` field of a training command (a resumed run may change it: the precision may follow the
    machine it resumes on)."""
    return option("auto", "bfloat16: the model, and with auto on a GPU only, under torch.autocast (fast on GPUs and on CPUs "
                  "with AVX512-BF16 or AMX, emulated and slower on other CPUs)", identity=False,
                  choices=DTYPES + tuple(FORMER_DTYPES),
                  former=("--amp",), metavar="{" + ",".join(DTYPES) + "}")


def run_dtype(name: str, device) -> str:
    """--dtype as the `distributed.DTYPES` name a run computes in: auto is bfloat16 on GPU, float32 on CPU; a
    former value (bf16, none) is taken with a warning."""
    if name in FORMER_DTYPES:
        print(f"warning: --dtype {name} is now --dtype {FORMER_DTYPES[name]}; the old value goes in the next "
              "release", file=sys.stderr)
        name = FORMER_DTYPES[name]
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return name


def flag(name: str) -> str:
    """The flag of a config field."""
    return "--" + name.replace("_", "-")


def settings(cfg: Any) -> dict:
    """The whole config as plain types (tuples as lists), as a run's ckpt.pt keeps it."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(cfg).items()}


def identity(cfg: Any) -> dict:
    """The settings that fix what the run computes (every field not declared `identity=False`): a resumed
    run must not change them."""
    whole = settings(cfg)
    return {f.name: whole[f.name] for f in dataclasses.fields(cfg) if f.metadata["identity"]}


def check_fields(cfg: Any) -> None:
    """The checks each field declares (`choices`, `check`): the first failing one is a `BiglSamError`
    naming its flag."""
    for f in dataclasses.fields(cfg):
        value, choices = getattr(cfg, f.name), f.metadata["choices"]
        if choices and value not in choices:
            raise BiglSamError(f"{flag(f.name)} {value}: expected {' or '.join(choices)}")
        if f.metadata["check"] and value is not None:
            _check_number(f.name, value, f.type is int, positive=f.metadata["check"] == "positive")


def _check_number(name: str, value, whole: bool, positive: bool) -> None:
    if whole:
        if value < (1 if positive else 0):
            raise BiglSamError(f"{flag(name)} {value}: {'must be at least 1' if positive else 'must not be negative'}")
    elif not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise BiglSamError(f"{flag(name)} {value}: must be a finite number {'>' if positive else '>='} 0")


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of `config_class`: name, type, default, choices, help and former names all come
    from the field's declaration."""
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        kwargs = {"help": meta["help"]}
        if field.type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _parser_of(field.type)
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            if field.default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = field.default
            if isinstance(field.default, tuple):
                kwargs["help"] += f" (default: {','.join(map(str, field.default))})"
            elif field.default not in (None, dataclasses.MISSING):
                kwargs["help"] += " (default: %(default)s)"
        add_renamed(parser, flag(field.name), *meta["former"], **kwargs)


def _parser_of(annotation) -> Callable[[str], object]:
    """The argparse `type` of a field's annotation: `Optional[X]` parses as X, `Tuple[X, ...]` as
    comma-separated Xs (as many as the tuple holds)."""
    parts = [part for part in typing.get_args(annotation) if part is not type(None)]
    if typing.get_origin(annotation) is Union:
        return _parser_of(parts[0])
    if typing.get_origin(annotation) is tuple:
        return numbers(parts[0], len(parts))
    return annotation


def numbers(kind: type, count: Optional[int] = None) -> Callable[[str], tuple]:
    """Parses comma-separated numbers of `kind` (exactly `count` of them, if given), e.g. 0.15,0.5."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            values = ()
        if not values or (count is not None and len(values) != count):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {count or 'one or more'} comma-separated numbers such as 0.15,0.5")
        return values

    return parse
