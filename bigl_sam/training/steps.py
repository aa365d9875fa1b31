"""The parts of a training loop that every training command runs alike: the learning rate of a step, the
update (refused before it happens when the loss or gradient is not finite), the checkpoint when one is due,
and the end of a run."""

import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .. import distributed
from ..errors import BiglSamError
from .ranks import check_ranks_agree
from .runlog import RunLog
from .schedule import learning_rate
from .state import FINAL_FILE, STATE_FILE, save_final, save_training_state


def run_in_process(device: Optional[str], run: Callable[[distributed.Process], Path]) -> Path:
    """`run(process)` in this process of the run (`distributed.start` on `device`, the `torchrun` group when
    there is one), left again whatever happens; returns what `run` returns (the final checkpoint)."""
    process = distributed.start(device)
    try:
        return run(process)
    finally:
        distributed.stop(process)


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg: Any) -> float:
    """Sets and returns step `step`'s learning rate from `cfg.lr`, `min_lr`, `warmup` and `steps`."""
    lr = learning_rate(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def update(optimizer: torch.optim.Optimizer, row: dict, out: Path) -> None:
    """The optimizer step, after the gradients of the step of `row` (its `loss` and `grad_norm`); a
    non-finite one stops the run before the update, naming the step."""
    if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
        raise BiglSamError(
            f"step {row['step']}: non-finite loss ({row['loss']}) or gradient norm ({row['grad_norm']}); stopped "
            f"before the update, {out / STATE_FILE} (if written) keeps the last good weights"
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def save_if_due(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, done: int, cfg: Any,
                run: dict, process: distributed.Process) -> None:
    """RUN/ckpt.pt after step `done` every `cfg.ckpt_every` steps and at the last one (rank 0 writes, every
    rank waits); `run`: the run's settings as ckpt.pt keeps them."""
    if done % cfg.ckpt_every == 0 or done == cfg.steps:
        if process.is_main:
            save_training_state(out, model, optimizer, done, run)
        distributed.barrier(process)


def keep_if_due(out: Path, model: torch.nn.Module, done: int, every: int, process: distributed.Process) -> None:
    """RUN/step-N.pth, the model after step N (as final.pth holds it), every `every` steps (0: never)."""
    if every and done % every == 0 and process.is_main:
        save_final(out, model, f"step-{done}.pth")


def finish(out: Path, model: torch.nn.Module, trained: torch.nn.Module, process: distributed.Process,
           log: Optional[RunLog]) -> Path:
    """The end of a run: the processes agree on `trained`'s weights, the logs close, rank 0 writes
    RUN/final.pth. Returns its path."""
    check_ranks_agree(trained, process)
    if log:
        log.close()
    final = save_final(out, model) if process.is_main else out / FINAL_FILE
    distributed.barrier(process)
    return final
