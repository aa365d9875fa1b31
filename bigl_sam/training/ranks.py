"""What the processes of a `torchrun` run agree on: averaged log values, and equal weights at the end."""

from typing import Dict

import torch
import torch.distributed as dist

from .. import distributed
from ..errors import BiglSamError


def mean_over_ranks(values: Dict[str, torch.Tensor], process: distributed.Process) -> Dict[str, float]:
    """Scalars averaged over the processes (each process passes the same names)."""
    names = sorted(values)
    stacked = torch.stack([values[name].detach().float().to(process.device) for name in names])
    if process.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= process.world_size
    return dict(zip(names, stacked.tolist()))


def check_ranks_agree(encoder: torch.nn.Module, process: distributed.Process) -> None:
    """DDP keeps the replicas equal; a cheap fingerprint check says so before anything is saved."""
    if process.world_size == 1:
        return
    fingerprint = torch.stack([p.detach().double().sum() for p in encoder.parameters()]).to(process.device)
    gathered = [torch.zeros_like(fingerprint) for _ in range(process.world_size)]
    dist.all_gather(gathered, fingerprint)
    if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
        raise BiglSamError("processes disagree on the weights at the end of training")
