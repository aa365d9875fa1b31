"""`bigl-sam train`: its flags are made from the fields of `MaskTrainConfig`."""

import argparse

from ..training.config import add_config_arguments
from .config import MaskTrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, MaskTrainConfig)


def run(args: argparse.Namespace) -> int:
    from .loop import train  # torch and the models load only once the flags are parsed

    print(f"final checkpoint: {train(MaskTrainConfig(**vars(args)))}")
    return 0
