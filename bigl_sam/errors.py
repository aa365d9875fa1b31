"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class BiglSamError(Exception):
    """Base class: the message alone must say what is wrong and where."""


class CheckpointError(BiglSamError):
    """A checkpoint file is missing, unreadable, or does not fit the model asked for."""
