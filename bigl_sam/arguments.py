"""The command-line plumbing every `bigl-sam` command is parsed with: `CommandParser` (help that shows
defaults, abbreviations that never name a hidden former flag) and `add_renamed` (an option under its current
name, each former name kept as a hidden alias that warns on stderr: a renamed flag keeps working for one
release); and its twin for Python functions, `renamed_keywords` (a keyword argument's former name kept as
an alias that warns). It imports nothing of bigl-sam, so every module may use it.
"""

import argparse
import functools
import sys
import textwrap
import warnings
import weakref
from typing import Any, Callable, Dict, Tuple, TypeVar

Function = TypeVar("Function", bound=Callable[..., Any])


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


def renamed_keywords(**current: str) -> Callable[[Function], Function]:
    """A decorator: each keyword `former=...` of the call is passed on as `current[former]=...`, with a
    `FutureWarning` naming the new name (the old name goes in the next release). Giving both names is a
    `TypeError`, as Python's own for a keyword given twice."""

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            for former, name in current.items():
                if former not in kwargs:
                    continue
                if name in kwargs:
                    raise TypeError(f"{function.__name__}() got {former}= and {name}=, the same argument "
                                    f"(one is its former name): give {name}= only")
                warnings.warn(f"{function.__name__}({former}=...) is now {function.__name__}({name}=...); the old "
                              "name goes in the next release", FutureWarning, stacklevel=2)
                kwargs[name] = kwargs.pop(former)
            return function(*args, **kwargs)

        return call  # type: ignore[return-value]

    return decorate
