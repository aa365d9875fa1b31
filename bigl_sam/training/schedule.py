"""What each step does, as pure functions of the step number and the seed, so restoring the step restores
the schedule exactly: the learning rate, the keep ratio, the randomness of the mask-loss prompts; and
`seeded_generator`, the one way the run derives a random stream from its seed."""

import math
from typing import List, Tuple

import torch

SEED_BASE = 1_000_003  # a prime above any step count or epoch: (seed, index) pairs do not collide
# What each stream is for, its first index: step n's keep ratio and epoch n's order are other streams.
KEEP_RATIO, ORDER, PROMPTS, EVAL_PROMPTS = range(4)


def learning_rate(step: int, lr: float, min_lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `lr` to `min_lr` at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (lr - min_lr)


def keep_ratio_at(step: int, keep_ratio_range: Tuple[float, float], seed: int) -> float:
    """Uniform in `keep_ratio_range`, the same on every process, fixed by the seed and the step."""
    lo, hi = keep_ratio_range
    u = torch.rand(1, generator=seeded_generator(seed, KEEP_RATIO, step)).item()
    return lo + (hi - lo) * u


def eval_keep_ratios(keep_ratio_range: Tuple[float, float]) -> List[float]:
    """The held-out curves' keep ratios: both ends of the range and its middle."""
    lo, hi = keep_ratio_range
    return sorted({lo, round((lo + hi) / 2, 4), hi})


def seeded_generator(seed: int, *indexes: int) -> torch.Generator:
    """A torch generator fixed by the run's seed and `indexes` (what the stream is for: KEEP_RATIO, ORDER,
    PROMPTS or EVAL_PROMPTS, then a step, an epoch, a process rank...): the same numbers give the same
    stream, any other numbers another one."""
    mixed = seed
    for index in indexes:
        mixed = mixed * SEED_BASE + index
    return torch.Generator().manual_seed(mixed % 2**64)
