"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


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
