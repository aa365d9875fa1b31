"""Command-line options that several commands share, declared once.

`add_renamed` declares an option under its current name and keeps each former name working as a hidden
alias that warns on stderr: a renamed flag keeps working for one release.
"""

import argparse
import sys
from typing import Any


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
